"""Real Secure Boot test material, made by the tools operators use (openssl, efitools).

Tests built only on our own encoder would prove that efird agrees with itself; these
helpers make keys, certificates, ESLs and .auth files with `openssl` and efitools
(`cert-to-efi-sig-list`, `sign-efi-sig-list`) so efird is checked against third parties.

Key material is cached in a directory (one per pytest session, see `session_dir`) because
RSA key generation dominates the cost of these tests.

What sign-efi-sig-list (efitools 1.9.2, Debian 12) does, checked against its source and
its output:

* It signs Name (UCS-2, no NUL) || VendorGuid || Attributes (u32 LE) || TimeStamp || ESL,
  detached, SHA-256, no signed attributes (PKCS7_NOATTR), and writes the DER of a bare
  SignedData (no ContentInfo wrapper) into WIN_CERTIFICATE_UEFI_GUID.CertData.
* Attributes are fixed: NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS (0x27), plus
  APPEND_WRITE (0x40) with -a. There is no option for other attributes, so SetVariable
  must be called with exactly these or the signature does not match.
* The vendor GUID is forced for PK/KEK (EFI_GLOBAL_VARIABLE) and db/dbx
  (EFI_IMAGE_SECURITY_DATABASE), overriding -g. For any other name (including dbt/dbr)
  -g gives the vendor GUID (the help text wrongly calls it the owner GUID); without -g
  the tool signs uninitialised stack memory, so `sign_auth` insists on one.
* -t "YYYY-MM-DD HH:MM:SS" sets Year..Second; Pad1, Nanosecond, TimeZone, Daylight and
  Pad2 are all 0 (note: TimeZone 0, not EFI_UNSPECIFIED_TIMEZONE). Without -t it uses
  local time, or all zeros with -a.
"""

from __future__ import annotations

import secrets
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms

from efird.efi import guid as efi_guid
from efird.efi import siglist
from efird.efi.time import EfiTime
from efird.efi.ucs2 import encode_name

NV, BS, RT, AT, AP = 0x01, 0x02, 0x04, 0x20, 0x40
SIGN_EFI_SIG_LIST_ATTRIBUTES = NV | BS | RT | AT  # 0x27
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
WIN_CERT_REVISION = 0x0200
_WIN_CERT_HEADER = struct.Struct("<IHH")
_AUTH_FIXED = 16 + _WIN_CERT_HEADER.size + 16  # TimeStamp + Hdr + CertType

_FORCED_VENDOR = {
    "PK": efi_guid.EFI_GLOBAL_VARIABLE,
    "KEK": efi_guid.EFI_GLOBAL_VARIABLE,
    "db": efi_guid.EFI_IMAGE_SECURITY_DATABASE,
    "dbx": efi_guid.EFI_IMAGE_SECURITY_DATABASE,
}

# Extensions for certificates issued by another KeyPair: CA:TRUE so they can serve as
# intermediates, key identifiers so -keyid signing (SubjectKeyIdentifier sid) works.
_ISSUED_EXTENSIONS = """\
basicConstraints = critical, CA:TRUE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class KeyPair:
    name: str
    cn: str
    key_path: Path
    cert_pem_path: Path
    cert_der_path: Path
    cert_der: bytes


@dataclass(frozen=True)
class AuthParts:
    """An .auth file taken apart: EFI_VARIABLE_AUTHENTICATION_2 fields and the payload."""

    timestamp: bytes
    revision: int
    cert_type_code: int
    cert_type: bytes
    pkcs7: bytes
    payload: bytes


def _run(args: list[str]) -> str:
    """Run a tool; failures carry its stderr so a broken setup is obvious."""
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory per pytest session, shared by every test module."""
    path = tmp_path_factory.getbasetemp() / "sbkeys"
    path.mkdir(exist_ok=True)
    return path


def _newkey_args(ec: bool) -> list[str]:
    if ec:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    return ["-newkey", "rsa:2048"]


def _issue(directory: Path, name: str, subj: str, signer: KeyPair, ec: bool) -> None:
    key, pem = directory / f"{name}.key", directory / f"{name}.pem"
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    ext.write_text(_ISSUED_EXTENSIONS)
    _run(["openssl", "req", "-new", *_newkey_args(ec), "-nodes", "-sha256", "-subj", subj,
          "-keyout", str(key), "-out", str(csr)])
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(signer.cert_pem_path),
          "-CAkey", str(signer.key_path), "-set_serial", f"0x{secrets.token_hex(8)}",
          "-days", "3650", "-sha256", "-extfile", str(ext), "-out", str(pem)])


