"""GetNextVariableName (UEFI 2.10 §8.2.2, EDK2 VariableServiceGetNextVariableName) and the
SMM buffer rules (EDK2 SmmVariableHandler, with efird's BAD_BUFFER_SIZE where EDK2 is
silent)."""

from __future__ import annotations

import struct

import pytest

from efird.abi import client as c
from efird.abi import layouts as L
from efird.efi import guid as g
from efird.efi.status import Status
from efird.envelope import Refusal

from .conftest import BS_RT, NV_BS, NV_BS_RT, VENDOR, Guest

S = Status
FIRMWARE_VARS = {"SecureBoot", "SetupMode", "AuditMode", "DeployedMode", "SignatureSupport",
                 "VendorKeys"}


def test_enumeration_lists_every_variable_once(guest: Guest) -> None:
    """UEFI 2.10 §8.2.2 GetNextVariableName(); EDK2 VariableServiceGetNextVariableName: the
    walk returns every variable (volatile, NV and firmware-owned) exactly once, then NOT_FOUND."""
    for i in range(20):
        guest.set(f"V{i:02d}", b"x", NV_BS_RT if i % 2 else BS_RT)
    names = guest.names()
    assert len(names) == len(set(names))
    assert {n for gu, n in names if gu == VENDOR} == {f"V{i:02d}" for i in range(20)}
    assert {n for gu, n in names if gu == g.EFI_GLOBAL_VARIABLE} >= FIRMWARE_VARS


def test_enumeration_is_stable_across_updates(guest: Guest) -> None:
    """UEFI 2.10 §8.2.2 GetNextVariableName() (a SetVariable between calls may give
    unpredictable results). efird walks in key order, so an update never moves a variable: a
    deliberate difference from EDK2, whose UpdateVariable rewrites it at the end of its store."""
    for n in ("A", "B", "C"):
        guest.set(n, b"1")
    before = guest.names()
    guest.set("B", b"changed")
    assert guest.names() == before


def test_get_next_buffer_too_small_reports_size(guest: Guest) -> None:
    """UEFI 2.10 §8.2.2 GetNextVariableName(); EDK2 VariableServiceGetNextVariableName: a
    VariableNameSize too small for the next name is BUFFER_TOO_SMALL with the size needed."""
    guest.set("LongerName", b"x")
    status, _, _, size = guest.next("V", size=4) if False else guest.next("", size=2)
    assert status is S.BUFFER_TOO_SMALL
    assert size >= 4


def test_get_next_unknown_start_is_invalid_parameter(guest: Guest) -> None:
    """UEFI 2.10 §8.2.2 GetNextVariableName(): a name/GUID that is not an existing variable,
    a real name under another GUID included, is INVALID_PARAMETER (EDK2
    VariableServiceGetNextVariableInternal)."""
    assert guest.next("NoSuchVariable")[0] is S.INVALID_PARAMETER
    guest.set("Real", b"x")
    assert guest.next("Real", guid=g.EFI_GLOBAL_VARIABLE)[0] is S.INVALID_PARAMETER


def test_get_next_empty_name_ignores_guid(guest: Guest) -> None:
    """UEFI 2.10 §8.2.2 GetNextVariableName(): an empty name starts the walk and VendorGuid is
    then ignored (EDK2 VariableServiceGetNextVariableInternal)."""
    status, _first_guid, first_name, _ = guest.next("", guid=b"\xaa" * 16)
    assert status is S.SUCCESS and first_name


def test_get_next_needs_nul_within_name_size(guest: Guest) -> None:
    """UEFI 2.10 §8.2.2 GetNextVariableName(): no NUL in the first VariableNameSize bytes (or
    NameSize 0) is INVALID_PARAMETER (EDK2 VariableServiceGetNextVariableName). EDK2
    SmmVariableHandler checks only the end of the whole name buffer, which passes here."""
    guest.set("Abc", b"x")
    # NameSize 4 covers "Ab" only: no NUL within it -> INVALID_PARAMETER.
    req = bytearray(c.get_next_variable_name(VENDOR, "Abc", 8))
    struct.pack_into("<Q", req, c.VAR_DATA + 16, 4)
    assert c.return_status(guest.raw(bytes(req))) is S.INVALID_PARAMETER
    struct.pack_into("<Q", req, c.VAR_DATA + 16, 0)
    assert c.return_status(guest.raw(bytes(req))) is S.INVALID_PARAMETER


