"""EFI_SIGNATURE_LIST databases: PK, KEK, db, dbx and friends (UEFI 2.10 §32.4.1).

A database is a concatenation of lists; each list is

    SignatureType GUID(16) | SignatureListSize u32 | SignatureHeaderSize u32 | SignatureSize u32
    | header (SignatureHeaderSize bytes)
    | entries, each SignatureSize bytes: SignatureOwner GUID(16) + data

Behaviour follows EDK2 SecurityPkg AuthService.c (CheckSignatureListFormat,
FilterSignatureList), because that is what firmware running on top of efird expects.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from efird.efi import guid
from efird.efi.time import EfiTime

_LIST_HEADER = struct.Struct("<16sIII")
LIST_HEADER_SIZE = _LIST_HEADER.size  # 28
OWNER_SIZE = 16
_REVOCATION_TIME_SIZE = 16  # EFI_TIME appended to the X509_SHA* hashes

# Data size (without the owner GUID) of every type EDK2 accepts; None = variable (X509).
# EDK2's mSupportSigItem also requires SignatureHeaderSize == 0 for all of them.
KNOWN_DATA_SIZES: dict[bytes, int | None] = {
    guid.EFI_CERT_SHA1: 20,
    guid.EFI_CERT_SHA224: 28,
    guid.EFI_CERT_SHA256: 32,
    guid.EFI_CERT_SHA384: 48,
    guid.EFI_CERT_SHA512: 64,
    guid.EFI_CERT_RSA2048: 256,
    guid.EFI_CERT_RSA2048_SHA256: 256,
    guid.EFI_CERT_RSA2048_SHA1: 256,
    guid.EFI_CERT_X509: None,
    guid.EFI_CERT_X509_SHA256: 32 + _REVOCATION_TIME_SIZE,
    guid.EFI_CERT_X509_SHA384: 48 + _REVOCATION_TIME_SIZE,
    guid.EFI_CERT_X509_SHA512: 64 + _REVOCATION_TIME_SIZE,
}

_PLAIN_HASHES = {
    guid.EFI_CERT_SHA1, guid.EFI_CERT_SHA224, guid.EFI_CERT_SHA256,
    guid.EFI_CERT_SHA384, guid.EFI_CERT_SHA512,
}
_X509_HASHES = {guid.EFI_CERT_X509_SHA256, guid.EFI_CERT_X509_SHA384, guid.EFI_CERT_X509_SHA512}


# What loading an X.509 entry (and reading its fields) raises for a bad certificate: a
# version other than v1/v3 is cryptography's InvalidVersion, which is no ValueError.
_CERTIFICATE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


class SignatureListError(ValueError):
    """A database that SetVariable must refuse with EFI_INVALID_PARAMETER."""


@dataclass(frozen=True)
class SignatureList:
    """One EFI_SIGNATURE_LIST; entries are (owner GUID, signature data) pairs."""

    sig_type: bytes
    header: bytes
    signature_size: int
    entries: tuple[tuple[bytes, bytes], ...]

    def pack(self) -> bytes:
        """Serialise, refusing anything parse() would refuse so round trips are exact."""
        if len(self.sig_type) != 16:
            raise SignatureListError("SignatureType must be 16 bytes")
        if self.signature_size < OWNER_SIZE:
            raise SignatureListError(f"SignatureSize {self.signature_size} < {OWNER_SIZE}")
        body = bytearray()
        for owner, data in self.entries:
            if len(owner) != OWNER_SIZE:
                raise SignatureListError("SignatureOwner must be 16 bytes")
            if OWNER_SIZE + len(data) != self.signature_size:
                raise SignatureListError(
                    f"entry of {OWNER_SIZE + len(data)} bytes in a list with "
                    f"SignatureSize {self.signature_size}"
                )
            body += owner
            body += data
        size = LIST_HEADER_SIZE + len(self.header) + len(body)
        if size > 0xFFFFFFFF:
            raise SignatureListError("signature list larger than 4 GiB")
        head = _LIST_HEADER.pack(self.sig_type, size, len(self.header), self.signature_size)
        return head + self.header + bytes(body)


def _parse_one(data: bytes, offset: int) -> tuple[SignatureList, int]:
    """The list at offset and the offset after it; every size field is bounds-checked."""
    remaining = len(data) - offset
    if remaining < LIST_HEADER_SIZE:
        raise SignatureListError(
            f"{remaining} trailing bytes at offset {offset}: too short for a signature list header"
        )
    sig_type, list_size, header_size, sig_size = _LIST_HEADER.unpack_from(data, offset)
    where = f"signature list at offset {offset}"
    if list_size < LIST_HEADER_SIZE:
        raise SignatureListError(f"{where}: SignatureListSize {list_size} < {LIST_HEADER_SIZE}")
    if list_size > remaining:
        raise SignatureListError(
            f"{where}: SignatureListSize {list_size} exceeds the {remaining} bytes left"
        )
    if header_size > list_size - LIST_HEADER_SIZE:
        raise SignatureListError(
            f"{where}: SignatureHeaderSize {header_size} overruns SignatureListSize {list_size}"
        )
    if sig_size < OWNER_SIZE:
        raise SignatureListError(f"{where}: SignatureSize {sig_size} < {OWNER_SIZE}")
    body_size = list_size - LIST_HEADER_SIZE - header_size
    if body_size % sig_size:
        raise SignatureListError(
            f"{where}: {body_size} bytes of signatures is not a multiple of "
            f"SignatureSize {sig_size}"
        )
    start = offset + LIST_HEADER_SIZE
    header = data[start : start + header_size]
    entries = tuple(
        (data[pos : pos + OWNER_SIZE], data[pos + OWNER_SIZE : pos + sig_size])
        for pos in range(start + header_size, offset + list_size, sig_size)
    )
    return SignatureList(sig_type, header, sig_size, entries), offset + list_size


def parse(data: bytes) -> list[SignatureList]:
    """Every list in a database; any malformation is an error, not a partial result."""
    data = bytes(data)
    lists = []
    offset = 0
    while offset < len(data):
        sig_list, offset = _parse_one(data, offset)
        lists.append(sig_list)
    return lists


def _check_known_type(index: int, sig_list: SignatureList) -> None:
    """EDK2's mSupportSigItem table: known GUID, header size 0, exact fixed sizes."""
    where = f"signature list {index} ({guid.guid_name(sig_list.sig_type)})"
    if sig_list.sig_type not in KNOWN_DATA_SIZES:
        raise SignatureListError(f"{where}: unknown SignatureType")
    if sig_list.header:
        raise SignatureListError(f"{where}: SignatureHeaderSize must be 0")
    data_size = KNOWN_DATA_SIZES[sig_list.sig_type]
    if data_size is not None and sig_list.signature_size != OWNER_SIZE + data_size:
        raise SignatureListError(
            f"{where}: SignatureSize {sig_list.signature_size} != {OWNER_SIZE + data_size}"
        )


