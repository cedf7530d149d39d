"""`efird vars`, the operator's CLI, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import sbkeys
from .cli import efird_vars, raw_value

VENDOR = "11111111-2222-3333-4444-555555555555"


def test_set_get_list_append_delete(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    assert efird_vars(store, "set", "Demo", "--guid", VENDOR, "--string", "hi").returncode == 0
    assert efird_vars(store, "append", "Demo", "--guid", VENDOR, "--data", "2100").returncode \
        == 0
    got = json.loads(efird_vars(store, "get", "Demo", "--guid", VENDOR, "--json").stdout)
    assert bytes.fromhex(got["data"]) == "hi".encode("utf-16-le") + b"\0\0!\0"
    listed = json.loads(efird_vars(store, "list", "--json").stdout)["variables"]
    assert {"name": "Demo", "guid": VENDOR, "guid_name": VENDOR, "attributes": 7,
            "size": 8} in listed
    raw = subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "--store", str(store),
                          "get", "Demo", "--guid", VENDOR, "--raw"], capture_output=True,
                         timeout=60).stdout
    assert raw == bytes.fromhex(got["data"])
    assert efird_vars(store, "delete", "Demo", "--guid", VENDOR).returncode == 0
    missing = efird_vars(store, "get", "Demo", "--guid", VENDOR)
    assert missing.returncode == 1 and "no variable Demo" in missing.stderr


def test_known_variables_are_decoded(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    efird_vars(store, "set", "BootOrder", "--data", "01000300")
    got = json.loads(efird_vars(store, "get", "BootOrder", "--json").stdout)
    assert got["decoded"] == ["Boot0001", "Boot0003"]
    assert json.loads(efird_vars(store, "get", "SetupMode", "--json").stdout)["decoded"] == 1


def test_the_guests_rules_apply(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    refused = efird_vars(store, "set", "SetupMode", "--attributes", "bs,rt", "--data", "00")
    assert refused.returncode == 3 and "WRITE_PROTECTED" in refused.stderr
    bad = efird_vars(store, "set", "X", "--attributes", "rt", "--data", "00")
    assert bad.returncode == 3 and "INVALID_PARAMETER" in bad.stderr
    usage = efird_vars(store, "set", "X", "--attributes", "zz", "--data", "00")
    assert usage.returncode == 2 and "--attributes" in usage.stderr
    assert efird_vars(store, "set", "X", "--data", "nothex").returncode == 2
    assert efird_vars(tmp_path / "missing.efivars", "list").returncode == 2


@pytest.mark.parametrize("signed_by_pk", [True])
def test_secure_boot_enrolment_with_signed_files(tmp_path: Path,
                                                 tmp_path_factory: pytest.TempPathFactory,
                                                 signed_by_pk: bool) -> None:
    keys = sbkeys.session_dir(tmp_path_factory)
    pk = sbkeys.make_keypair(keys, "cli-pk", "cli PK")
    kek = sbkeys.make_keypair(keys, "cli-kek", "cli KEK")
    owner = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
    for name, esl, signer, ts in (("PK", sbkeys.esl_from_cert(pk, owner), pk, "2026-01-01 0:0:1"),
                                  ("KEK", sbkeys.esl_from_cert(kek, owner), pk,
                                   "2026-01-01 0:0:2")):
        auth = tmp_path / f"{name}.auth"
        auth.write_bytes(sbkeys.sign_auth(name, esl, signer, timestamp=ts))
        result = efird_vars(tmp_path / "vm.efivars", "set", name, "--attributes",
                            "nv,bs,rt,at", "--data-file", str(auth))
        assert result.returncode == 0, result.stderr
    assert json.loads(efird_vars(tmp_path / "vm.efivars", "get", "SecureBoot", "--json"
                                 ).stdout)["decoded"] == 1
    kek_json = json.loads(efird_vars(tmp_path / "vm.efivars", "get", "KEK", "--json").stdout)
    assert "cli KEK" in json.dumps(kek_json["decoded"])
    # a second KEK signed by itself, not by PK: refused like the guest's would be
    rogue = tmp_path / "rogue.auth"
    rogue.write_bytes(sbkeys.sign_auth("KEK", sbkeys.esl_from_cert(kek, owner), kek,
                                       timestamp="2026-01-01 0:0:3"))
    refused = efird_vars(tmp_path / "vm.efivars", "set", "KEK", "--attributes", "nv,bs,rt,at",
                         "--data-file", str(rogue))
    assert refused.returncode == 3 and "SECURITY_VIOLATION" in refused.stderr


def test_a_served_store_is_refused_with_the_owner(tmp_path: Path) -> None:
    from efird.store.sqlite import SqliteStore

    held = SqliteStore(tmp_path / "vm.efivars")
    try:
        result = efird_vars(tmp_path / "vm.efivars", "list")
        assert result.returncode == 2 and "in use by another efird process" in result.stderr
    finally:
        held.close()


MS_FD = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")


def test_import_ovmf_store_and_export_every_format(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    imported = efird_vars(store, "import", str(MS_FD))
    assert imported.returncode == 0, imported.stderr
    assert "edk2-fd" in imported.stdout
    names = {v["name"] for v in json.loads(efird_vars(store, "list", "--json").stdout)
             ["variables"]}
    assert {"PK", "KEK", "db", "dbx"} <= names
    db = json.loads(efird_vars(store, "get", "db", "--guid", "EfiImageSecurityDatabase",
                               "--json").stdout)
    assert "Microsoft" in json.dumps(db["decoded"])
    assert json.loads(efird_vars(store, "get", "SecureBoot", "--json").stdout)["decoded"] == 1
    for fmt in ("qemu-json", "edk2-fd", "aws"):
        out = tmp_path / f"export.{fmt}"
        assert efird_vars(store, "export", str(out), "--format", fmt).returncode == 0
        again = tmp_path / f"again-{fmt}.efivars"
        result = efird_vars(again, "import", str(out))  # format detected by probing
        assert result.returncode == 0, result.stderr
        listed = json.loads(efird_vars(again, "list", "--json").stdout)["variables"]
        assert {v["name"] for v in listed} >= {"PK", "KEK", "db", "dbx"}
        assert raw_value(again, "db", "EfiImageSecurityDatabase") == \
            raw_value(store, "db", "EfiImageSecurityDatabase")


def test_bad_import_files_leave_the_store_unchanged(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    efird_vars(store, "set", "Keep", "--guid", VENDOR, "--string", "me")
    for name, content in (("garbage.bin", b"\x00" * 100), ("bad.json", b'{"version": 2, '),
                          ("trunc.fd", MS_FD.read_bytes()[:5000])):
        path = tmp_path / name
        path.write_bytes(content)
        result = efird_vars(store, "import", str(path))
        assert result.returncode == 2 and name in result.stderr, (name, result.stderr)
    assert efird_vars(store, "get", "Keep", "--guid", VENDOR).returncode == 0
