"""Time-based authenticated writes: EFI_VARIABLE_AUTHENTICATION_2 (UEFI 2.10 §8.2.6).

This module decides whether one authenticated write may happen and what it stores;
the variable service applies the result. Behaviour follows EDK2's
SecurityPkg/Library/AuthVariableLib (AuthService.c: VerifyTimeBasedPayload,
ProcessVarWithPk, ProcessVarWithKek), with its status codes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from efird.efi import guid as g
from efird.efi.status import EfiError, Status
from efird.efi.time import EfiTime

if TYPE_CHECKING:
    from efird.efi import pkcs7

# The X.509/PKCS#7 stack (cryptography, asn1crypto) is imported on the first
# authenticated write, not at start-up: most boots never make one, and it is the largest
# part of the daemon's start-up time and memory.

WIN_CERT_TYPE_EFI_GUID = 0x0EF1
WIN_CERT_REVISION = 0x0200
_WIN_CERT = struct.Struct("<IHH16s")  # dwLength, wRevision, wCertificateType, CertType
TIMESTAMP_SIZE = 16
# OFFSET_OF_AUTHINFO2_CERT_DATA: EFI_TIME + WIN_CERTIFICATE_UEFI_GUID header
AUTHINFO2_HEADER = TIMESTAMP_SIZE + _WIN_CERT.size


@dataclass(frozen=True)
class AuthWrite:
    """An EFI_VARIABLE_AUTHENTICATION_2 descriptor and the payload after it."""

    timestamp: bytes
    cert_type: int
    cert_guid: bytes
    cert_data: bytes
    payload: bytes

    @property
    def time(self) -> EfiTime:
        return EfiTime.unpack(self.timestamp)


def split_auth2(data: bytes) -> AuthWrite:
    """Split the descriptor from the payload. Only the lengths are checked here, as EDK2's
    VariableServiceSetVariable does before anything else; a descriptor whose lengths do
    not fit is a SECURITY_VIOLATION."""
    if len(data) < AUTHINFO2_HEADER:
        raise EfiError(Status.SECURITY_VIOLATION, "shorter than EFI_VARIABLE_AUTHENTICATION_2")
    length, _revision, cert_type, cert_guid = _WIN_CERT.unpack_from(data, TIMESTAMP_SIZE)
    if length < _WIN_CERT.size or length > len(data) - TIMESTAMP_SIZE:
        raise EfiError(Status.SECURITY_VIOLATION, f"WIN_CERTIFICATE dwLength {length} invalid")
    end = TIMESTAMP_SIZE + length
    return AuthWrite(
        timestamp=bytes(data[:TIMESTAMP_SIZE]),
        cert_type=cert_type,
        cert_guid=bytes(cert_guid),
        cert_data=bytes(data[AUTHINFO2_HEADER:end]),
        payload=bytes(data[end:]),
    )


def pack_auth2(timestamp: bytes, cert_data: bytes, payload: bytes) -> bytes:
    """The inverse of split_auth2: TimeStamp, WIN_CERTIFICATE_UEFI_GUID(PKCS7), payload."""
    header = _WIN_CERT.pack(_WIN_CERT.size + len(cert_data), WIN_CERT_REVISION,
                            WIN_CERT_TYPE_EFI_GUID, g.EFI_CERT_TYPE_PKCS7)
    return bytes(timestamp) + header + cert_data + payload


def signed_content(name: str, guid: bytes, attributes: int, auth: AuthWrite) -> bytes:
    """What the PKCS#7 signature covers: Name (no NUL) || Guid || Attributes || TimeStamp
    || payload."""
    return b"".join((
        name.encode("utf-16-le", errors="surrogatepass"),
        guid,
        struct.pack("<I", attributes),
        auth.timestamp,
        auth.payload,
    ))


def check_descriptor(auth: AuthWrite, previous: bytes | None, append: bool) -> None:
    """The checks EDK2 makes before any signature work (VerifyTimeBasedPayload)."""
    t = auth.time
    if t.pad1 or t.nanosecond or t.timezone or t.daylight or t.pad2:
        raise EfiError(Status.SECURITY_VIOLATION,
                       "TimeStamp Pad1/Nanosecond/TimeZone/Daylight/Pad2 must be zero")
    if (previous is not None and not append
            and t.ordering_key() <= EfiTime.unpack(previous).ordering_key()):
        raise EfiError(Status.SECURITY_VIOLATION, "TimeStamp is not later than the stored one")
    if auth.cert_type != WIN_CERT_TYPE_EFI_GUID or auth.cert_guid != g.EFI_CERT_TYPE_PKCS7:
        raise EfiError(Status.SECURITY_VIOLATION, "certificate is not WIN_CERT_TYPE_EFI_GUID/PKCS7")


def parse_signature(auth: AuthWrite) -> pkcs7.SignedData:
    from efird.efi import pkcs7

    try:
        return pkcs7.parse_signed_data(auth.cert_data)
    except pkcs7.Pkcs7Error as exc:
        raise EfiError(Status.SECURITY_VIOLATION, f"PKCS#7: {exc}") from None


def verify_signed_by(name: str, guid: bytes, attributes: int, auth: AuthWrite,
                     trusted: list[bytes]) -> pkcs7.SignedData:
    """Verify the write against any of the trusted certificates (DER)."""
    sd = parse_signature(auth)
    content = signed_content(name, guid, attributes, auth)
    if not trusted or not verify(sd, content, trusted):
        raise EfiError(Status.SECURITY_VIOLATION,
                       "signature does not verify against the trust anchor")
    return sd


def verify(sd: pkcs7.SignedData, content: bytes, trusted: list[bytes]) -> bool:
    from efird.efi import pkcs7

    return pkcs7.verify(sd, content, trusted)


def filter_append(existing: bytes, new: bytes) -> bytes:
    """EDK2 FilterSignatureList: what an APPEND adds that is not there already."""
    from efird.efi import siglist

    return siglist.filter_append(existing, new)


def check_signature_lists(payload: bytes, *, is_pk: bool) -> None:
    """PK/KEK/db/dbx/dbt payloads must be well-formed signature lists (EDK2
    CheckSignatureListFormat): INVALID_PARAMETER otherwise."""
    from efird.efi import siglist

    try:
        siglist.check_format(payload, is_pk=is_pk)
    except siglist.SignatureListError as exc:
        raise EfiError(Status.INVALID_PARAMETER, f"signature list: {exc}") from None


def certificates_of(data: bytes) -> list[bytes]:
    """X.509 certificates in a stored PK/KEK value; a damaged value yields none."""
    from efird.efi import siglist

    try:
        return siglist.x509_certificates(data)
    except siglist.SignatureListError:
        return []


def private_signer_record(sd: pkcs7.SignedData) -> bytes:
    """What a private authenticated variable remembers of its creator (EDK2's CertDB):
    identity hash (32 bytes) || top-level certificate DER."""
    from efird.efi import pkcs7

    try:
        top, identity = pkcs7.signer_identity(sd)
    except pkcs7.Pkcs7Error as exc:
        raise EfiError(Status.SECURITY_VIOLATION, f"PKCS#7 signer: {exc}") from None
    return identity + top


def split_signer_record(record: bytes) -> tuple[bytes, bytes]:
    return record[:32], record[32:]