def _check_certificate(der: bytes) -> None:
    """EDK2 loads the public key of every X509 entry; only RSA and EC keys are usable."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except _CERTIFICATE_ERRORS as exc:
        raise SignatureListError(f"X509 entry is not a usable DER certificate: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SignatureListError(f"X509 entry has an unsupported key type {type(key).__name__}")


def check_format(data: bytes, *, is_pk: bool) -> None:
    """Refuse what EDK2's CheckSignatureListFormat refuses, before anything is stored."""
    count = 0
    for index, sig_list in enumerate(parse(data)):
        _check_known_type(index, sig_list)
        if sig_list.sig_type == guid.EFI_CERT_X509:
            for _owner, der in sig_list.entries:
                _check_certificate(der)
        count += len(sig_list.entries)
    if is_pk and count > 1:
        raise SignatureListError(f"PK holds at most one signature, got {count}")


def filter_append(existing: bytes, new: bytes) -> bytes:
    """What an APPEND_WRITE actually adds: EDK2's FilterSignatureList.

    An entry is a duplicate when the same owner+data bytes already sit in a list of the
    same SignatureType and SignatureSize; like EDK2, this works on any type, known or not,
    and does not deduplicate within `new` itself.
    """
    seen: dict[tuple[bytes, int], set[bytes]] = {}
    for sig_list in parse(existing):
        bucket = seen.setdefault((sig_list.sig_type, sig_list.signature_size), set())
        bucket.update(owner + data for owner, data in sig_list.entries)
    out = bytearray()
    for sig_list in parse(new):
        known = seen.get((sig_list.sig_type, sig_list.signature_size), set())
        kept = tuple(e for e in sig_list.entries if e[0] + e[1] not in known)
        if kept:
            out += SignatureList(sig_list.sig_type, sig_list.header, sig_list.signature_size,
                                 kept).pack()
    return bytes(out)


