"""Authenticated variables and Secure Boot (UEFI 2.10 §8.2.6, §32.3; EDK2
SecurityPkg/Library/AuthVariableLib/AuthService.c), with keys from openssl and .auth
files from efitools' sign-efi-sig-list."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from efird.efi import guid as g
from efird.efi import siglist
from efird.efi.status import Status
from efird.efi.time import EfiTime

from . import sbkeys
from .conftest import BS_RT, VENDOR, Guest, open_domain, reopen

S = Status
GV, DBG = g.EFI_GLOBAL_VARIABLE, g.EFI_IMAGE_SECURITY_DATABASE
AUTH = 0x27  # NV|BS|RT|AT, what sign-efi-sig-list signs
OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
Keys = dict[str, sbkeys.KeyPair]


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = sbkeys.session_dir(tmp_path_factory)
    return {name: sbkeys.make_keypair(d, f"sb-{name}", f"efird test {name}")
            for name in ("pk", "kek", "db", "attacker", "private", "private2")}


def ts(n: int) -> str:
    return f"2026-01-01 00:{n // 60:02d}:{n % 60:02d}"


def esl(kp: sbkeys.KeyPair) -> bytes:
    return sbkeys.esl_from_cert(kp, OWNER)


def write(guest: Guest, name: str, auth: bytes, attrs: int = AUTH) -> Status:
    guid = GV if name in ("PK", "KEK") else DBG
    return guest.set(name, auth, attrs, guid)


def read(guest: Guest, name: str, guid: bytes = GV) -> bytes:
    r = guest.get(name, guid, 1 << 16)
    assert r.status is S.SUCCESS, (name, r.status)
    return r.data


def mode(guest: Guest) -> tuple[int, int, int, int]:
    return tuple(read(guest, n)[0] for n in ("SetupMode", "SecureBoot", "AuditMode",
                                               "DeployedMode"))  # type: ignore[return-value]


def enroll_all(guest: Guest, keys: Keys) -> None:
    assert write(guest, "PK", sbkeys.sign_auth("PK", esl(keys["pk"]), keys["pk"],
                                               timestamp=ts(1))) is S.SUCCESS
    assert write(guest, "KEK", sbkeys.sign_auth("KEK", esl(keys["kek"]), keys["pk"],
                                                timestamp=ts(2))) is S.SUCCESS
    assert write(guest, "db", sbkeys.sign_auth("db", esl(keys["db"]), keys["kek"],
                                               timestamp=ts(3))) is S.SUCCESS


def test_fresh_store_is_in_setup_mode(guest: Guest) -> None:
    """UEFI 2.10 §32.3 and §3.3: with no PK the platform is in setup mode (SetupMode 1,
    SecureBoot 0); EDK2 AuthVariableLibInitialize publishes VendorKeys 1 and SignatureSupport
    (whole GUIDs, X509 among them). AuditMode/DeployedMode follow §32.3; EDK2 removed them."""
    assert mode(guest) == (1, 0, 0, 0)
    assert read(guest, "VendorKeys") == b"\x01"
    support = read(guest, "SignatureSupport")
    assert len(support) % 16 == 0 and g.EFI_CERT_X509 in {
        support[i:i + 16] for i in range(0, len(support), 16)}


def test_enrolment_moves_to_user_mode(guest: Guest, keys: Keys, store_path: Path) -> None:
    """UEFI 2.10 §32.3.1: enrolling a PK moves setup mode to user mode at once (EDK2
    ProcessVarWithPk, UpdatePlatformMode); KEK and db follow (§32.3.5). After a restart the
    mode comes from the persisted PK (EDK2 AuthVariableLibInitialize)."""
    enroll_all(guest, keys)
    assert mode(guest) == (0, 1, 0, 0)
    assert siglist.x509_certificates(read(guest, "PK")) == [keys["pk"].cert_der]
    assert siglist.x509_certificates(read(guest, "db", DBG)) == [keys["db"].cert_der]
    d2 = reopen(guest.domain, store_path)
    assert mode(Guest(d2)) == (0, 1, 0, 0)  # the mode follows the persisted PK
    d2.close()


def test_hierarchy_is_enforced(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.6 step 5: PK and KEK need the current PK's signature, db/dbx chain to KEK
    or PK (EDK2 ProcessVarWithPk, then ProcessVarWithKek; VerifyTimeBasedPayload). VendorKeys
    then reads 0 (§3.3): efird clears it on any signed change in user mode, EDK2 only on its
    custom-mode path (VendorKeyIsModified)."""
    enroll_all(guest, keys)
    attacker = keys["attacker"]
    assert write(guest, "KEK", sbkeys.sign_auth("KEK", esl(attacker), attacker,
                                                timestamp=ts(10))) is S.SECURITY_VIOLATION
    assert write(guest, "KEK", sbkeys.sign_auth("KEK", esl(attacker), keys["kek"],
                                                timestamp=ts(10))) is S.SECURITY_VIOLATION
    assert write(guest, "db", sbkeys.sign_auth("db", esl(attacker), attacker,
                                               timestamp=ts(10))) is S.SECURITY_VIOLATION
    assert write(guest, "PK", sbkeys.sign_auth("PK", esl(attacker), attacker,
                                               timestamp=ts(10))) is S.SECURITY_VIOLATION
    # PK may sign db too (ProcessVarWithPk is tried first)
    assert write(guest, "dbx", sbkeys.sign_auth("dbx", esl(attacker), keys["pk"],
                                                timestamp=ts(11))) is S.SUCCESS
    assert write(guest, "db", sbkeys.sign_auth("db", esl(attacker), keys["kek"],
                                               timestamp=ts(12))) is S.SUCCESS
    assert read(guest, "VendorKeys") == b"\x00"  # keys changed after enrolment


