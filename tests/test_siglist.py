"""EFI_SIGNATURE_LIST parsing, EDK2 format checks and append filtering."""

from __future__ import annotations

import datetime
import hashlib
import json
import struct
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from efird.efi import guid as g
from efird.efi import siglist
from efird.efi.siglist import SignatureList, SignatureListError
from efird.efi.time import EfiTime

from . import sbkeys

OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
OWNER_B = g.guid_bytes(OWNER)
OTHER_OWNER = g.guid_bytes("11111111-2222-3333-4444-555555555555")
UNKNOWN_TYPE = g.guid_bytes("deadbeef-0000-4000-8000-0123456789ab")

FIXED_TYPES = {t: size for t, size in siglist.KNOWN_DATA_SIZES.items() if size is not None}


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, sbkeys.KeyPair]:
    d = sbkeys.session_dir(tmp_path_factory)
    root = sbkeys.make_keypair(d, "root", "Test Root CA")
    return {
        "pk": sbkeys.make_keypair(d, "pk", "Test PK"),
        "kek": sbkeys.make_keypair(d, "kek", "Test KEK", signer=root),
        "ec": sbkeys.make_keypair(d, "ecpk", "Test EC PK", ec=True),
    }


def raw_list(sig_type: bytes, list_size: int, header_size: int, sig_size: int,
             rest: bytes = b"") -> bytes:
    """A list header with arbitrary (possibly lying) size fields."""
    return struct.pack("<16sIII", sig_type, list_size, header_size, sig_size) + rest


def sha256_list(*datas: bytes, owner: bytes = OWNER_B) -> bytes:
    return siglist.build(g.EFI_CERT_SHA256, owner, [hashlib.sha256(d).digest() for d in datas])


def entries_of(data: bytes) -> list[tuple[bytes, int, bytes]]:
    return [(sl.sig_type, sl.signature_size, o + d)
            for sl in siglist.parse(data) for o, d in sl.entries]


def self_signed_ed25519() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed25519")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, None))
    return cert.public_bytes(serialization.Encoding.DER)


# --- parse / pack ---------------------------------------------------------------------

def test_empty_database_is_no_lists() -> None:
    assert siglist.parse(b"") == []
    siglist.check_format(b"", is_pk=True)
    assert siglist.filter_append(b"", b"") == b""


def test_parse_tool_output(keys: dict[str, sbkeys.KeyPair]) -> None:
    esl = sbkeys.esl_from_cert(keys["pk"], OWNER)
    (only,) = siglist.parse(esl)
    assert only.sig_type == g.EFI_CERT_X509
    assert only.header == b""
    assert only.entries == ((OWNER_B, keys["pk"].cert_der),)
    assert only.signature_size == 16 + len(keys["pk"].cert_der)
    assert only.pack() == esl
    assert siglist.x509_certificates(esl) == [keys["pk"].cert_der]


def test_build_x509_matches_cert_to_efi_sig_list(keys: dict[str, sbkeys.KeyPair]) -> None:
    tool = sbkeys.esl_from_cert(keys["pk"], OWNER) + sbkeys.esl_from_cert(keys["kek"], OWNER)
    ours = siglist.build(g.EFI_CERT_X509, OWNER_B, [keys["pk"].cert_der, keys["kek"].cert_der])
    assert ours == tool
    assert len(siglist.parse(ours)) == 2  # one list per certificate
    assert siglist.x509_certificates(tool + sha256_list(b"x")) == [
        keys["pk"].cert_der, keys["kek"].cert_der]


def test_multiple_lists_and_header_roundtrip() -> None:
    lists = [
        SignatureList(UNKNOWN_TYPE, b"hdr", 20, ((OWNER_B, b"abcd"), (OTHER_OWNER, b"efgh"))),
        SignatureList(g.EFI_CERT_SHA256, b"", 48, ()),
        SignatureList(g.EFI_CERT_SHA1, b"", 36, ((OWNER_B, bytes(20)),)),
    ]
    data = b"".join(sl.pack() for sl in lists)
    assert siglist.parse(data) == lists
    assert siglist.parse(bytearray(data)) == lists


VALID = raw_list(g.EFI_CERT_SHA256, 28 + 48, 0, 48, OWNER_B + bytes(32))