def x509_certificates(data: bytes) -> list[bytes]:
    """The certificates a KEK/db trusts, in database order."""
    return [d for sl in parse(data) if sl.sig_type == guid.EFI_CERT_X509 for _o, d in sl.entries]


def _validate_owner(owner: bytes) -> None:
    if len(owner) != OWNER_SIZE:
        raise SignatureListError("SignatureOwner must be 16 bytes")


def build(sig_type: bytes, owner: bytes, items: list[bytes]) -> bytes:
    """A database holding items; X509 gets one list per certificate since sizes differ."""
    _validate_owner(owner)
    if not items:
        return b""
    if sig_type == guid.EFI_CERT_X509:
        return b"".join(
            SignatureList(sig_type, b"", OWNER_SIZE + len(i), ((owner, i),)).pack() for i in items
        )
    expected = KNOWN_DATA_SIZES.get(sig_type)
    sizes = {len(i) for i in items}
    if expected is not None and sizes != {expected}:
        raise SignatureListError(
            f"{guid.guid_name(sig_type)} entries must be {expected} bytes, got {sorted(sizes)}"
        )
    if len(sizes) != 1:
        raise SignatureListError(f"entries of one list must share a size, got {sorted(sizes)}")
    entries = tuple((owner, i) for i in items)
    return SignatureList(sig_type, b"", OWNER_SIZE + sizes.pop(), entries).pack()


def _describe_certificate(der: bytes) -> dict[str, Any]:
    info: dict[str, Any] = {"sha256": hashlib.sha256(der).hexdigest()}
    try:
        cert = x509.load_der_x509_certificate(der)
        info.update(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    serial=format(cert.serial_number, "x"))
    except _CERTIFICATE_ERRORS as exc:
        info["error"] = f"unparseable certificate: {exc}"
    return info


def _describe_entry(sig_type: bytes, owner: bytes, data: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {"owner": guid.guid_str(owner)}
    if sig_type == guid.EFI_CERT_X509:
        entry.update(_describe_certificate(data))
    elif sig_type in _PLAIN_HASHES:
        entry["hash"] = data.hex()
    elif sig_type in _X509_HASHES and len(data) > _REVOCATION_TIME_SIZE:
        entry["hash"] = data[:-_REVOCATION_TIME_SIZE].hex()
        entry["revocation_time"] = str(EfiTime.unpack(data[-_REVOCATION_TIME_SIZE:]))
    else:
        entry["data"] = data.hex()
    return entry


def describe(data: bytes) -> list[dict[str, Any]]:
    """A JSON-ready view for operators; fingerprints rather than raw DER."""
    out = []
    for sig_list in parse(data):
        item: dict[str, Any] = {
            "type": guid.guid_name(sig_list.sig_type),
            "type_guid": guid.guid_str(sig_list.sig_type),
            "signature_size": sig_list.signature_size,
            "entries": [_describe_entry(sig_list.sig_type, o, d) for o, d in sig_list.entries],
        }
        if sig_list.header:
            item["header"] = sig_list.header.hex()
        out.append(item)
    return out
