"""PKCS#7 verification of EFI_VARIABLE_AUTHENTICATION_2, against real efitools/openssl output."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import pytest
from asn1crypto import algos, cms, core, parser
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from efird.efi import guid as g
from efird.efi import pkcs7
from efird.efi.pkcs7 import Pkcs7Error
from efird.efi.time import EfiTime

from . import sbkeys

OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
VENDOR = "a7d8f6a2-4c1b-4e0e-9d36-2f4b2c3e5a10"
VENDOR_B = g.guid_bytes(VENDOR)
TS = "2024-03-04 05:06:07"
PRIVATE_ATTRS = 0x27
WHEN = EfiTime(2024, 3, 4, 5, 6, 7)

Keys = dict[str, sbkeys.KeyPair]


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = sbkeys.session_dir(tmp_path_factory)
    root = sbkeys.make_keypair(d, "root", "Test Root CA")
    inter = sbkeys.make_keypair(d, "inter", "Test Intermediate CA", signer=root)
    return {
        "root": root,
        "inter": inter,
        "leaf": sbkeys.make_keypair(d, "leaf", "Test Leaf", signer=inter),
        "kek": sbkeys.make_keypair(d, "kek", "Test KEK", signer=root),
        "kek2": sbkeys.make_keypair(d, "kek2", "Test KEK", signer=root),  # re-issued KEK
        "pk": sbkeys.make_keypair(d, "pk", "Test PK"),
        "pk_same_cn": sbkeys.make_keypair(d, "pk_same_cn", "Test PK"),
        "other": sbkeys.make_keypair(d, "other", "Unrelated"),
        "ec": sbkeys.make_keypair(d, "ecpk", "Test EC PK", ec=True),
        "nocn": sbkeys.make_keypair(d, "nocn", "", subject="/O=No Common Name"),
    }


@pytest.fixture(scope="session")
def pk_auth(keys: Keys) -> bytes:
    """A self-signed PK enrolling itself, as every Secure Boot setup guide does it."""
    esl = sbkeys.esl_from_cert(keys["pk"], OWNER)
    return sbkeys.sign_auth("PK", esl, keys["pk"], timestamp=TS)


@pytest.fixture(scope="session")
def db_auth(keys: Keys) -> bytes:
    """db update signed by a KEK that a root CA issued."""
    esl = sbkeys.esl_from_cert(keys["other"], OWNER)
    return sbkeys.sign_auth("db", esl, keys["kek"], timestamp=TS)


def content_of(auth: bytes, name: str, vendor: bytes, attributes: int) -> bytes:
    """What SetVariable(name, vendor, attributes, auth) asks the verifier to check."""
    parts = sbkeys.split_auth(auth)
    return sbkeys.signed_bundle(name, vendor, attributes, parts.timestamp, parts.payload)


def parsed(auth: bytes) -> pkcs7.SignedData:
    return pkcs7.parse_signed_data(sbkeys.split_auth(auth).pkcs7)


def private_auth(keys: Keys, signer: str, payload: bytes = b"private payload", **kw: Any) -> bytes:
    kw.setdefault("wrap_content_info", False)
    return sbkeys.sign_auth_raw("MyVar", VENDOR_B, PRIVATE_ATTRS, payload, WHEN, keys[signer],
                                **kw)


def verifies(auth: bytes, trusted: list[bytes], name: str = "MyVar",
             vendor: bytes = VENDOR_B, attributes: int = PRIVATE_ATTRS) -> bool:
    return pkcs7.verify(parsed(auth), content_of(auth, name, vendor, attributes), trusted)


def rebuild_signed_data(der: bytes, **fields: Any) -> bytes:
    """A bare SignedData with some fields replaced, for structures no tool emits."""
    old = cms.SignedData.load(der)
    new = {name: old[name] for name, _spec, *_ in cms.SignedData._fields
           if not isinstance(old[name], core.Void)}
    new.update(fields)
    return cms.SignedData(new).dump()


# --- what sign-efi-sig-list produces --------------------------------------------------

def test_sign_efi_sig_list_writes_bare_signed_data(pk_auth: bytes) -> None:
    parts = sbkeys.split_auth(pk_auth)
    assert parts.revision == 0x0200
    assert parts.cert_type_code == 0x0EF1
    assert parts.cert_type == g.EFI_CERT_TYPE_PKCS7
    assert parts.timestamp == EfiTime(2024, 3, 4, 5, 6, 7, timezone=0).pack()
    assert parts.timestamp == sbkeys.timestamp_from_text(TS).pack()
    # SEQUENCE { INTEGER version, ... }: a SignedData, not ContentInfo { OID, [0] ... }
    contents = parser.parse(parts.pkcs7)[4]
    assert parser.parse(contents)[2] == 2
    signed = cms.SignedData.load(parts.pkcs7)
    assert isinstance(signed["signer_infos"][0]["signed_attrs"], core.Void)  # PKCS7_NOATTR
    assert isinstance(signed["encap_content_info"]["content"], core.Void)  # detached
    sd = pkcs7.parse_signed_data(parts.pkcs7)
    assert sd.content is None
    assert sd.signer_infos[0].signed_attrs is None


def test_sign_efi_sig_list_signs_fixed_attributes(keys: Keys) -> None:
    esl = sbkeys.esl_from_cert(keys["other"], OWNER)
    trusted = [keys["kek"].cert_der]
    replace = sbkeys.sign_auth("db", esl, keys["kek"], timestamp=TS)
    append = sbkeys.sign_auth("db", esl, keys["kek"], timestamp=TS, append=True)
    db = g.EFI_IMAGE_SECURITY_DATABASE
    assert sbkeys.sign_efi_sig_list_attributes() == 0x27
    assert sbkeys.sign_efi_sig_list_attributes(append=True) == 0x67
    assert verifies(replace, trusted, "db", db, 0x27)
    assert not verifies(replace, trusted, "db", db, 0x67)
    assert not verifies(replace, trusted, "db", db, 0x07)
    assert verifies(append, trusted, "db", db, 0x67)
    assert not verifies(append, trusted, "db", db, 0x27)


def test_sign_efi_sig_list_vendor_guid(keys: Keys) -> None:
    esl = sbkeys.esl_from_cert(keys["other"], OWNER)
    kek = keys["kek"]
    # PK/KEK and db/dbx have fixed GUIDs; any other name takes -g.
    kek_auth = sbkeys.sign_auth("KEK", esl, keys["pk"], timestamp=TS)
    assert verifies(kek_auth, [keys["pk"].cert_der], "KEK", g.EFI_GLOBAL_VARIABLE, 0x27)
    dbt = sbkeys.sign_auth("dbt", esl, kek, timestamp=TS, guid=g.guid_str(
        g.EFI_IMAGE_SECURITY_DATABASE))
    assert verifies(dbt, [kek.cert_der], "dbt", g.EFI_IMAGE_SECURITY_DATABASE, 0x27)
    custom = sbkeys.sign_auth("MyVar", b"opaque", kek, timestamp=TS, guid=VENDOR)
    assert verifies(custom, [kek.cert_der], "MyVar", VENDOR_B, 0x27)
    assert not verifies(custom, [kek.cert_der], "MyVar", g.EFI_GLOBAL_VARIABLE, 0x27)
    with pytest.raises(ValueError, match="needs a vendor GUID"):
        sbkeys.sign_auth("MyVar", b"x", kek, timestamp=TS)


# --- trust ----------------------------------------------------------------------------

def test_self_signed_pk(keys: Keys, pk_auth: bytes) -> None:
    pk = keys["pk"].cert_der
    args = ("PK", g.EFI_GLOBAL_VARIABLE, 0x27)
    assert verifies(pk_auth, [pk], *args)
    assert verifies(pk_auth, [keys["other"].cert_der, pk], *args)
    assert not verifies(pk_auth, [keys["other"].cert_der], *args)
    assert not verifies(pk_auth, [keys["pk_same_cn"].cert_der], *args)
    assert not verifies(pk_auth, [], *args)
    assert parsed(pk_auth).certificates == [pk]


def test_signer_issued_by_trusted_ca(keys: Keys, db_auth: bytes) -> None:
    args = ("db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27)
    assert verifies(db_auth, [keys["kek"].cert_der], *args)
    assert verifies(db_auth, [keys["root"].cert_der], *args)
    assert not verifies(db_auth, [keys["other"].cert_der], *args)
    assert not verifies(db_auth, [keys["inter"].cert_der], *args)  # a sibling CA
    assert not verifies(db_auth, [keys["kek2"].cert_der], *args)  # same CN, other key


def test_chain_through_embedded_intermediate(keys: Keys) -> None:
    root, inter = keys["root"].cert_der, keys["inter"].cert_der
    with_inter = private_auth(keys, "leaf", extra_certs=(keys["inter"],))
    without = private_auth(keys, "leaf")
    assert verifies(with_inter, [root])
    assert verifies(with_inter, [inter])
    assert verifies(with_inter, [keys["leaf"].cert_der])
    assert not verifies(with_inter, [keys["other"].cert_der])
    assert not verifies(without, [root])  # the intermediate is nowhere to be found
    assert verifies(without, [inter])


def test_intermediate_from_the_trust_list_is_not_a_path(keys: Keys) -> None:
    # Chains are built through embedded certificates only; a trusted cert is an anchor.
    auth = private_auth(keys, "leaf")
    assert verifies(auth, [keys["root"].cert_der, keys["inter"].cert_der])


def test_signer_found_in_trust_list_when_not_embedded(keys: Keys) -> None:
    auth = private_auth(keys, "kek", no_certs=True)
    sd = parsed(auth)
    assert sd.certificates == []
    assert verifies(auth, [keys["kek"].cert_der])
    assert not verifies(auth, [keys["root"].cert_der])  # nothing says who the signer is
    with pytest.raises(Pkcs7Error, match="not embedded"):
        pkcs7.signer_identity(sd)


def test_unusable_trust_list_entries_are_skipped(keys: Keys, pk_auth: bytes) -> None:
    args = ("PK", g.EFI_GLOBAL_VARIABLE, 0x27)
    pk = keys["pk"].cert_der
    assert verifies(pk_auth, [b"", b"junk", pk[:-1], pk], *args)
    assert not verifies(pk_auth, [b"", b"junk", pk[:-1]], *args)


# --- tampering ------------------------------------------------------------------------

def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


@pytest.mark.parametrize("where", ["name", "guid", "attributes", "timestamp",
                                   "payload-first", "payload-last"])
def test_any_flipped_byte_fails(keys: Keys, db_auth: bytes, where: str) -> None:
    content = content_of(db_auth, "db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27)
    name_len = len("db") * 2
    index = {"name": 0, "guid": name_len + 5, "attributes": name_len + 16,
             "timestamp": name_len + 20 + 3, "payload-first": name_len + 36,
             "payload-last": len(content) - 1}[where]
    sd = parsed(db_auth)
    trusted = [keys["root"].cert_der]
    assert pkcs7.verify(sd, content, trusted)
    assert not pkcs7.verify(sd, _flip(content, index), trusted)


def test_tampered_signature_or_truncated_content(keys: Keys, db_auth: bytes) -> None:
    parts = sbkeys.split_auth(db_auth)
    content = content_of(db_auth, "db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27)
    trusted = [keys["kek"].cert_der]
    bad_signature = pkcs7.parse_signed_data(_flip(parts.pkcs7, len(parts.pkcs7) - 1))
    assert not pkcs7.verify(bad_signature, content, trusted)
    sd = pkcs7.parse_signed_data(parts.pkcs7)
    assert not pkcs7.verify(sd, content[:-1], trusted)
    assert not pkcs7.verify(sd, content + b"\x00", trusted)
    assert not pkcs7.verify(sd, b"", trusted)


# --- encodings and signature forms ----------------------------------------------------

def test_content_info_and_bare_both_verify(keys: Keys, db_auth: bytes) -> None:
    parts = sbkeys.split_auth(db_auth)
    content = content_of(db_auth, "db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27)
    wrapped = sbkeys.wrap_content_info(parts.pkcs7)
    assert cms.ContentInfo.load(wrapped)["content_type"].native == "signed_data"
    assert sbkeys.unwrap_content_info(wrapped) == parts.pkcs7
    for der in (parts.pkcs7, wrapped):
        sd = pkcs7.parse_signed_data(der)
        assert pkcs7.verify(sd, content, [keys["root"].cert_der])
        assert sd.certificates == [keys["kek"].cert_der]


@pytest.mark.parametrize("wrap", [True, False], ids=["content-info", "bare"])
@pytest.mark.parametrize("attrs", [True, False], ids=["signed-attrs", "no-attrs"])
@pytest.mark.parametrize("signer", ["kek", "ec"])
def test_openssl_cms_forms(keys: Keys, wrap: bool, attrs: bool, signer: str) -> None:
    auth = private_auth(keys, signer, wrap_content_info=wrap, signed_attributes=attrs)
    der = sbkeys.split_auth(auth).pkcs7
    assert (parser.parse(parser.parse(der)[4])[2] == 6) == wrap
    sd = parsed(auth)
    info = sd.signer_infos[0]
    assert (info.signed_attrs is not None) == attrs
    assert info.signature_kind == ("ecdsa" if signer == "ec" else "rsa")
    trusted = [keys["root"].cert_der if signer == "kek" else keys["ec"].cert_der]
    assert verifies(auth, trusted)
    assert not verifies(auth, trusted, name="MyVaR")
    assert not verifies(auth, [keys["other"].cert_der])


def test_signed_attributes_message_digest_must_match(keys: Keys) -> None:
    auth = private_auth(keys, "kek", signed_attributes=True)
    sd = parsed(auth)
    content = content_of(auth, "MyVar", VENDOR_B, PRIVATE_ATTRS)
    info = sd.signer_infos[0]
    assert info.message_digest == hashlib.sha256(content).digest()
    assert info.signed_attrs is not None and info.signed_attrs[0] == 0x31
    assert pkcs7.verify(sd, content, [keys["kek"].cert_der])
    assert not pkcs7.verify(sd, content + b"x", [keys["kek"].cert_der])


def test_subject_key_identifier_signer(keys: Keys) -> None:
    auth = private_auth(keys, "kek", key_id=True, signed_attributes=True)
    info = parsed(auth).signer_infos[0]
    assert info.key_id is not None and info.issuer is None
    assert verifies(auth, [keys["root"].cert_der])
    assert not verifies(auth, [keys["other"].cert_der])


def test_embedded_content_must_equal_content(keys: Keys) -> None:
    auth = private_auth(keys, "kek", embed_content=True)
    sd = parsed(auth)
    content = content_of(auth, "MyVar", VENDOR_B, PRIVATE_ATTRS)
    assert sd.content == content
    assert pkcs7.verify(sd, content, [keys["root"].cert_der])
    assert not pkcs7.verify(sd, _flip(content, 0), [keys["root"].cert_der])


# --- malformed input ------------------------------------------------------------------

@pytest.fixture(scope="session")
def good_der(db_auth: bytes) -> bytes:
    return sbkeys.split_auth(db_auth).pkcs7


def test_error_is_a_value_error() -> None:
    assert issubclass(Pkcs7Error, ValueError)


@pytest.mark.parametrize("der", [b"", b"\x00", b"\x30", b"\x30\x00", b"\x30\x80\x00\x00",
                                 b"\x04\x02ab", b"\x30\x03\x01\x01\xff", b"\xff" * 40],
                         ids=repr)
def test_garbage_is_refused(der: bytes) -> None:
    with pytest.raises(Pkcs7Error):
        pkcs7.parse_signed_data(der)


def test_every_truncation_is_refused(good_der: bytes) -> None:
    for cut in range(len(good_der)):
        with pytest.raises(Pkcs7Error):
            pkcs7.parse_signed_data(good_der[:cut])
    wrapped = sbkeys.wrap_content_info(good_der)
    for cut in range(0, len(wrapped), 7):
        with pytest.raises(Pkcs7Error):
            pkcs7.parse_signed_data(wrapped[:cut])


def test_trailing_junk_is_refused(good_der: bytes) -> None:
    for junk in (b"\x00", b"\x00\x00", b"\x30\x00"):
        with pytest.raises(Pkcs7Error):
            pkcs7.parse_signed_data(good_der + junk)
        with pytest.raises(Pkcs7Error):
            pkcs7.parse_signed_data(sbkeys.wrap_content_info(good_der) + junk)


def test_wrong_content_type_is_refused(good_der: bytes) -> None:
    data = cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    with pytest.raises(Pkcs7Error, match="not signedData"):
        pkcs7.parse_signed_data(data)
    enveloped_oid = cms.ContentInfo({"content_type": "data", "content": b"x"}).dump().replace(
        bytes.fromhex("2a864886f70d010701"), bytes.fromhex("2a864886f70d010703"))
    with pytest.raises(Pkcs7Error):
        pkcs7.parse_signed_data(enveloped_oid)
    encap = cms.ContentInfo({"content_type": "signed_data"})
    with pytest.raises(Pkcs7Error, match="not data"):
        pkcs7.parse_signed_data(rebuild_signed_data(good_der, encap_content_info=encap))


def test_zero_signers_is_refused(good_der: bytes) -> None:
    der = rebuild_signed_data(good_der, signer_infos=cms.SignerInfos([]))
    with pytest.raises(Pkcs7Error, match="no signer"):
        pkcs7.parse_signed_data(der)
    with pytest.raises(Pkcs7Error, match="no signer"):
        pkcs7.parse_signed_data(sbkeys.wrap_content_info(der))


@pytest.mark.parametrize("md", ["sha1", "sha384", "sha512"])
def test_only_sha256_digests(keys: Keys, md: str) -> None:
    auth = private_auth(keys, "kek", md=md)
    with pytest.raises(Pkcs7Error, match="only sha256"):
        parsed(auth)
    assert not verifies_or_refused(auth, [keys["root"].cert_der])


def test_digest_algorithm_set_must_be_sha256(good_der: bytes) -> None:
    algs = cms.DigestAlgorithms([algos.DigestAlgorithm({"algorithm": "sha256"}),
                                 algos.DigestAlgorithm({"algorithm": "sha1"})])
    with pytest.raises(Pkcs7Error, match="digest algorithm is sha1"):
        pkcs7.parse_signed_data(rebuild_signed_data(good_der, digest_algorithms=algs))


def test_rsa_pss_is_refused(keys: Keys) -> None:
    auth = private_auth(keys, "kek", keyopts=("rsa_padding_mode:pss",))
    with pytest.raises(Pkcs7Error, match="unsupported signature algorithm"):
        parsed(auth)


def test_garbage_embedded_certificate_is_refused(good_der: bytes) -> None:
    cert_der = cms.SignedData.load(good_der)["certificates"][0].chosen.dump()
    assert cert_der[4] == 0x30  # the TBSCertificate SEQUENCE
    broken = cert_der[:4] + b"\x31" + cert_der[5:]  # now a SET: no longer a certificate
    with pytest.raises(Pkcs7Error):
        pkcs7.parse_signed_data(good_der.replace(cert_der, broken))


def verifies_or_refused(auth: bytes, trusted: list[bytes]) -> bool:
    try:
        return verifies(auth, trusted)
    except Pkcs7Error:
        return False


def test_verify_never_raises(keys: Keys, good_der: bytes) -> None:
    sd = pkcs7.parse_signed_data(good_der)
    bogus: list[Any] = [None, object(), "text", 42]
    for value in bogus:
        assert pkcs7.verify(value, b"content", [keys["kek"].cert_der]) is False
        assert pkcs7.verify(sd, value, [keys["kek"].cert_der]) is False
        assert pkcs7.verify(sd, b"content", value) is False


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_raise_only_pkcs7_error(data: bytes) -> None:
    with contextlib.suppress(Pkcs7Error):
        pkcs7.parse_signed_data(data)


@given(data=st.data())
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_signatures_never_escape(keys: Keys, db_auth: bytes, good_der: bytes,
                                        data: st.DataObject) -> None:
    der = bytearray(good_der)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(der) - 1))
        der[index] = data.draw(st.integers(0, 255))
    try:
        sd = pkcs7.parse_signed_data(bytes(der))
    except Pkcs7Error:
        return
    content = content_of(db_auth, "db", g.EFI_IMAGE_SECURITY_DATABASE, 0x27)
    result = pkcs7.verify(sd, content, [keys["root"].cert_der, keys["kek"].cert_der])
    assert isinstance(result, bool)
    with contextlib.suppress(Pkcs7Error):
        pkcs7.signer_identity(sd)


# --- signer identity (EDK2 CertDB) ----------------------------------------------------

def _tbs(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).tbs_certificate_bytes


def identity(auth: bytes) -> tuple[bytes, bytes]:
    return pkcs7.signer_identity(parsed(auth))


def test_identity_of_self_signed(keys: Keys, pk_auth: bytes) -> None:
    top, ident = identity(pk_auth)
    assert top == keys["pk"].cert_der
    assert ident == hashlib.sha256(b"Test PK" + _tbs(keys["pk"].cert_der)).digest()


def test_identity_stable_for_same_key(keys: Keys) -> None:
    one = sbkeys.sign_auth("MyVar", b"first", keys["kek"], timestamp=TS, guid=VENDOR)
    two = sbkeys.sign_auth("MyVar", b"second", keys["kek"],
                           timestamp="2025-01-01 00:00:00", guid=VENDOR)
    three = private_auth(keys, "kek", signed_attributes=True, wrap_content_info=True)
    assert identity(one) == identity(two) == identity(three)
    other = sbkeys.sign_auth("MyVar", b"first", keys["other"], timestamp=TS, guid=VENDOR)
    assert identity(other)[1] != identity(one)[1]


def test_identity_differs_for_same_cn_other_key(keys: Keys) -> None:
    a = private_auth(keys, "pk")
    b = private_auth(keys, "pk_same_cn")
    assert identity(a)[1] != identity(b)[1]


def test_identity_uses_top_of_embedded_chain(keys: Keys) -> None:
    root, inter = keys["root"], keys["inter"]
    alone = private_auth(keys, "leaf")
    with_inter = private_auth(keys, "leaf", extra_certs=(inter,))
    full = private_auth(keys, "leaf", extra_certs=(root, inter))
    assert identity(alone) == (keys["leaf"].cert_der, hashlib.sha256(
        b"Test Leaf" + _tbs(keys["leaf"].cert_der)).digest())
    assert identity(with_inter) == (inter.cert_der, hashlib.sha256(
        b"Test Leaf" + _tbs(inter.cert_der)).digest())
    assert identity(full) == (root.cert_der, hashlib.sha256(
        b"Test Leaf" + _tbs(root.cert_der)).digest())


def test_identity_survives_reissued_signer_certificate(keys: Keys) -> None:
    # Same CN, new key, same root: EDK2 lets it keep writing the variable.
    a = private_auth(keys, "kek", extra_certs=(keys["root"],))
    b = private_auth(keys, "kek2", extra_certs=(keys["root"],))
    assert identity(a) == identity(b)
    assert identity(private_auth(keys, "kek"))[1] != identity(private_auth(keys, "kek2"))[1]


def test_identity_needs_a_common_name(keys: Keys) -> None:
    auth = private_auth(keys, "nocn")
    assert verifies(auth, [keys["nocn"].cert_der])
    with pytest.raises(Pkcs7Error, match="CommonName"):
        identity(auth)

