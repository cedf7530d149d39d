"""Variable policy: EDK2 VariablePolicyLib / VarCheckPolicyLib MMI (MdeModulePkg)."""

from __future__ import annotations

import struct

from efird.abi import client as c
from efird.abi import layouts as L
from efird.efi import guid as g
from efird.efi.status import Status
from efird.variables import policy as P

from .conftest import BS_RT, NV_BS, NV_BS_RT, VENDOR, Guest

S = Status
HDR = L.VAR_CHECK_POLICY_COMM_HEADER


def mmi(guest: Guest, command: int, params: bytes = b"", *, sig: int = L.VAR_CHECK_POLICY_COMM_SIG,
        rev: int = 1) -> tuple[Status, bytes]:
    payload = HDR.struct.pack(sig, rev, command, 0) + params
    resp = guest.raw(c.envelope(g.VAR_CHECK_POLICY_MMI, payload))
    (result,) = struct.unpack_from("<Q", resp, 24 + HDR.offsets["Result"])
    return Status(result), resp[24 + HDR.size:]


def register(guest: Guest, policy: P.Policy) -> Status:
    return mmi(guest, 3, policy.pack())[0]


def policy(name: str | None, lock: int = P.TYPE_NO_LOCK, *, min_size: int = 0,
           max_size: int = P.NO_MAX_SIZE, must: int = 0, cant: int = 0, **kw: object) -> P.Policy:
    return P.Policy(VENDOR, name, min_size, max_size, must, cant, lock, **kw)  # type: ignore[arg-type]


def end_of_dxe(guest: Guest) -> None:
    guest.event(g.EVENT_END_OF_DXE)


def test_lock_now_is_enforced_from_end_of_dxe(guest: Guest) -> None:
    """EDK2 ValidateSetVariable (VariablePolicyLib.c): LOCK_NOW is WRITE_PROTECTED, deletes
    included; VarCheckLibSetVariableCheck (VarCheckLib.c) skips every check until EndOfDxe,
    so a policy registered earlier is not enforced before then."""
    guest.set("Locked", b"1")
    assert register(guest, policy("Locked", P.TYPE_LOCK_NOW)) is S.SUCCESS
    assert guest.set("Locked", b"2") is S.SUCCESS  # VarCheck is off until EndOfDxe
    end_of_dxe(guest)
    assert guest.set("Locked", b"3") is S.WRITE_PROTECTED
    assert guest.set("Locked", b"", NV_BS_RT) is S.WRITE_PROTECTED  # locks cover deletes
    assert guest.get("Locked").data == b"2"


def test_size_and_attribute_constraints(guest: Guest) -> None:
    """EDK2 ValidateSetVariable: DataSize outside MinSize..MaxSize, or attributes missing
    AttributesMustHave or holding AttributesCantHave, is INVALID_PARAMETER; a delete skips
    these checks."""
    register(guest, policy("Sized", min_size=2, max_size=4))
    register(guest, policy("Attrs", must=NV_BS_RT, cant=0x20))
    end_of_dxe(guest)
    assert guest.set("Sized", b"1") is S.INVALID_PARAMETER
    assert guest.set("Sized", b"12345") is S.INVALID_PARAMETER
    assert guest.set("Sized", b"123") is S.SUCCESS
    assert guest.set("Sized", b"", NV_BS_RT) is S.SUCCESS  # deletes skip size checks
    assert guest.set("Attrs", b"x", BS_RT) is S.INVALID_PARAMETER
    assert guest.set("Attrs", b"x", NV_BS_RT) is S.SUCCESS


def test_lock_on_create(guest: Guest) -> None:
    """EDK2 ValidateSetVariable LOCK_ON_CREATE: the first write creates the variable; once it
    exists every write is WRITE_PROTECTED."""
    register(guest, policy("Once", P.TYPE_LOCK_ON_CREATE))
    end_of_dxe(guest)
    assert guest.set("Once", b"1") is S.SUCCESS
    assert guest.set("Once", b"2") is S.WRITE_PROTECTED