MALFORMED = {
    "header truncated": (VALID[:27], "too short for a signature list header"),
    "one byte": (b"\x00", "too short"),
    "list size zero": (raw_list(g.EFI_CERT_SHA256, 0, 0, 48), "SignatureListSize 0 < 28"),
    "list size 27": (raw_list(g.EFI_CERT_SHA256, 27, 0, 48), "SignatureListSize 27 < 28"),
    "list truncated": (VALID[:-1], "SignatureListSize 76 exceeds the 75 bytes left"),
    "list size huge": (raw_list(g.EFI_CERT_SHA256, 0xFFFFFFFF, 0, 48, bytes(48)), "exceeds"),
    "header overruns": (raw_list(g.EFI_CERT_SHA256, 28 + 4, 5, 16, bytes(4)),
                        "SignatureHeaderSize 5 overruns"),
    "header size huge": (raw_list(g.EFI_CERT_SHA256, 28, 0xFFFFFFFF, 16), "overruns"),
    "signature size zero": (raw_list(g.EFI_CERT_SHA256, 28 + 32, 0, 0, bytes(32)),
                            "SignatureSize 0 < 16"),
    "signature size 15": (raw_list(g.EFI_CERT_SHA256, 28 + 30, 0, 15, bytes(30)),
                          "SignatureSize 15 < 16"),
    "not a multiple": (raw_list(g.EFI_CERT_SHA256, 28 + 50, 0, 48, bytes(50)),
                       "50 bytes of signatures is not a multiple of SignatureSize 48"),
    "not a multiple after header": (raw_list(UNKNOWN_TYPE, 28 + 2 + 17, 2, 16, bytes(19)),
                                    "17 bytes"),
    "trailing byte": (VALID + b"\x00", "1 trailing bytes at offset 76"),
    "trailing 27 bytes": (VALID + bytes(27), "27 trailing bytes"),
    "second list truncated": (VALID + VALID[:-5], "at offset 76: SignatureListSize 76 exceeds"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_is_refused_everywhere(case: str) -> None:
    data, reason = MALFORMED[case]
    with pytest.raises(SignatureListError, match=reason):
        siglist.parse(data)
    with pytest.raises(SignatureListError):
        siglist.check_format(data, is_pk=False)
    with pytest.raises(SignatureListError):
        siglist.filter_append(data, VALID)
    with pytest.raises(SignatureListError):
        siglist.filter_append(VALID, data)
    with pytest.raises(SignatureListError):
        siglist.x509_certificates(data)
    with pytest.raises(SignatureListError):
        siglist.describe(data)


def test_error_is_a_value_error() -> None:
    assert issubclass(SignatureListError, ValueError)


@pytest.mark.parametrize("bad", [
    SignatureList(b"short", b"", 48, ()),
    SignatureList(g.EFI_CERT_SHA256, b"", 8, ()),
    SignatureList(g.EFI_CERT_SHA256, b"", 48, ((b"owner", bytes(32)),)),
    SignatureList(g.EFI_CERT_SHA256, b"", 48, ((OWNER_B, bytes(31)),)),
])
def test_pack_refuses_inconsistent_lists(bad: SignatureList) -> None:
    with pytest.raises(SignatureListError):
        bad.pack()


# --- check_format ---------------------------------------------------------------------

def test_check_format_accepts_tool_output(keys: dict[str, sbkeys.KeyPair]) -> None:
    for kp in keys.values():
        siglist.check_format(sbkeys.esl_from_cert(kp, OWNER), is_pk=True)
    kek_db = b"".join(sbkeys.esl_from_cert(kp, OWNER) for kp in keys.values())
    siglist.check_format(kek_db + sha256_list(b"a", b"b"), is_pk=False)


@pytest.mark.parametrize("sig_type", list(FIXED_TYPES), ids=g.guid_name)
def test_fixed_size_types(sig_type: bytes) -> None:
    size = FIXED_TYPES[sig_type]
    good = siglist.build(sig_type, OWNER_B, [bytes([1]) * size, bytes([2]) * size])
    siglist.check_format(good, is_pk=False)
    for wrong in (size - 1, size + 1):
        bad = SignatureList(sig_type, b"", 16 + wrong, ((OWNER_B, bytes(wrong)),)).pack()
        with pytest.raises(SignatureListError, match=f"SignatureSize {16 + wrong} != "):
            siglist.check_format(bad, is_pk=False)
    with_header = SignatureList(sig_type, b"\x00", 16 + size, ((OWNER_B, bytes(size)),)).pack()
    with pytest.raises(SignatureListError, match="SignatureHeaderSize must be 0"):
        siglist.check_format(with_header, is_pk=False)
    with pytest.raises(SignatureListError, match=r"entries must be \d+ bytes"):
        siglist.build(sig_type, OWNER_B, [bytes(size + 1)])


def test_unknown_type_is_refused() -> None:
    data = SignatureList(UNKNOWN_TYPE, b"", 20, ((OWNER_B, b"abcd"),)).pack()
    with pytest.raises(SignatureListError, match="unknown SignatureType"):
        siglist.check_format(sha256_list(b"x") + data, is_pk=False)


def test_x509_header_is_refused(keys: dict[str, sbkeys.KeyPair]) -> None:
    der = keys["pk"].cert_der
    data = SignatureList(g.EFI_CERT_X509, b"\x00" * 4, 16 + len(der), ((OWNER_B, der),)).pack()
    with pytest.raises(SignatureListError, match="SignatureHeaderSize must be 0"):
        siglist.check_format(data, is_pk=False)


@pytest.mark.parametrize("payload", [b"", b"not a certificate", b"\x30\x03\x02\x01\x01"])
def test_x509_entry_must_be_a_certificate(payload: bytes) -> None:
    data = SignatureList(g.EFI_CERT_X509, b"", 16 + len(payload), ((OWNER_B, payload),)).pack()
    with pytest.raises(SignatureListError, match="not a usable DER certificate"):
        siglist.check_format(data, is_pk=False)


def test_x509_truncated_or_padded_certificate(keys: dict[str, sbkeys.KeyPair]) -> None:
    der = keys["kek"].cert_der
    for payload in (der[:-1], der + b"\x00"):
        data = siglist.SignatureList(
            g.EFI_CERT_X509, b"", 16 + len(payload), ((OWNER_B, payload),)).pack()
        with pytest.raises(SignatureListError):
            siglist.check_format(data, is_pk=False)


def test_x509_key_type_must_be_rsa_or_ec() -> None:
    data = siglist.build(g.EFI_CERT_X509, OWNER_B, [self_signed_ed25519()])
    with pytest.raises(SignatureListError, match="unsupported key type"):
        siglist.check_format(data, is_pk=False)


def test_pk_holds_one_signature(keys: dict[str, sbkeys.KeyPair]) -> None:
    one = sbkeys.esl_from_cert(keys["pk"], OWNER)
    two = one + sbkeys.esl_from_cert(keys["kek"], OWNER)
    siglist.check_format(one, is_pk=True)
    siglist.check_format(two, is_pk=False)
    with pytest.raises(SignatureListError, match="PK holds at most one signature, got 2"):
        siglist.check_format(two, is_pk=True)
    with pytest.raises(SignatureListError, match="got 2"):
        siglist.check_format(sha256_list(b"a", b"b"), is_pk=True)
    # An empty list adds no signature.
    empty = SignatureList(g.EFI_CERT_SHA256, b"", 48, ()).pack()
    siglist.check_format(one + empty, is_pk=True)


# --- filter_append --------------------------------------------------------------------

ALL_TYPES = [*FIXED_TYPES, UNKNOWN_TYPE]


def _entry(sig_type: bytes, tag: int) -> bytes:
    return bytes([tag]) * FIXED_TYPES.get(sig_type, 24)


@pytest.mark.parametrize("sig_type", ALL_TYPES, ids=g.guid_name)
def test_filter_append_drops_duplicates_of_every_type(sig_type: bytes) -> None:
    a, b, c = (_entry(sig_type, t) for t in (1, 2, 3))
    existing = siglist.build(sig_type, OWNER_B, [a, b])
    new = siglist.build(sig_type, OWNER_B, [b, c])
    assert siglist.filter_append(existing, new) == siglist.build(sig_type, OWNER_B, [c])
    assert siglist.filter_append(existing, existing) == b""
    assert siglist.filter_append(existing, siglist.build(sig_type, OWNER_B, [a])) == b""
    assert siglist.filter_append(b"", new) == new


def test_filter_append_x509_from_tools(keys: dict[str, sbkeys.KeyPair]) -> None:
    pk = sbkeys.esl_from_cert(keys["pk"], OWNER)
    kek = sbkeys.esl_from_cert(keys["kek"], OWNER)
    assert siglist.filter_append(pk, pk + kek) == kek
    assert siglist.filter_append(pk + kek, kek + pk) == b""
    # Same certificate, other owner: a different EFI_SIGNATURE_DATA, so it is added.
    other_owner = sbkeys.esl_from_cert(keys["pk"], str(g.guid_str(OTHER_OWNER)))
    assert siglist.filter_append(pk, other_owner) == other_owner


def test_filter_append_compares_owner_and_data() -> None:
    existing = sha256_list(b"x")
    assert siglist.filter_append(existing, sha256_list(b"x", owner=OTHER_OWNER)) != b""


def test_filter_append_needs_same_type_and_size() -> None:
    data = bytes(48)
    existing = siglist.build(g.EFI_CERT_SHA384, OWNER_B, [data])
    other_type = siglist.build(UNKNOWN_TYPE, OWNER_B, [data])
    x509_sha256 = siglist.build(g.EFI_CERT_X509_SHA256, OWNER_B, [data])
    assert siglist.filter_append(existing, other_type) == other_type
    assert siglist.filter_append(existing, x509_sha256) == x509_sha256
    # same type, different SignatureSize (only possible for types we do not validate)
    short = SignatureList(UNKNOWN_TYPE, b"", 32, ((OWNER_B, bytes(16)),)).pack()
    long = SignatureList(UNKNOWN_TYPE, b"", 33, ((OWNER_B, bytes(17)),)).pack()
    assert siglist.filter_append(short, long) == long


def test_filter_append_keeps_unknown_types_untouched() -> None:
    unknown = SignatureList(UNKNOWN_TYPE, b"vendor-header", 20,
                            ((OWNER_B, b"abcd"), (OTHER_OWNER, b"efgh"))).pack()
    existing = sha256_list(b"a")
    assert siglist.filter_append(existing, unknown) == unknown
    assert siglist.filter_append(existing, sha256_list(b"a") + unknown) == unknown


def test_filter_append_keeps_header_and_fixes_list_size() -> None:
    new = SignatureList(UNKNOWN_TYPE, b"HDR", 20, ((OWNER_B, b"aaaa"), (OWNER_B, b"bbbb"),
                                                   (OWNER_B, b"cccc"))).pack()
    existing = SignatureList(UNKNOWN_TYPE, b"", 20, ((OWNER_B, b"bbbb"),)).pack()
    out = siglist.filter_append(existing, new)
    assert siglist.parse(out) == [
        SignatureList(UNKNOWN_TYPE, b"HDR", 20, ((OWNER_B, b"aaaa"), (OWNER_B, b"cccc")))]
    assert struct.unpack_from("<I", out, 16)[0] == len(out) == 28 + 3 + 40


def test_filter_append_drops_empty_lists_keeps_order() -> None:
    empty = SignatureList(g.EFI_CERT_SHA256, b"", 48, ()).pack()
    existing = sha256_list(b"a")
    new = sha256_list(b"a") + empty + sha256_list(b"b") + sha256_list(b"c")
    assert siglist.filter_append(existing, new) == sha256_list(b"b") + sha256_list(b"c")


def test_filter_append_does_not_dedupe_within_new() -> None:
    # EDK2's FilterSignatureList only compares with the stored data.
    new = sha256_list(b"n", b"n")
    assert siglist.filter_append(sha256_list(b"x"), new) == new


def test_filter_append_is_not_quadratic() -> None:
    n = 20000
    existing = siglist.build(g.EFI_CERT_SHA256, OWNER_B,
                             [hashlib.sha256(b"%d" % i).digest() for i in range(n)])
    new = siglist.build(g.EFI_CERT_SHA256, OWNER_B,
                        [hashlib.sha256(b"%d" % i).digest() for i in range(n // 2, n + n // 2)])
    start = time.perf_counter()
    out = siglist.filter_append(existing, new)
    assert time.perf_counter() - start < 5
    assert len(siglist.parse(out)[0].entries) == n // 2


# --- build / describe -----------------------------------------------------------------

def test_build_edge_cases() -> None:
    assert siglist.build(g.EFI_CERT_SHA256, OWNER_B, []) == b""
    assert siglist.build(g.EFI_CERT_X509, OWNER_B, []) == b""
    with pytest.raises(SignatureListError, match="Owner"):
        siglist.build(g.EFI_CERT_SHA256, b"short", [bytes(32)])
    with pytest.raises(SignatureListError, match="share a size"):
        siglist.build(UNKNOWN_TYPE, OWNER_B, [b"a", b"bb"])
    data = siglist.build(UNKNOWN_TYPE, OWNER_B, [b"ab", b"cd"])
    assert siglist.parse(data) == [SignatureList(UNKNOWN_TYPE, b"", 18,
                                                 ((OWNER_B, b"ab"), (OWNER_B, b"cd")))]


def test_describe(keys: dict[str, sbkeys.KeyPair]) -> None:
    kp = keys["kek"]
    cert = x509.load_der_x509_certificate(kp.cert_der)
    revoked = EfiTime(2024, 5, 6, 7, 8, 9)
    x509_hash = hashlib.sha384(cert.tbs_certificate_bytes).digest()
    data = (sbkeys.esl_from_cert(kp, OWNER) + sha256_list(b"x")
            + siglist.build(g.EFI_CERT_X509_SHA384, OTHER_OWNER, [x509_hash + revoked.pack()])
            + SignatureList(UNKNOWN_TYPE, b"\x01", 18, ((OWNER_B, b"\xab\xcd"),)).pack())
    out = siglist.describe(data)
    json.dumps(out)
    assert [d["type"] for d in out] == [
        "EfiCertX509", "EfiCertSha256", "EfiCertX509Sha384", g.guid_str(UNKNOWN_TYPE)]
    (entry,) = out[0]["entries"]
    assert entry == {
        "owner": OWNER,
        "subject": "CN=Test KEK",
        "issuer": "CN=Test Root CA",
        "serial": format(cert.serial_number, "x"),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }
    assert out[1]["entries"] == [{"owner": OWNER, "hash": hashlib.sha256(b"x").hexdigest()}]
    assert out[2]["entries"] == [{"owner": g.guid_str(OTHER_OWNER), "hash": x509_hash.hex(),
                                  "revocation_time": "2024-05-06T07:08:09"}]
    assert out[3]["entries"] == [{"owner": OWNER, "data": "abcd"}]
    assert out[3]["header"] == "01"


def test_describe_bad_certificate_does_not_raise() -> None:
    data = SignatureList(g.EFI_CERT_X509, b"", 20, ((OWNER_B, b"junk"),)).pack()
    (entry,) = siglist.describe(data)[0]["entries"]
    assert "unparseable" in entry["error"]
    assert entry["sha256"] == hashlib.sha256(b"junk").hexdigest()


# --- properties -----------------------------------------------------------------------

@st.composite
def signature_lists(draw: st.DrawFn, sig_type: bytes | None = None) -> SignatureList:
    if sig_type is None:
        sig_type = draw(st.sampled_from([*siglist.KNOWN_DATA_SIZES, UNKNOWN_TYPE])
                        | st.binary(min_size=16, max_size=16))
    size = draw(st.integers(min_value=16, max_value=40))
    header = draw(st.binary(max_size=6))
    owners = st.sampled_from([OWNER_B, OTHER_OWNER]) | st.binary(min_size=16, max_size=16)
    # few distinct data values so duplicates between lists are common
    datas = st.sampled_from([bytes([i]) * (size - 16) for i in range(3)]) | st.binary(
        min_size=size - 16, max_size=size - 16)
    entries = draw(st.lists(st.tuples(owners, datas), max_size=5))
    return SignatureList(sig_type, header, size, tuple(entries))


databases = st.lists(signature_lists(), max_size=4)
same_type_databases = st.lists(signature_lists(UNKNOWN_TYPE), max_size=4)


@given(databases)
def test_parse_pack_roundtrip(lists: list[SignatureList]) -> None:
    data = b"".join(sl.pack() for sl in lists)
    assert siglist.parse(data) == lists
    for sl in lists:
        assert siglist.parse(sl.pack()) == [sl]


@given(databases | same_type_databases, databases | same_type_databases)
def test_filter_append_never_returns_existing_entries(
        old: list[SignatureList], new: list[SignatureList]) -> None:
    existing = b"".join(sl.pack() for sl in old)
    added = b"".join(sl.pack() for sl in new)
    out = siglist.filter_append(existing, added)
    stored = set(entries_of(existing))
    kept = entries_of(out)
    assert not stored & set(kept)
    # everything new that was not stored survives, in order
    assert kept == [e for e in entries_of(added) if e not in stored]
    assert all(sl.entries for sl in siglist.parse(out))
    assert siglist.filter_append(existing, existing) == b""
    assert siglist.filter_append(existing + added, out) == b""


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_parse_random_bytes_only_raises_signature_list_error(data: bytes) -> None:
    try:
        lists = siglist.parse(data)
    except SignatureListError:
        return
    assert b"".join(sl.pack() for sl in lists) == data