def make_keypair(directory: Path, name: str, cn: str, *, signer: KeyPair | None = None,
                 ec: bool = False, subject: str | None = None) -> KeyPair:
    """A key and certificate: self-signed, or issued by `signer`; cached by `name`.

    RSA-2048 unless ec (P-256). subject overrides the default "/CN=cn" (openssl -subj form).
    """
    key, pem, der = (directory / f"{name}{s}" for s in (".key", ".pem", ".der"))
    meta = directory / f"{name}.meta"
    subj = subject or f"/CN={cn}"
    wanted = f"{subj}|{signer.name if signer else ''}|{'ec' if ec else 'rsa'}"
    if meta.exists():
        if meta.read_text() != wanted:
            raise ValueError(f"keypair {name!r} already exists with another definition")
        return KeyPair(name, cn, key, pem, der, der.read_bytes())
    if signer is None:
        _run(["openssl", "req", "-new", "-x509", *_newkey_args(ec), "-nodes", "-sha256",
              "-days", "3650", "-subj", subj, "-keyout", str(key), "-out", str(pem)])
    else:
        _issue(directory, name, subj, signer, ec)
    _run(["openssl", "x509", "-in", str(pem), "-outform", "DER", "-out", str(der)])
    meta.write_text(wanted)
    return KeyPair(name, cn, key, pem, der, der.read_bytes())


def esl_from_cert(kp: KeyPair, owner_guid_str: str) -> bytes:
    """An EFI_CERT_X509 list made by cert-to-efi-sig-list."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.esl"
        _run(["cert-to-efi-sig-list", "-g", owner_guid_str, str(kp.cert_pem_path), str(out)])
        return out.read_bytes()


def esl_from_hashes(owner_guid_str: str, hashes: list[bytes],
                    sig_type: bytes = efi_guid.EFI_CERT_SHA256) -> bytes:
    """A hash list (dbx-style); efitools' hash-to-efi-sig-list only hashes PE files."""
    return siglist.build(sig_type, efi_guid.guid_bytes(owner_guid_str), hashes)


def sign_efi_sig_list_attributes(append: bool = False) -> int:
    """The Attributes sign-efi-sig-list signs, i.e. the ones SetVariable must be given."""
    return SIGN_EFI_SIG_LIST_ATTRIBUTES | (AP if append else 0)


def vendor_guid_for(var_name: str, guid: str | None = None) -> bytes:
    """The VendorGuid sign-efi-sig-list puts into the signed data for var_name."""
    forced = _FORCED_VENDOR.get(var_name)
    if forced is not None:
        if guid is not None and efi_guid.guid_bytes(guid) != forced:
            raise ValueError(f"sign-efi-sig-list ignores -g for {var_name}")
        return forced
    if guid is None:
        raise ValueError(f"{var_name} needs a vendor GUID (-g), else the tool signs garbage")
    return efi_guid.guid_bytes(guid)


def timestamp_from_text(text: str) -> EfiTime:
    """The EFI_TIME sign-efi-sig-list writes for -t text (all trailing fields zero)."""
    date, clock = text.split(" ")
    year, month, day = (int(x) for x in date.split("-"))
    hour, minute, second = (int(x) for x in clock.split(":"))
    return EfiTime(year, month, day, hour, minute, second, timezone=0)


def sign_auth(var_name: str, esl_bytes: bytes, signer: KeyPair, *, timestamp: str,
              append: bool = False, guid: str | None = None) -> bytes:
    """An .auth file from sign-efi-sig-list: EFI_VARIABLE_AUTHENTICATION_2 || ESL.

    timestamp is "YYYY-MM-DD HH:MM:SS"; guid is the vendor GUID (registry form), needed
    for every variable but PK/KEK/db/dbx.
    """
    vendor_guid_for(var_name, guid)  # refuse what the tool would silently get wrong
    with tempfile.TemporaryDirectory() as tmp:
        esl, out = Path(tmp) / "in.esl", Path(tmp) / "out.auth"
        esl.write_bytes(esl_bytes)
        args = ["sign-efi-sig-list", "-t", timestamp]
        if append:
            args.append("-a")
        if guid is not None:
            args += ["-g", guid]
        args += ["-k", str(signer.key_path), "-c", str(signer.cert_pem_path), var_name,
                 str(esl), str(out)]
        _run(args)
        return out.read_bytes()