def test_runtime_enumeration_hides_boot_service_variables(guest: Guest) -> None:
    """UEFI 2.10 §8.2.2 GetNextVariableName(): after ExitBootServices boot-service-only
    variables are not returned, and EDK2 (FindVariableEx) refuses one as a starting point
    with INVALID_PARAMETER."""
    guest.set("BsOnly", b"1", NV_BS)
    guest.set("Rt", b"1", NV_BS_RT)
    guest.exit_boot_services()
    names = [n for gu, n in guest.names() if gu == VENDOR]
    assert names == ["Rt"]
    assert guest.next("BsOnly")[0] is S.INVALID_PARAMETER


# --- envelope and SMM buffer rules -------------------------------------------------------
def test_refusals_carry_no_status(guest: Guest) -> None:
    """efird PROTOCOL.md §1, after EDK2 SmmVariableHandler's pre-checks (VariableSmm.c): a
    buffer shorter than the MM header, a MessageLength past its end, an unknown HeaderGuid or a
    payload shorter than SMM_VARIABLE_COMMUNICATE_HEADER is refused by the transport, with no
    status written (EDK2 returns without writing ReturnStatus)."""
    d = guest.domain.dispatcher
    with pytest.raises(Refusal) as short:
        d.dispatch(b"\0" * 23)
    assert short.value.status is S.BAD_BUFFER_SIZE
    with pytest.raises(Refusal):  # MessageLength past the end of the buffer
        d.dispatch(c.envelope(g.SMM_VARIABLE_PROTOCOL, bytes(16))[:-1])
    with pytest.raises(Refusal) as unknown:
        d.dispatch(c.envelope(b"\x42" * 16, bytes(16)))
    assert unknown.value.status is S.NOT_FOUND
    with pytest.raises(Refusal):  # too short for SMM_VARIABLE_COMMUNICATE_HEADER
        d.dispatch(c.envelope(g.SMM_VARIABLE_PROTOCOL, bytes(15)))


def test_buffer_larger_than_message_is_fine(guest: Guest) -> None:
    """efird PROTOCOL.md §1, as EDK2 MM communicate (SmmVariableHandler sees only
    MessageLength bytes): bytes past MessageLength are neither read nor written."""
    req = c.get_variable(g.EFI_GLOBAL_VARIABLE, "SetupMode", 1) + b"\xee" * 8
    resp = guest.raw(req)
    assert c.parse_get_variable(resp).status is S.SUCCESS
    assert resp[-8:] == b"\xee" * 8  # bytes past MessageLength are left alone


@pytest.mark.parametrize("function", [7, 9, 10, 12, 13, 14, 99, 2**64 - 1])
def test_unsupported_functions(guest: Guest, function: int) -> None:
    """EDK2 SmmVariableHandler: an unknown Function is UNSUPPORTED in ReturnStatus. efird also
    answers UNSUPPORTED for GET_STATISTICS (7), the VarCheck property calls (9, 10) and the
    runtime-cache calls (12-14), which EDK2 implements: a deliberate difference."""
    assert c.return_status(guest.raw(c.variable_request(function, bytes(64)))) is S.UNSUPPORTED


def test_short_function_data_is_bad_buffer_size(guest: Guest) -> None:
    """EDK2 SmmVariableHandler returns without writing ReturnStatus when a function's data is
    too short; efird deliberately writes EFI_BAD_BUFFER_SIZE (PROTOCOL.md §3). QUERY needs 28
    bytes, the packed size QEMU sends, where EDK2 wants its sizeof, 32."""
    for fn, size in ((1, 35), (2, 23), (3, 35), (4, 27), (11, 7)):
        resp = guest.raw(c.variable_request(fn, bytes(size)))
        assert c.return_status(resp) is S.BAD_BUFFER_SIZE, fn


def _access(name_raw: bytes, name_size: int, data_size: int, data: bytes = b"") -> bytes:
    return c.variable_request(3, L.SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE.struct.pack(
        VENDOR, data_size, name_size, NV_BS_RT) + name_raw + data)


