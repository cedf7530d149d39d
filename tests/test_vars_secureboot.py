"""`efird vars` sb-state, sb-policy, enroll and reset-secure-boot, with keys made by openssl
and signature lists and .auth files made by efitools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import sbkeys
from .cli import efird_vars

OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sbkeys.KeyPair]:
    d = sbkeys.session_dir(tmp_path_factory)
    return {name: sbkeys.make_keypair(d, f"enroll-{name}", f"enroll {name}")
            for name in ("pk", "kek", "db", "extra", "other")}


def sb_state(store: Path) -> dict:
    result = efird_vars(store, "sb-state", "--json")
    assert result.returncode == 0, result.stderr
    state: dict = json.loads(result.stdout)
    return state


def subjects(state: dict, name: str) -> list[str]:
    return [c["subject"] for c in state["keys"][name]["certificates"]]


def test_enroll_in_setup_mode_then_update_in_user_mode(tmp_path: Path,
                                                        keys: dict[str, sbkeys.KeyPair]) -> None:
    store = tmp_path / "vm.efivars"
    assert sb_state(store if store.exists() else _new(store))["mode"] == "setup"
    dbx = tmp_path / "dbx.esl"
    dbx.write_bytes(sbkeys.esl_from_hashes(OWNER, [bytes([i]) * 32 for i in range(3)]))
    # unsigned: setup mode takes it (OVMF's policy, and this store's default)
    result = efird_vars(store, "enroll", "--pk", str(keys["pk"].cert_pem_path),
                        "--kek", str(keys["kek"].cert_der_path),
                        "--db", str(keys["db"].cert_pem_path), "--dbx", str(dbx),
                        "--owner", OWNER)
    assert result.returncode == 0, result.stderr
    assert "PK: enrolled (unsigned)" in result.stdout and "mode: user" in result.stdout
    state = sb_state(store)
    assert state["mode"] == "user" and state["secure_boot"] == 1 and state["setup_mode"] == 0
    assert subjects(state, "PK") == ["CN=enroll pk"]
    assert subjects(state, "KEK") == ["CN=enroll kek"]
    assert subjects(state, "db") == ["CN=enroll db"]
    assert state["keys"]["dbx"]["hashes"] == {"EfiCertSha256": 3}
    assert {c["owner"] for c in state["keys"]["db"]["certificates"]} == {OWNER}

    # user mode: an unsigned update is refused, as the guest's would be
    refused = efird_vars(store, "enroll", "--append", "--db", str(keys["extra"].cert_pem_path))
    assert refused.returncode == 3 and "SECURITY_VIOLATION" in refused.stderr
    assert "--kek-key" in refused.stderr
    # signed by the KEK: accepted
    ok = efird_vars(store, "enroll", "--append", "--db", str(keys["extra"].cert_pem_path),
                    "--kek-key", str(keys["kek"].key_path),
                    "--kek-cert", str(keys["kek"].cert_pem_path))
    assert ok.returncode == 0, ok.stderr
    assert "signed by CN=enroll kek" in ok.stdout
    assert subjects(sb_state(store), "db") == ["CN=enroll db", "CN=enroll extra"]
    # appending the same certificate again changes nothing (the guest's dedupe rule)
    again = efird_vars(store, "enroll", "--append", "--db", str(keys["extra"].cert_pem_path),
                       "--pk-key", str(keys["pk"].key_path),
                       "--pk-cert", str(keys["pk"].cert_pem_path))
    assert again.returncode == 0, again.stderr
    assert subjects(sb_state(store), "db") == ["CN=enroll db", "CN=enroll extra"]
    # a KEK replacement signed by a key that is not the PK: refused
    rogue = efird_vars(store, "enroll", "--kek", str(keys["other"].cert_pem_path),
                       "--pk-key", str(keys["other"].key_path),
                       "--pk-cert", str(keys["other"].cert_pem_path))
    assert rogue.returncode == 3 and "SECURITY_VIOLATION" in rogue.stderr
    # replacing the PK, signed by the current PK (the replacement is later in time even
    # within the same second: enroll moves the timestamp past the stored one)
    for _ in range(2):
        new_pk = efird_vars(store, "enroll", "--pk", str(keys["other"].cert_pem_path),
                            "--pk-key", str(keys["pk"].key_path),
                            "--pk-cert", str(keys["pk"].cert_pem_path))
        assert new_pk.returncode in (0, 3), new_pk.stderr
        if new_pk.returncode == 0:
            break
    assert subjects(sb_state(store), "PK") == ["CN=enroll other"]


def _new(store: Path) -> Path:
    assert efird_vars(store, "sb-policy").returncode == 0  # creates the store
    return store


def test_self_signed_pk_policy(tmp_path: Path, keys: dict[str, sbkeys.KeyPair]) -> None:
    store = tmp_path / "vm.efivars"
    on = efird_vars(store, "sb-policy", "--require-self-signed-pk", "on")
    assert on.returncode == 0 and "require-self-signed-pk: on" in on.stdout
    assert sb_state(store)["require_self_signed_pk"] is True
    unsigned = efird_vars(store, "enroll", "--pk", str(keys["pk"].cert_pem_path))
    assert unsigned.returncode == 3 and "SECURITY_VIOLATION" in unsigned.stderr
    assert sb_state(store)["mode"] == "setup"
    wrong_key = efird_vars(store, "enroll", "--pk", str(keys["pk"].cert_pem_path),
                           "--pk-key", str(keys["kek"].key_path))
    assert wrong_key.returncode == 2 and "does not belong" in wrong_key.stderr
    assert str(keys["kek"].key_path) in wrong_key.stderr
    signed = efird_vars(store, "enroll", "--kek", str(keys["kek"].cert_pem_path),
                        "--pk", str(keys["pk"].cert_pem_path),
                        "--pk-key", str(keys["pk"].key_path))
    assert signed.returncode == 0, signed.stderr
    assert "PK: enrolled (signed by CN=enroll pk)" in signed.stdout
    assert sb_state(store)["secure_boot"] == 1
    assert efird_vars(store, "sb-policy", "--require-self-signed-pk", "off").returncode == 0
    assert sb_state(store)["require_self_signed_pk"] is False


def test_enroll_signed_auth_files_from_efitools(tmp_path: Path,
                                               keys: dict[str, sbkeys.KeyPair]) -> None:
    store = tmp_path / "vm.efivars"
    files = {}
    for name, cert, ts in (("PK", keys["pk"], "2026-01-01 0:0:1"),
                           ("KEK", keys["kek"], "2026-01-01 0:0:2")):
        files[name] = tmp_path / f"{name}.auth"
        files[name].write_bytes(sbkeys.sign_auth(name, sbkeys.esl_from_cert(cert, OWNER),
                                                 keys["pk"], timestamp=ts))
    ok = efird_vars(store, "enroll", "--kek", str(files["KEK"]), "--pk", str(files["PK"]))
    assert ok.returncode == 0, ok.stderr
    assert "KEK: enrolled (signed file)" in ok.stdout
    assert subjects(sb_state(store), "KEK") == ["CN=enroll kek"]
    mixed = efird_vars(store, "enroll", "--kek", str(files["KEK"]),
                       "--kek", str(keys["db"].cert_pem_path))
    assert mixed.returncode == 2 and "only file" in mixed.stderr


def test_reset_secure_boot(tmp_path: Path, keys: dict[str, sbkeys.KeyPair]) -> None:
    store = tmp_path / "vm.efivars"
    assert efird_vars(store, "enroll", "--pk", str(keys["pk"].cert_pem_path), "--kek",
                      str(keys["kek"].cert_pem_path)).returncode == 0
    reset = efird_vars(store, "reset-secure-boot")
    assert reset.returncode == 0 and "mode: setup" in reset.stdout
    state = sb_state(store)
    assert state["mode"] == "setup" and state["secure_boot"] == 0
    assert not state["keys"]["PK"]["present"] and state["keys"]["KEK"]["present"]
    assert state["vendor_keys"] == 0
    assert efird_vars(store, "reset-secure-boot", "--delete-keys").returncode == 0
    assert not sb_state(store)["keys"]["KEK"]["present"]


def test_bad_credentials_name_the_file(tmp_path: Path, keys: dict[str, sbkeys.KeyPair]) -> None:
    store = tmp_path / "vm.efivars"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    result = efird_vars(store, "enroll", "--db", str(garbage))
    assert result.returncode == 2 and str(garbage) in result.stderr
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"\x01\x02\x03" * 40)
    result = efird_vars(store, "enroll", "--db", str(noise))
    assert result.returncode == 2 and str(noise) in result.stderr
    missing = tmp_path / "missing.pem"
    result = efird_vars(store, "enroll", "--db", str(missing))
    assert result.returncode == 2 and str(missing) in result.stderr
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("nope")
    result = efird_vars(store, "enroll", "--pk", str(keys["pk"].cert_pem_path),
                        "--pk-key", str(bad_key))
    assert result.returncode == 2 and str(bad_key) in result.stderr
    assert efird_vars(store, "enroll").returncode == 2
    assert sb_state(store)["mode"] == "setup"
