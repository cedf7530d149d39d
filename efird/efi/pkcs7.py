"""PKCS#7 SignedData of EFI_VARIABLE_AUTHENTICATION_2 (UEFI 2.10 §8.2.6).

Semantics follow EDK2 CryptoPkg Pkcs7Verify as used by AuthVariableLib: the data may be
a ContentInfo or a bare SignedData, only SHA-256 is accepted, the signer must chain to a
trusted certificate (any certificate of the trust list is an anchor, as with OpenSSL's
PARTIAL_CHAIN) and validity periods are ignored because firmware has no trusted clock.

ASN.1 is parsed with asn1crypto and all cryptography done with `cryptography`: a
hand-rolled DER parser would be the most attacker-exposed code in the daemon.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from asn1crypto import cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

_SIGNED_DATA_OID = "1.2.840.113549.1.7.2"
_DATA_OID = "1.2.840.113549.1.7.1"
_SHA256_OID = "2.16.840.1.101.3.4.2.1"
# SignerInfo.signatureAlgorithm values that can carry a SHA-256 signature.
_SIGNATURE_KINDS = {
    "1.2.840.113549.1.1.1": "rsa",  # rsaEncryption, what OpenSSL writes
    "1.2.840.113549.1.1.11": "rsa",  # sha256WithRSAEncryption
    "1.2.840.10045.4.3.2": "ecdsa",  # ecdsa-with-SHA256
    "1.2.840.10045.2.1": "ecdsa",  # id-ecPublicKey, written by some signers
}
# Intermediates allowed between the signer and a trust anchor.
MAX_CHAIN_DEPTH = 8

_TAG_INTEGER = 2
_TAG_OID = 6
_TAG_SEQUENCE = 16


class Pkcs7Error(ValueError):
    """Authentication data that can never verify: SetVariable answers SECURITY_VIOLATION."""


@dataclass(frozen=True)
class SignerInfo:
    """What verification needs from one SignerInfo, extracted once at parse time.

    `signed_attrs` is the DER SET OF the signed attributes (the bytes actually signed), or
    None when the signature is directly over the content. `issuer` is the DER Name of an
    IssuerAndSerialNumber sid, `key_id` the SubjectKeyIdentifier of the other sid form.
    """

    issuer: bytes | None
    serial: int | None
    key_id: bytes | None
    signature_kind: str
    signature: bytes = field(repr=False)
    signed_attrs: bytes | None
    message_digest: bytes | None
    issuer_key: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class _Cert:
    """A certificate loaded by both libraries: asn1crypto for matching, cryptography for keys."""

    der: bytes
    cert: x509.Certificate
    issuer: str  # asn1crypto Name.hashable: RFC 5280 §7.1 normalised, like X509_NAME_cmp
    serial: int
    key_id: bytes | None


@dataclass(frozen=True)
class SignedData:
    """A parsed SignedData; `content` is the embedded content, None when detached."""

    certificates: list[bytes]
    signer_infos: list[SignerInfo]
    content: bytes | None = None
    _certs: tuple[_Cert, ...] = field(default=(), repr=False, compare=False)


def _load_cert(der: bytes) -> _Cert:
    """Raises (various) when either library refuses the certificate."""
    crypto_cert = x509.load_der_x509_certificate(der)
    _ = crypto_cert.subject, crypto_cert.issuer  # decoded lazily: fail here, not later
    asn = asn1_x509.Certificate.load(der, strict=True)
    try:
        key_id = asn.key_identifier
    except ValueError:
        key_id = None
    return _Cert(der, crypto_cert, asn.issuer.hashable, asn.serial_number, key_id)


def _unwrap(der: bytes) -> Any:
    """The SignedData, whether or not it comes wrapped in a ContentInfo (EDK2 accepts both)."""
    if not der:
        raise Pkcs7Error("empty PKCS#7 data")
    class_, _method, tag, _header, contents, _trailer = parser.parse(der, strict=True)
    if class_ != 0 or tag != _TAG_SEQUENCE:
        raise Pkcs7Error("PKCS#7 data is not a DER SEQUENCE")
    first_tag = parser.parse(contents)[2] if contents else None
    if first_tag == _TAG_INTEGER:
        return cms.SignedData.load(der, strict=True)
    if first_tag != _TAG_OID:
        raise Pkcs7Error("neither a ContentInfo nor a SignedData")
    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].dotted != _SIGNED_DATA_OID:
        raise Pkcs7Error(f"ContentInfo holds {info['content_type'].native}, not signedData")
    return info["content"]


def _require_sha256(algorithm: Any, what: str) -> None:
    dotted = algorithm["algorithm"].dotted
    if dotted != _SHA256_OID:
        raise Pkcs7Error(f"{what} is {algorithm['algorithm'].native}, only sha256 is accepted")


def _signed_attributes(attrs: Any) -> tuple[bytes, bytes]:
    """The DER SET OF that was signed and the messageDigest it commits to."""
    raw = attrs.dump()
    if raw[0] != 0xA0:
        raise Pkcs7Error("signed attributes are not [0] IMPLICIT")
    digests = [a["values"] for a in attrs if a["type"].native == "message_digest"]
    if len(digests) != 1 or len(digests[0]) != 1:
        raise Pkcs7Error("signed attributes need exactly one messageDigest value")
    return b"\x31" + raw[1:], bytes(digests[0][0].native)


def _signer_id(sid: Any) -> tuple[bytes | None, str | None, int | None, bytes | None]:
    """(issuer DER, normalised issuer, serial, key id) of a SignerIdentifier."""
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        return issuer.dump(), issuer.hashable, sid.chosen["serial_number"].native, None
    return None, None, None, bytes(sid.chosen.native)


def _signer_info(info: Any) -> SignerInfo:
    _ = info.native  # forces every lazy field so malformations surface here
    _require_sha256(info["digest_algorithm"], "signer digest algorithm")
    kind = _SIGNATURE_KINDS.get(info["signature_algorithm"]["algorithm"].dotted)
    if kind is None:
        raise Pkcs7Error(
            f"unsupported signature algorithm {info['signature_algorithm']['algorithm'].native}"
        )
    issuer, issuer_key, serial, key_id = _signer_id(info["sid"])
    attrs = info["signed_attrs"]
    signed, digest = (None, None) if isinstance(attrs, core.Void) else _signed_attributes(attrs)
    return SignerInfo(issuer, serial, key_id, kind, bytes(info["signature"].native), signed,
                      digest, issuer_key)


def _embedded_certificates(signed: Any) -> list[bytes]:
    certs = signed["certificates"]
    if isinstance(certs, core.Void):
        return []
    return [choice.chosen.dump() for choice in certs if choice.name == "certificate"]


def _embedded_content(signed: Any) -> bytes | None:
    encap = signed["encap_content_info"]
    if encap["content_type"].dotted != _DATA_OID:
        raise Pkcs7Error(f"signed content type is {encap['content_type'].native}, not data")
    content = encap["content"]
    if isinstance(content, core.Void):
        return None
    return bytes(content.native)


def _parse(der: bytes) -> SignedData:
    signed = _unwrap(der)
    _ = signed["version"].native  # forces parsing
    for algorithm in signed["digest_algorithms"]:
        _require_sha256(algorithm, "digest algorithm")
    infos = [_signer_info(i) for i in signed["signer_infos"]]
    if not infos:
        raise Pkcs7Error("SignedData has no signer")
    certificates = _embedded_certificates(signed)
    loaded = tuple(_load_cert(c) for c in certificates)
    return SignedData(certificates, infos, _embedded_content(signed), loaded)


def parse_signed_data(der: bytes) -> SignedData:
    """Parse completely now, so every malformation is one Pkcs7Error and nothing else."""
    try:
        return _parse(bytes(der))
    except Pkcs7Error:
        raise
    except Exception as exc:  # asn1crypto and cryptography raise many types on bad input
        raise Pkcs7Error(f"malformed PKCS#7 data: {exc}") from None


def _matches(info: SignerInfo, cert: _Cert) -> bool:
    if info.key_id is not None:
        return cert.key_id == info.key_id
    return info.issuer_key is not None and (cert.serial, cert.issuer) == (
        info.serial, info.issuer_key)


def _find_signer(info: SignerInfo, pool: Sequence[_Cert]) -> _Cert | None:
    return next((c for c in pool if _matches(info, c)), None)


def _issued_by(child: _Cert, parent: _Cert) -> bool:
    """Issuer name == subject name and the parent's key made the child's signature."""
    try:
        child.cert.verify_directly_issued_by(parent.cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _signature_ok(info: SignerInfo, signer: _Cert, content: bytes) -> bool:
    if info.signed_attrs is not None:
        if info.message_digest != hashlib.sha256(content).digest():
            return False
        signed = info.signed_attrs
    else:
        signed = content
    key = signer.cert.public_key()
    try:
        if info.signature_kind == "rsa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(info.signature, signed, padding.PKCS1v15(), hashes.SHA256())
        elif info.signature_kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(info.signature, signed, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _anchored(cert: _Cert, anchors: Sequence[_Cert]) -> bool:
    return any(cert.der == a.der or _issued_by(cert, a) for a in anchors)


def _chains_to(signer: _Cert, anchors: Sequence[_Cert], pool: Sequence[_Cert]) -> bool:
    """Breadth-first, each certificate visited once: bounded work even on crafted loops."""
    visited = {signer.der}
    frontier = [signer]
    for _depth in range(MAX_CHAIN_DEPTH + 1):
        if any(_anchored(c, anchors) for c in frontier):
            return True
        following = []
        for candidate in pool:
            if candidate.der not in visited and any(_issued_by(c, candidate) for c in frontier):
                visited.add(candidate.der)
                following.append(candidate)
        if not following:
            return False
        frontier = following
    return False


def _load_trusted(trusted: Sequence[bytes]) -> list[_Cert]:
    """Unusable trust-list entries are skipped: one odd db cert must not disable the rest."""
    anchors = []
    for der in trusted:
        try:
            anchors.append(_load_cert(bytes(der)))
        except Exception:  # any failure just means "not an anchor"
            continue
    return anchors


def _verify(sd: SignedData, content: bytes, trusted: Sequence[bytes]) -> bool:
    if sd.content is not None and sd.content != content:
        return False
    anchors = _load_trusted(trusted)
    if not anchors or not sd.signer_infos:
        return False
    for info in sd.signer_infos:
        signer = _find_signer(info, [*sd._certs, *anchors])
        if signer is None or not _signature_ok(info, signer, content):
            return False
        if not _chains_to(signer, anchors, sd._certs):
            return False
    return True


def verify(sd: SignedData, content: bytes, trusted: Sequence[bytes]) -> bool:
    """Whether every signer signed `content` and chains to `trusted`; never raises."""
    try:
        return _verify(sd, bytes(content), trusted)
    except Exception:
        return False


def _top_level(signer: _Cert, pool: Sequence[_Cert]) -> _Cert:
    current, seen = signer, {signer.der}
    for _depth in range(MAX_CHAIN_DEPTH + 1):
        parent = next((c for c in pool if c.der not in seen and _issued_by(current, c)), None)
        if parent is None:
            break
        current = parent
        seen.add(parent.der)
    return current


def _common_name(cert: _Cert) -> str:
    names = cert.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise Pkcs7Error("signer certificate has no CommonName")
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")


def signer_identity(sd: SignedData) -> tuple[bytes, bytes]:
    """EDK2 CertDB identity of a private authenticated variable's owner.

    EDK2 (AuthService.c CalculatePrivAuthVarSignChainSHA256Digest) binds the variable to
    SHA-256(signer CN || top-level TBSCertificate), so a re-issued signer certificate from
    the same root keeps write access while a different root does not. The top-level cert
    is where the issuer chain through the embedded certificates ends.
    """
    try:
        return _signer_identity(sd)
    except Pkcs7Error:
        raise
    except Exception as exc:  # a certificate field that only fails when decoded
        raise Pkcs7Error(f"cannot identify the signer: {exc}") from None


def _signer_identity(sd: SignedData) -> tuple[bytes, bytes]:
    if not sd.signer_infos:
        raise Pkcs7Error("SignedData has no signer")
    signer = _find_signer(sd.signer_infos[0], sd._certs)
    if signer is None:
        raise Pkcs7Error("the signer certificate is not embedded")
    top = _top_level(signer, sd._certs)
    common_name = _common_name(signer).encode("utf-8", "surrogateescape")
    identity = hashlib.sha256(common_name + top.cert.tbs_certificate_bytes).digest()
    return top.der, identity