def test_name_and_size_validation_is_access_denied(guest: Guest) -> None:
    """EDK2 SmmVariableHandler (SET_VARIABLE): NameSize + DataSize overflowing or past the
    payload, and a name whose last CHAR16 is not NUL, are ACCESS_DENIED; efird also refuses an
    odd NameSize. QEMU 10 uefi-vars accepts some NUL-less names."""
    # EDK2 SmmVariableHandler: sizes past the buffer and names without their NUL.
    cases = [
        _access(b"A\0\0\0", 2**63, 2**63),  # NameSize + DataSize overflow a u64
        _access(b"A\0\0\0", 4, 100, b"x"),  # DataSize past the buffer
        _access(b"A\0B\0", 4, 1, b"x"),  # not NUL-terminated (QEMU 10 accepts this)
        _access(b"A\0\0", 3, 1, b"x"),  # odd NameSize
        _access(b"", 0, 1, b"x"),  # no name at all
    ]
    for req in cases:
        assert c.return_status(guest.raw(req)) is S.ACCESS_DENIED
    assert guest.names() == [n for n in guest.names()]  # still serving
    assert guest.get("A").status is S.NOT_FOUND


def test_get_payload_size(guest: Guest) -> None:
    """EDK2 SmmVariableHandler GET_PAYLOAD_SIZE (mVariableBufferPayloadSize): the payload fits
    a variable of the maximum size; 33732 is OVMF's 4 MiB name + data limit (0x8400 - 60)."""
    resp = guest.raw(c.variable_request(11, bytes(8)))
    assert c.return_status(resp) is S.SUCCESS
    (size,) = struct.unpack_from("<Q", resp, c.VAR_DATA)
    assert size == guest.domain.variables.limits.payload_size
    # A variable of the maximum size fits in a request of that payload size.
    assert size >= L.SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE.size + 33732


def test_ready_to_boot_after_exit_boot_services_is_unsupported(guest: Guest) -> None:
    """EDK2 SmmVariableHandler: READY_TO_BOOT is SUCCESS at boot time and UNSUPPORTED once
    EXIT_BOOT_SERVICE has set mAtRuntime."""
    assert c.return_status(guest.raw(c.variable_request(5))) is S.SUCCESS
    assert c.return_status(guest.raw(c.variable_request(6))) is S.SUCCESS
    assert c.return_status(guest.raw(c.variable_request(5))) is S.UNSUPPORTED


def test_unknown_functions_of_efirds_services_answer_unsupported(guest: Guest) -> None:
    """protocols/PROTOCOL.md §5: a function number a service does not define."""
    for guid in (g.EFIRD_TIME_SERVICE, g.EFIRD_RESET_SERVICE, g.EFIRD_BOOTMEM_SERVICE,
                 g.EFIRD_KEXEC_SERVICE):
        resp = guest.raw(c.envelope(guid, struct.pack("<QQ", 99, 0)))
        assert struct.unpack_from("<Q", resp, 32)[0] == S.UNSUPPORTED


def test_phase_events_return_the_envelope_unchanged(guest: Guest) -> None:
    """efird PROTOCOL.md §2: a phase-event GUID (as QEMU uefi-vars takes EndOfDxe, ReadyToBoot
    and ExitBootServices at the transport) returns the buffer unchanged; ExitBootServices
    enters runtime, like EDK2 SmmVariableHandler EXIT_BOOT_SERVICE."""
    req = c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b"abc")
    assert guest.raw(req) == req
    assert guest.domain.variables.phase.at_runtime


def test_non_ascii_names_round_trip(guest: Guest) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): VariableName is a NUL-terminated CHAR16 string; EDK2
    compares names as raw CHAR16 and accepts lone surrogates, so any UCS-2 name round-trips
    (QEMU 10 uefi-vars refuses surrogates)."""
    for name in ("Größe", "变量", "emoji\ud83d\ude00", "lone\udc00"):
        assert guest.set(name, b"v") is S.SUCCESS
        assert guest.get(name).data == b"v"
    assert {n for gu, n in guest.names() if gu == VENDOR} == {
        "Größe", "变量", "emoji\ud83d\ude00", "lone\udc00"}