def test_lock_on_variable_state(guest: Guest) -> None:
    """EDK2 ValidateSetVariable LOCK_ON_VAR_STATE: WRITE_PROTECTED only while the state
    variable holds one byte equal to Value; another value, or a larger variable (its 1-byte
    GetVariable is BUFFER_TOO_SMALL), leaves it unlocked."""
    register(guest, policy("Guarded", P.TYPE_LOCK_ON_VAR_STATE, state_namespace=VENDOR,
                           state_name="Gate", state_value=1))
    end_of_dxe(guest)
    assert guest.set("Guarded", b"1") is S.SUCCESS
    guest.set("Gate", b"\x00")
    assert guest.set("Guarded", b"2") is S.SUCCESS
    guest.set("Gate", b"\x01")
    assert guest.set("Guarded", b"3") is S.WRITE_PROTECTED
    guest.set("Gate", b"\x01\x01")  # not one byte: not locked (EDK2)
    assert guest.set("Guarded", b"4") is S.SUCCESS


def test_wildcards_and_namespace_policies(guest: Guest) -> None:
    """EDK2 EvaluatePolicyMatch / GetBestPolicyMatch: '#' matches one hex digit of either case;
    a name no named policy matches falls to the namespace-wide policy (QEMU 10 uefi-vars never
    matches a namespace-wide policy against a named variable)."""
    register(guest, policy("Boot####", P.TYPE_LOCK_NOW))
    register(guest, policy(None, max_size=1))
    end_of_dxe(guest)
    assert guest.set("Boot00aF", b"x") is S.WRITE_PROTECTED
    assert guest.set("Boot00G1", b"xx") is S.INVALID_PARAMETER  # falls to the namespace policy
    assert guest.set("Other", b"x") is S.SUCCESS
    assert guest.set("Other", b"xy") is S.INVALID_PARAMETER


def test_exact_match_beats_wildcard(guest: Guest) -> None:
    """EDK2 GetBestPolicyMatch: the lowest priority wins, so an exact name (priority 0) beats a
    wildcard (one per '#') whatever the registration order."""
    register(guest, policy("Key####", P.TYPE_LOCK_NOW))
    register(guest, policy("Key0001"))
    end_of_dxe(guest)
    assert guest.set("Key0001", b"x") is S.SUCCESS
    assert guest.set("Key0002", b"x") is S.WRITE_PROTECTED


def test_registration_rules(guest: Guest) -> None:
    """EDK2 RegisterVariablePolicy / IsValidVariablePolicyStructure: an exact duplicate is
    ALREADY_STARTED; a wrong Version or MaxSize 0 is INVALID_PARAMETER, as is an entry longer
    than the buffer (VarCheckPolicyLibMmiHandler). EndOfDxe calls LockVariablePolicy, after
    which REGISTER and LOCK are WRITE_PROTECTED."""
    assert register(guest, policy("Dup")) is S.SUCCESS
    assert register(guest, policy("Dup")) is S.ALREADY_STARTED
    bad = bytearray(policy("Bad").pack())
    struct.pack_into("<I", bad, 0, 0x20000)  # wrong version
    assert mmi(guest, 3, bytes(bad))[0] is S.INVALID_PARAMETER
    assert register(guest, policy("Zero", max_size=0)) is S.INVALID_PARAMETER
    truncated = policy("Trunc").pack()[:-2]
    assert mmi(guest, 3, truncated)[0] is S.INVALID_PARAMETER
    end_of_dxe(guest)  # locks the interface
    assert register(guest, policy("Late")) is S.WRITE_PROTECTED
    assert mmi(guest, 5)[0] is S.WRITE_PROTECTED


def test_disable_is_refused_by_default_and_is_enabled_reports(guest: Guest) -> None:
    """EDK2 DisableVariablePolicy: WRITE_PROTECTED while
    PcdAllowVariablePolicyEnforcementDisable is FALSE (OVMF's value, efird's default);
    IS_ENABLED reports State 1 (VarCheckPolicyLibMmiHandler, IsVariablePolicyEnabled)."""
    assert mmi(guest, 1)[0] is S.WRITE_PROTECTED  # PcdAllowVariablePolicyEnforcementDisable
    status, params = mmi(guest, 2, b"\0")
    assert status is S.SUCCESS and params[0] == 1


def test_bad_header_and_unknown_command(guest: Guest) -> None:
    """EDK2 VarCheckPolicyLibMmiHandler: a wrong Signature or Revision is INVALID_PARAMETER
    in Result; an unknown Command is UNSUPPORTED."""
    assert mmi(guest, 2, b"\0", sig=0x1234)[0] is S.INVALID_PARAMETER
    assert mmi(guest, 2, b"\0", rev=2)[0] is S.INVALID_PARAMETER
    assert mmi(guest, 42)[0] is S.UNSUPPORTED


