"""Time-based authenticated writes made on the host, for `efird vars enroll`.

The signature is a PKCS#7 SignedData (SHA-256, no signed attributes, detached, signer
certificate embedded) over what UEFI 2.10 §8.2.6 says it covers, made with the
`cryptography` package's PKCS7SignatureBuilder; the AUTHENTICATION_2 descriptor carries
the bare SignedData, as sign-efi-sig-list writes it. Loading certificates and keys also
goes through `cryptography`, so any PEM or DER file it reads is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from efird.efi.time import EfiTime
from efird.variables import authvars


class CredentialError(ValueError):
    """A certificate or key file efird cannot use; the message names the file."""


def load_certificate(data: bytes, source: str) -> bytes:
    """An X.509 certificate from PEM or DER bytes, as DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CredentialError(f"{source}: not a PEM or DER X.509 certificate ({exc})") from None
    return cert.public_bytes(Encoding.DER)


def is_certificate(data: bytes) -> bool:
    try:
        load_certificate(data, "")
    except CredentialError:
        return False
    return True


@dataclass(frozen=True)
class Signer:
    """A private key and its certificate (DER)."""

    key: Any
    certificate: bytes

    @classmethod
    def load(cls, key_path: Path, certificate: bytes) -> Signer:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        try:
            data = key_path.read_bytes()
        except OSError as exc:
            raise CredentialError(f"{key_path}: {exc.strerror}") from None
        try:
            if b"-----BEGIN" in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_der_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise CredentialError(f"{key_path}: not an unencrypted PEM or DER private key "
                                  f"({exc})") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CredentialError(f"{key_path}: only RSA and EC keys can sign")
        cert = x509.load_der_x509_certificate(certificate)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise CredentialError(f"{key_path}: the key does not belong to certificate "
                                  f"{cert.subject.rfc4514_string()}")
        return cls(key, certificate)

    def sign(self, content: bytes) -> bytes:
        """Bare PKCS#7 SignedData over content."""
        from asn1crypto import cms
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

        cert = x509.load_der_x509_certificate(self.certificate)
        der = (pkcs7.PKCS7SignatureBuilder().set_data(content)
               .add_signer(cert, self.key, hashes.SHA256())
               .sign(Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                    pkcs7.PKCS7Options.NoAttributes,
                                    pkcs7.PKCS7Options.Binary]))
        return bytes(cms.ContentInfo.load(der)["content"].untag().dump())


def timestamp_after(previous: bytes | None, now: datetime | None = None) -> bytes:
    """An EFI_TIME for a new write: the current UTC second, or one second past the stored
    timestamp when the clock is behind it (a replacing write must be strictly later)."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    if previous is not None:
        p = EfiTime.unpack(previous)
        if p.year >= 1900:
            try:
                last = datetime(p.year, p.month, p.day, p.hour, p.minute, p.second, tzinfo=UTC)
            except ValueError:
                last = None
            if last is not None and last >= moment:
                moment = last + timedelta(seconds=1)
    return EfiTime(moment.year, moment.month, moment.day, moment.hour, moment.minute,
                   moment.second, timezone=0).pack()


def authenticated_write(name: str, guid: bytes, attributes: int, payload: bytes,
                        timestamp: bytes, signer: Signer | None) -> bytes:
    """EFI_VARIABLE_AUTHENTICATION_2 || payload, signed by signer, or with an empty
    certificate (what setup mode accepts, as OVMF's EnrollDefaultKeys writes) when None."""
    cert_data = b""
    if signer is not None:
        content = authvars.signed_content(
            name, guid, attributes,
            authvars.AuthWrite(timestamp, 0, b"", b"", payload))
        cert_data = signer.sign(content)
    return authvars.pack_auth2(timestamp, cert_data, payload)