def test_db_without_kek_is_not_found(guest: Guest, keys: Keys) -> None:
    """EDK2 AuthVariableLibProcessVariable: db signed by neither PK nor the absent KEK is
    NOT_FOUND, the status of ProcessVarWithKek's KEK lookup. UEFI 2.10 §8.2.6 would give
    SECURITY_VIOLATION; efird keeps EDK2's status deliberately."""
    write(guest, "PK", sbkeys.sign_auth("PK", esl(keys["pk"]), keys["pk"], timestamp=ts(1)))
    assert write(guest, "db", sbkeys.sign_auth("db", esl(keys["db"]), keys["kek"],
                                               timestamp=ts(2))) is S.NOT_FOUND


def test_replay_and_older_timestamps_are_refused(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.6 firmware step 2: without APPEND the TimeStamp must be later than the
    stored one; EDK2 VerifyTimeBasedPayload (AuthServiceInternalCompareTimeStamp) refuses an
    equal or older one with SECURITY_VIOLATION."""
    enroll_all(guest, keys)
    again = sbkeys.sign_auth("db", esl(keys["db"]), keys["kek"], timestamp=ts(3))
    assert write(guest, "db", again) is S.SECURITY_VIOLATION  # equal timestamp = replay
    older = sbkeys.sign_auth("db", esl(keys["db"]), keys["kek"], timestamp=ts(0))
    assert write(guest, "db", older) is S.SECURITY_VIOLATION
    newer = sbkeys.sign_auth("db", esl(keys["db"]), keys["kek"], timestamp=ts(30))
    assert write(guest, "db", newer) is S.SUCCESS


def test_tampering_is_detected(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.6: the signature covers VariableName, VendorGuid, Attributes, TimeStamp
    and the new data, so changing any of them is SECURITY_VIOLATION (EDK2
    VerifyTimeBasedPayload, Pkcs7Verify)."""
    enroll_all(guest, keys)
    good = bytearray(sbkeys.sign_auth("db", esl(keys["attacker"]), keys["kek"],
                                      timestamp=ts(20)))
    flipped = bytearray(good)
    flipped[-40] ^= 1  # inside the certificate being added
    assert write(guest, "db", bytes(flipped)) is S.SECURITY_VIOLATION
    # the same signed update presented as another variable
    assert write(guest, "dbx", bytes(good)) is S.SECURITY_VIOLATION
    # ... or with other attributes than were signed
    assert write(guest, "db", bytes(good), AUTH | 0x40) is S.SECURITY_VIOLATION
    later = bytearray(good)
    later[6] += 1  # TimeStamp seconds: no longer what was signed
    assert write(guest, "db", bytes(later)) is S.SECURITY_VIOLATION
    assert write(guest, "db", bytes(good)) is S.SUCCESS


def test_malformed_signatures_are_security_violations(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.6 firmware steps 1-2: CertData must parse as PKCS#7 SignedData and the
    TimeStamp's Pad1, Nanosecond, TimeZone, Daylight and Pad2 must be 0. EDK2
    VariableServiceSetVariable (AUTH_2 size checks) and VerifyTimeBasedPayload: all
    SECURITY_VIOLATION."""
    enroll_all(guest, keys)
    good = sbkeys.sign_auth("db", esl(keys["attacker"]), keys["kek"], timestamp=ts(40))
    parts = sbkeys.split_auth(good)
    cases = {
        "empty certificate": sbkeys.build_auth(parts.timestamp, b"", parts.payload),
        "truncated DER": sbkeys.build_auth(parts.timestamp, parts.pkcs7[:100], parts.payload),
        "garbage": sbkeys.build_auth(parts.timestamp, b"\x30\x82\xff\xff" + b"\x00" * 64,
                                     parts.payload),
        "dwLength past the end": good[:16] + struct.pack("<I", len(good)) + good[20:],
        "too short for the header": good[:39],
    }
    for label, data in cases.items():
        assert write(guest, "db", data) is S.SECURITY_VIOLATION, label
    nonzero_tz = bytearray(good)
    struct.pack_into("<h", nonzero_tz, 12, 60)
    assert write(guest, "db", bytes(nonzero_tz)) is S.SECURITY_VIOLATION
    assert write(guest, "db", good) is S.SUCCESS  # and the service carries on


def test_content_info_wrapped_and_signed_attributes_verify(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.6: SignedData is accepted with and without a ContentInfo wrapper (EDK2
    VerifyTimeBasedPayload, Pkcs7Verify). Signed attributes verify too, as with EDK2's
    Pkcs7Verify, although §8.2.6 says callers shall leave them out."""
    enroll_all(guest, keys)
    payload = esl(keys["attacker"])
    for n, (wrap, attrs) in enumerate([(True, False), (False, True), (True, True)]):
        auth = sbkeys.sign_auth_raw("db", DBG, AUTH, payload, EfiTime(2026, 2, 1, 0, 0, n,
                                                                       timezone=0),
                                    keys["kek"], wrap_content_info=wrap, signed_attributes=attrs)
        assert write(guest, "db", auth) is S.SUCCESS, (wrap, attrs)


def test_sha1_digest_is_refused(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.6 (SHA-256, SHA-384, SHA-512 digests); EDK2 VerifyTimeBasedPayload
    refuses SHA-1 with SECURITY_VIOLATION. efird deliberately accepts SHA-256 only, narrower
    than both."""
    enroll_all(guest, keys)
    auth = sbkeys.sign_auth_raw("db", DBG, AUTH, esl(keys["attacker"]),
                                EfiTime(2026, 3, 1, timezone=0), keys["kek"],
                                wrap_content_info=False, md="sha1")
    assert write(guest, "db", auth) is S.SECURITY_VIOLATION


def test_append_deduplicates_every_signature_type(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.6: an APPEND to a signature database skips EFI_SIGNATURE_DATA already
    present, is no error and skips the timestamp check; EDK2 FilterSignatureList compares
    whole entries of every type (QEMU 10 uefi-vars drops SHA384 and X509_SHA256 lists). A
    repeated or empty APPEND leaves the value unchanged."""
    enroll_all(guest, keys)
    h256 = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    h384 = hashlib.sha384(b"x").digest()
    x509_sha256 = hashlib.sha256(b"tbs").digest() + bytes(16)
    first = (sbkeys.esl_from_hashes(OWNER, h256[:2])
             + siglist.build(g.EFI_CERT_SHA384, g.guid_bytes(OWNER), [h384]))
    assert write(guest, "dbx", sbkeys.sign_auth("dbx", first, keys["kek"], timestamp=ts(50))
                 ) is S.SUCCESS
    second = (sbkeys.esl_from_hashes(OWNER, h256[1:])  # one old, one new
              + siglist.build(g.EFI_CERT_SHA384, g.guid_bytes(OWNER), [h384])  # all old
              + siglist.build(g.EFI_CERT_X509_SHA256, g.guid_bytes(OWNER), [x509_sha256]))
    assert write(guest, "dbx", sbkeys.sign_auth("dbx", second, keys["kek"], timestamp=ts(49),
                                                append=True), AUTH | 0x40) is S.SUCCESS
    lists = siglist.parse(read(guest, "dbx", DBG))
    entries = [(sl.sig_type, data) for sl in lists for _owner, data in sl.entries]
    assert sorted(entries) == sorted(
        [(g.EFI_CERT_SHA256, h) for h in h256] + [(g.EFI_CERT_SHA384, h384),
                                                  (g.EFI_CERT_X509_SHA256, x509_sha256)])
    # appending the same again adds nothing; an empty append changes nothing
    before = read(guest, "dbx", DBG)
    assert write(guest, "dbx", sbkeys.sign_auth("dbx", second, keys["kek"], timestamp=ts(51),
                                                append=True), AUTH | 0x40) is S.SUCCESS
    assert write(guest, "dbx", sbkeys.sign_auth("dbx", b"", keys["kek"], timestamp=ts(52),
                                                append=True), AUTH | 0x40) is S.SUCCESS
    assert read(guest, "dbx", DBG) == before


def test_key_variables_need_authenticated_writes(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §8.2.3: Secure Boot policy variables need TIME_BASED_AUTHENTICATED_WRITE_ACCESS,
    else INVALID_PARAMETER. EDK2 VariableServiceSetVariable (attributes differ) and
    ProcessVarWithPk (not NV|AT, even Attributes 0) give INVALID_PARAMETER; for the unsigned
    delete §8.2.3 says SECURITY_VIOLATION, and efird follows EDK2."""
    enroll_all(guest, keys)
    assert guest.set("db", b"junk", 0x07, DBG) is S.INVALID_PARAMETER  # attributes differ
    assert guest.set("db", b"", 0, DBG) is S.INVALID_PARAMETER  # not NV|AT (ProcessVarWithPk)
    assert guest.set("PK", b"", 0x07, GV) is S.INVALID_PARAMETER
    assert read(guest, "db", DBG)


def test_malformed_signature_list_is_invalid_parameter(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §32.4.1 Signature Database and §32.3.1 (a PK has exactly one entry); EDK2
    CheckSignatureListFormat: a truncated list, or a PK with two certificates, is
    INVALID_PARAMETER although the signature is valid."""
    write(guest, "PK", sbkeys.sign_auth("PK", esl(keys["pk"]), keys["pk"], timestamp=ts(1)))
    bad = esl(keys["kek"])[:-1]
    assert write(guest, "KEK", sbkeys.sign_auth("KEK", bad, keys["pk"], timestamp=ts(2))
                 ) is S.INVALID_PARAMETER
    two = esl(keys["pk"]) + esl(keys["kek"])
    assert write(guest, "PK", sbkeys.sign_auth("PK", two, keys["pk"], timestamp=ts(3))
                 ) is S.INVALID_PARAMETER  # a PK holds one certificate


def test_signed_pk_delete_returns_to_setup_mode(guest: Guest, keys: Keys) -> None:
    """UEFI 2.10 §32.3.2 Clearing The Platform Key: a delete signed by the current PK clears it
    and SetupMode becomes 1 (EDK2 ProcessVarWithPk, UpdatePlatformMode); KEK and db stay, and
    in setup mode need no signature from the hierarchy (§32.3, §8.2.6 firmware step 3)."""
    enroll_all(guest, keys)
    assert write(guest, "PK", sbkeys.sign_auth("PK", b"", keys["attacker"], timestamp=ts(60))
                 ) is S.SECURITY_VIOLATION
    assert write(guest, "PK", sbkeys.sign_auth("PK", b"", keys["pk"], timestamp=ts(60))
                 ) is S.SUCCESS
    assert mode(guest) == (1, 0, 0, 0)
    assert guest.get("KEK", GV).status is S.SUCCESS  # KEK and db stay
    # in setup mode KEK and db are writable without a signature from the hierarchy
    assert write(guest, "KEK", sbkeys.sign_auth("KEK", esl(keys["attacker"]),
                                                keys["attacker"], timestamp=ts(1))) is S.SUCCESS


def test_setup_mode_pk_policy(tmp_path: Path, keys: Keys) -> None:
    """UEFI 2.10 §32.3.1: in setup mode the new PK may be signed by its own key; EDK2
    PcdRequireSelfSignedPk decides whether it must be (FALSE in OVMF and efird: any signer;
    TRUE: ProcessVarWithPk verifies against the certificate in the payload)."""
    other_signed = sbkeys.sign_auth("PK", esl(keys["pk"]), keys["attacker"], timestamp=ts(1))
    self_signed = sbkeys.sign_auth("PK", esl(keys["pk"]), keys["pk"], timestamp=ts(1))
    lax = open_domain(tmp_path / "lax")  # OVMF's default: PcdRequireSelfSignedPk = FALSE
    assert write(Guest(lax), "PK", other_signed) is S.SUCCESS
    lax.close()
    strict = open_domain(tmp_path / "strict", require_self_signed_pk=True)
    assert write(Guest(strict), "PK", other_signed) is S.SECURITY_VIOLATION
    assert write(Guest(strict), "PK", self_signed) is S.SUCCESS
    strict.close()


def test_firmware_owned_variables_are_read_only(guest: Guest) -> None:
    """UEFI 2.10 §3.3: SecureBoot, SetupMode, SignatureSupport and VendorKeys are read-only.
    EDK2 enforces that only from EndOfDxe (VarCheckLib read-only properties); efird
    deliberately answers WRITE_PROTECTED to writes and deletes in every phase."""
    for name in ("SecureBoot", "SetupMode", "SignatureSupport", "VendorKeys"):
        assert guest.set(name, b"\x00", BS_RT, GV) is S.WRITE_PROTECTED, name
        assert guest.set(name, b"", 0, GV) is S.WRITE_PROTECTED, name


def test_audit_and_deployed_mode_transitions(guest: Guest, keys: Keys, store_path: Path) -> None:
    """UEFI 2.10 §32.3.3 (AuditMode=1 enters Audit Mode) and §32.3.4 (a PK enrolled in Audit
    Mode enters Deployed Mode; AuditMode and DeployedMode become read-only), persisted across a
    restart, and a signed PK delete leaving Deployed Mode for Setup Mode. No EDK2
    counterpart (removed there)."""
    # Setup -> Audit by writing AuditMode=1 (UEFI 2.10 §32.3.3)
    assert guest.set("AuditMode", b"\x02", BS_RT, GV) is S.INVALID_PARAMETER
    assert guest.set("AuditMode", b"\x01", BS_RT, GV) is S.SUCCESS
    assert mode(guest) == (1, 0, 1, 0)
    assert guest.set("AuditMode", b"\x00", BS_RT, GV) is S.WRITE_PROTECTED
    # Audit -> Deployed by enrolling a PK
    write(guest, "PK", sbkeys.sign_auth("PK", esl(keys["pk"]), keys["pk"], timestamp=ts(1)))
    assert mode(guest) == (0, 1, 0, 1)
    assert guest.set("DeployedMode", b"\x00", BS_RT, GV) is S.WRITE_PROTECTED
    assert guest.set("AuditMode", b"\x01", BS_RT, GV) is S.WRITE_PROTECTED
    d2 = reopen(guest.domain, store_path)
    g2 = Guest(d2)
    assert mode(g2) == (0, 1, 0, 1)  # persisted
    # UEFI 2.10 §32.3.4: a signed PK delete leaves Deployed Mode for Setup Mode
    assert write(g2, "PK", sbkeys.sign_auth("PK", b"", keys["pk"], timestamp=ts(5))
                 ) is S.SUCCESS
    assert mode(g2) == (1, 0, 0, 0)
    d2.close()


def test_user_mode_to_deployed_and_to_audit(tmp_path: Path, keys: Keys) -> None:
    """UEFI 2.10 §32.3.4: DeployedMode=1 moves user mode to Deployed Mode; §32.3.3: AuditMode=1
    in user mode clears the PK and enters Audit Mode (SetupMode 1). No EDK2 counterpart."""
    d = open_domain(tmp_path / "a")
    guest = Guest(d)
    write(guest, "PK", sbkeys.sign_auth("PK", esl(keys["pk"]), keys["pk"], timestamp=ts(1)))
    assert guest.set("DeployedMode", b"\x01", BS_RT, GV) is S.SUCCESS
    assert mode(guest) == (0, 1, 0, 1)
    d.close()
    d = open_domain(tmp_path / "b")
    guest = Guest(d)
    write(guest, "PK", sbkeys.sign_auth("PK", esl(keys["pk"]), keys["pk"], timestamp=ts(1)))
    assert guest.set("AuditMode", b"\x01", BS_RT, GV) is S.SUCCESS  # User -> Audit clears PK
    assert mode(guest) == (1, 0, 1, 0)
    assert guest.get("PK", GV).status is S.NOT_FOUND
    d.close()


def test_mode_switches_are_boot_time_only(guest: Guest) -> None:
    """UEFI 2.10 §32.3.3: AuditMode is writable only before ExitBootServices, so a runtime
    write is WRITE_PROTECTED. No EDK2 counterpart."""
    guest.exit_boot_services()
    assert guest.set("AuditMode", b"\x01", BS_RT, GV) is S.WRITE_PROTECTED


def private(guest: Guest, kp: sbkeys.KeyPair, payload: bytes, second: int,
            attrs: int = AUTH) -> Status:
    auth = sbkeys.sign_auth_raw("Private", VENDOR, attrs, payload,
                                EfiTime(2026, 4, 1, 0, 0, second, timezone=0), kp,
                                wrap_content_info=False)
    return guest.set("Private", auth, attrs)


def test_private_authenticated_variables_belong_to_their_creator(guest: Guest,
                                                                 keys: Keys) -> None:
    """UEFI 2.10 §8.2.6 step 5: a private authenticated variable is bound to its creator
    (EDK2 ProcessVariable, VerifyTimeBasedPayload with AuthVarTypePriv and the CertDB): another
    signer or an old timestamp is SECURITY_VIOLATION, APPEND skips the timestamp check, a plain
    write is INVALID_PARAMETER, an unsigned Attributes-0 delete is WRITE_PROTECTED, and a
    signed empty payload deletes."""
    assert private(guest, keys["private"], b"v1", 1) is S.SUCCESS
    assert guest.get("Private").data == b"v1"
    assert private(guest, keys["private2"], b"evil", 2) is S.SECURITY_VIOLATION
    assert private(guest, keys["private"], b"old", 1) is S.SECURITY_VIOLATION  # replay
    assert private(guest, keys["private"], b"v2", 3) is S.SUCCESS
    assert private(guest, keys["private"], b"+", 2, AUTH | 0x40) is S.SUCCESS  # append
    assert guest.get("Private").data == b"v2+"
    assert guest.set("Private", b"plain", 0x07) is S.INVALID_PARAMETER
    assert guest.set("Private", b"", 0) is S.WRITE_PROTECTED  # no unsigned delete
    assert private(guest, keys["private"], b"", 4) is S.SUCCESS  # signed delete
    assert guest.get("Private").status is S.NOT_FOUND


def test_security_violations_become_toolstack_events(guest: Guest, keys: Keys) -> None:
    """The lifecycle issue's event stream reports Secure Boot violations (name, GUID)."""
    events: list[tuple[str, dict[str, object]]] = []
    guest.domain.listeners.append(lambda kind, data: events.append((kind, data)))
    enroll_all(guest, keys)
    attacker = keys["attacker"]
    assert write(guest, "db", sbkeys.sign_auth("db", esl(attacker), attacker,
                                               timestamp=ts(10))) is S.SECURITY_VIOLATION
    assert events == [("secure-boot-violation",
                       {"name": "db", "guid": "d719b2cb-3d3a-4596-a3bc-dad00e67656f"})]