def test_dump_pages_through_the_table(guest: Guest) -> None:
    """EDK2 VarCheckPolicyLibMmiHandler DUMP: page 0 reports TotalSize and caches the table,
    pages 1..n return it with HasMore, and a page without the cache is TIMEOUT. efird sizes
    pages to the caller's buffer, where EDK2 requires its fixed 16327-byte page."""
    policies = [policy(f"Var{i:03d}") for i in range(40)]
    for p in policies:
        register(guest, p)
    table = b"".join(p.pack() for p in policies)
    cap = 200
    dump = L.VAR_CHECK_POLICY_COMM_DUMP_PARAMS
    status, params = mmi(guest, 4, dump.struct.pack(0, 0, 0, 0) + bytes(cap))
    assert status is S.SUCCESS
    assert dump.struct.unpack_from(params)[1:] == (len(table), 0, 1)
    got, page, more = b"", 1, 1
    while more:
        status, params = mmi(guest, 4, dump.struct.pack(page, 0, 0, 0) + bytes(cap))
        assert status is S.SUCCESS
        _, _total, size, more = dump.struct.unpack_from(params)
        got += params[dump.size : dump.size + size]
        page += 1
    assert got == table
    # without a fresh page 0 the cache is gone
    assert mmi(guest, 4, dump.struct.pack(1, 0, 0, 0) + bytes(cap))[0] is S.TIMEOUT


def test_get_info(guest: Guest) -> None:
    """EDK2 VarCheckPolicyLibMmiHandler GET_INFO / GET_LOCK_VAR_STATE_INFO
    (GetVariablePolicyInfo, GetLockOnVariableStateVariablePolicyInfo): the best-matching entry
    and its name come back; no match, or a policy that is not LOCK_ON_VAR_STATE, is NOT_FOUND.
    efird accepts buffers smaller than EDK2's fixed GET_INFO buffer size."""
    register(guest, policy("Info##", P.TYPE_LOCK_ON_CREATE, max_size=9))
    info = L.VAR_CHECK_POLICY_COMM_GET_INFO_PARAMS
    name = "Info12".encode("utf-16-le") + b"\0\0"
    params = info.struct.pack(VENDOR, len(name), 64, bytes(44)) + name + bytes(64)
    status, out = mmi(guest, 6, params)
    assert status is S.SUCCESS
    _, _, out_size, entry = info.struct.unpack_from(out)
    assert out_size == len("Info##") * 2 + 2
    assert out[info.size + len(name): info.size + len(name) + out_size].decode("utf-16-le") \
        == "Info##\0"
    parsed = L.VARIABLE_POLICY_ENTRY.parse(entry)
    assert parsed.MaxSize == 9 and parsed.LockPolicyType == P.TYPE_LOCK_ON_CREATE
    assert mmi(guest, 7, params)[0] is S.NOT_FOUND  # not a LOCK_ON_VAR_STATE policy
    missing = "Nope".encode("utf-16-le") + b"\0\0"
    assert mmi(guest, 6, info.struct.pack(VENDOR, len(missing), 64, bytes(44)) + missing
               + bytes(64))[0] is S.NOT_FOUND


def test_lock_variable_function(guest: Guest) -> None:
    """EDK2 SmmVariableHandler LOCK_VARIABLE, VariableLockRequestToLock
    (VariableLockRequestToLock.c): registers a LOCK_NOW policy, a repeat is SUCCESS, and after
    EndOfDxe the lock holds and the request is ACCESS_DENIED."""
    # SMM_VARIABLE_FUNCTION_LOCK_VARIABLE: a LOCK_NOW policy, refused after EndOfDxe.
    name = "Lockme".encode("utf-16-le") + b"\0\0"
    req = c.variable_request(8, L.SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME.struct.pack(
        VENDOR, len(name)) + name)
    guest.set("Lockme", b"1", NV_BS)
    assert c.return_status(guest.raw(req)) is S.SUCCESS
    assert c.return_status(guest.raw(req)) is S.SUCCESS  # already locked counts as done
    end_of_dxe(guest)
    assert guest.set("Lockme", b"2", NV_BS) is S.WRITE_PROTECTED
    assert c.return_status(guest.raw(req)) is S.ACCESS_DENIED


def test_policies_do_not_survive_a_platform_reset(guest: Guest) -> None:
    """EDK2 VariablePolicyLib keeps its policy table in memory only (InitVariablePolicyLib on
    every boot), so a platform reset drops every policy."""
    register(guest, policy("Gone", P.TYPE_LOCK_NOW))
    guest.domain.variables.platform_reset()
    end_of_dxe(guest)
    assert guest.set("Gone", b"1") is S.SUCCESS
