"""Host-made authenticated writes (efird/variables/signing.py), checked by a third party:
openssl verifies the PKCS#7 signatures efird makes, and the variable service accepts them."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from efird.efi import guid as g
from efird.efi.time import EfiTime
from efird.variables import authvars
from efird.variables.signing import (
    CredentialError,
    Signer,
    authenticated_write,
    load_certificate,
    timestamp_after,
)

from . import sbkeys


@pytest.fixture(scope="module")
def pk(tmp_path_factory: pytest.TempPathFactory) -> sbkeys.KeyPair:
    return sbkeys.make_keypair(sbkeys.session_dir(tmp_path_factory), "signing-pk", "signing pk")


@pytest.mark.parametrize("ec", [False, True])
def test_openssl_verifies_what_efird_signs(tmp_path: Path,
                                           tmp_path_factory: pytest.TempPathFactory,
                                           ec: bool) -> None:
    kp = sbkeys.make_keypair(sbkeys.session_dir(tmp_path_factory), f"signing-{ec}",
                             "signing", ec=ec)
    signer = Signer.load(kp.key_path, load_certificate(kp.cert_pem_path.read_bytes(), "pem"))
    stamp = EfiTime(2026, 3, 4, 5, 6, 7, timezone=0).pack()
    payload = b"payload bytes"
    write = authenticated_write("db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27, payload, stamp,
                                signer)
    auth = authvars.split_auth2(write)
    assert auth.payload == payload and auth.timestamp == stamp
    assert auth.cert_guid == g.EFI_CERT_TYPE_PKCS7
    content = authvars.signed_content("db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27, auth)
    assert content == sbkeys.signed_bundle("db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27, stamp,
                                           payload)
    sig, bundle = tmp_path / "sig.der", tmp_path / "bundle"
    sig.write_bytes(sbkeys.wrap_content_info(auth.cert_data))  # bare SignedData inside
    bundle.write_bytes(content)
    verify = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(sig),
                             "-binary", "-content", str(bundle), "-CAfile",
                             str(kp.cert_pem_path), "-purpose", "any", "-out", "/dev/null"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    # and tampering is caught by the same check
    bundle.write_bytes(content + b"x")
    tampered = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(sig),
                               "-binary", "-content", str(bundle), "-CAfile",
                               str(kp.cert_pem_path), "-purpose", "any", "-out", "/dev/null"],
                              capture_output=True, text=True)
    assert tampered.returncode != 0


def test_unsigned_write_has_an_empty_certificate() -> None:
    stamp = EfiTime(2026, 1, 1, timezone=0).pack()
    auth = authvars.split_auth2(authenticated_write("PK", g.EFI_GLOBAL_VARIABLE, 0x27, b"x",
                                                    stamp, None))
    assert auth.cert_data == b"" and auth.payload == b"x"


def test_timestamp_is_now_or_past_the_stored_one() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
    assert EfiTime.unpack(timestamp_after(None, now)) == EfiTime(2026, 11, 25, 12, 0, 0,
                                                                 timezone=0)
    later = EfiTime(2027, 1, 1, 0, 0, 59).pack()
    assert EfiTime.unpack(timestamp_after(later, now)) == EfiTime(2027, 1, 1, 0, 1, 0,
                                                                  timezone=0)
    earlier = EfiTime(2020, 1, 1).pack()
    assert EfiTime.unpack(timestamp_after(earlier, now)).year == 2026
    assert EfiTime.unpack(timestamp_after(bytes(16), now)).year == 2026  # never written


def test_credentials_errors_name_the_file(tmp_path: Path, pk: sbkeys.KeyPair) -> None:
    with pytest.raises(CredentialError, match=r"x\.pem"):
        load_certificate(b"-----BEGIN CERTIFICATE-----\nzz\n-----END CERTIFICATE-----", "x.pem")
    with pytest.raises(CredentialError, match=r"y\.der"):
        load_certificate(b"\x30\x03\x02\x01\x00", "y.der")
    key = tmp_path / "k.pem"
    key.write_text("not a key")
    with pytest.raises(CredentialError, match=r"k\.pem"):
        Signer.load(key, pk.cert_der)
    with pytest.raises(CredentialError, match=r"missing\.key"):
        Signer.load(tmp_path / "missing.key", pk.cert_der)