def signed_bundle(name: str, vendor_guid: bytes, attributes: int, timestamp: bytes,
                  payload: bytes) -> bytes:
    """What an EFI_VARIABLE_AUTHENTICATION_2 signature covers (UEFI 2.10 §8.2.6)."""
    head = encode_name(name)[:-2] + vendor_guid + struct.pack("<I", attributes)
    return head + timestamp + payload


def build_auth(timestamp: bytes, pkcs7_der: bytes, payload: bytes) -> bytes:
    """EFI_VARIABLE_AUTHENTICATION_2 (TimeStamp, WIN_CERTIFICATE_UEFI_GUID) || payload."""
    header = _WIN_CERT_HEADER.pack(_WIN_CERT_HEADER.size + 16 + len(pkcs7_der),
                                   WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID)
    return timestamp + header + efi_guid.EFI_CERT_TYPE_PKCS7 + pkcs7_der + payload


def split_auth(auth: bytes) -> AuthParts:
    """Inverse of build_auth, for tests that look inside or tamper with .auth files."""
    length, revision, code = _WIN_CERT_HEADER.unpack_from(auth, 16)
    end = 16 + length
    if length < _WIN_CERT_HEADER.size + 16 or end > len(auth):
        raise ValueError(f"bad WIN_CERTIFICATE dwLength {length}")
    return AuthParts(auth[:16], revision, code, auth[24:40], auth[_AUTH_FIXED:end], auth[end:])


def cms_sign(data: bytes, signer: KeyPair, *, signed_attributes: bool = False,
             md: str = "sha256", embed_content: bool = False, key_id: bool = False,
             extra_certs: tuple[KeyPair, ...] = (), no_certs: bool = False,
             keyopts: tuple[str, ...] = ()) -> bytes:
    """DER ContentInfo(SignedData) over data from `openssl cms -sign -binary`.

    no_certs leaves the signer certificate out (-nocerts); keyopts are -keyopt values,
    e.g. "rsa_padding_mode:pss".
    """
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "bundle", Path(tmp) / "sig.der"
        src.write_bytes(data)
        args = ["openssl", "cms", "-sign", "-binary", "-outform", "DER", "-md", md,
                "-signer", str(signer.cert_pem_path), "-inkey", str(signer.key_path),
                "-in", str(src), "-out", str(out)]
        args.append("-nosmimecap" if signed_attributes else "-noattr")
        if embed_content:
            args.append("-nodetach")
        if key_id:
            args.append("-keyid")
        if no_certs:
            args.append("-nocerts")
        for opt in keyopts:
            args += ["-keyopt", opt]
        if extra_certs:
            chain = Path(tmp) / "chain.pem"
            chain.write_bytes(b"".join(k.cert_pem_path.read_bytes() for k in extra_certs))
            args += ["-certfile", str(chain)]
        _run(args)
        return out.read_bytes()


def unwrap_content_info(der: bytes) -> bytes:
    """The bare SignedData inside a ContentInfo."""
    return cms.ContentInfo.load(der)["content"].untag().dump()


def wrap_content_info(der: bytes) -> bytes:
    """A bare SignedData wrapped into ContentInfo(signedData)."""
    signed = cms.SignedData.load(der)
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def sign_auth_raw(name: str, guid_bytes: bytes, attributes: int, payload: bytes,
                  timestamp: EfiTime, signer: KeyPair, *, wrap_content_info: bool,
                  signed_attributes: bool = False, md: str = "sha256",
                  embed_content: bool = False, key_id: bool = False,
                  extra_certs: tuple[KeyPair, ...] = (), no_certs: bool = False,
                  keyopts: tuple[str, ...] = ()) -> bytes:
    """Like sign-efi-sig-list, for any name/GUID/attributes/payload (not only ESLs).

    Uses `openssl cms -sign -binary -outform DER -md sha256` with -noattr (what
    sign-efi-sig-list does) or, with signed_attributes, -nosmimecap (contentType,
    signingTime, messageDigest). cms writes a ContentInfo; wrap_content_info=False strips
    it to the bare SignedData that sign-efi-sig-list emits.
    """
    ts = timestamp.pack()
    bundle = signed_bundle(name, guid_bytes, attributes, ts, payload)
    der = cms_sign(bundle, signer, signed_attributes=signed_attributes, md=md,
                   embed_content=embed_content, key_id=key_id, extra_certs=extra_certs,
                   no_certs=no_certs, keyopts=keyopts)
    if not wrap_content_info:
        der = unwrap_content_info(der)
    return build_auth(ts, der, payload)
