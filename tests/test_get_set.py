"""GetVariable / SetVariable / QueryVariableInfo conformance (UEFI 2.10 §8.2, EDK2
MdeModulePkg/Universal/Variable/RuntimeDxe/Variable.c as tie-breaker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from efird.efi import guid as g
from efird.efi.status import Status
from efird.variables.limits import VARIABLE_HEADER_SIZE, Limits

from .conftest import BS, BS_RT, NV_BS, NV_BS_RT, VENDOR, Guest, open_domain, reopen

S = Status


# --- GetVariable: §8.2.1, VariableServiceGetVariable -------------------------------------
def test_get_returns_data_and_attributes(guest: Guest) -> None:
    """UEFI 2.10 §8.2.1 GetVariable(); EDK2 VariableServiceGetVariable (Variable.c): SUCCESS
    returns the data, its size and the stored attributes."""
    assert guest.set("Var", b"hello") is S.SUCCESS
    r = guest.get("Var")
    assert (r.status, r.attributes, r.data_size, r.data) == (S.SUCCESS, NV_BS_RT, 5, b"hello")


def test_get_buffer_too_small_reports_size_and_attributes(guest: Guest) -> None:
    """UEFI 2.10 §8.2.1 GetVariable(); EDK2 VariableServiceGetVariable: a short buffer (size 0
    too) is BUFFER_TOO_SMALL with DataSize set to the size needed and Attributes still written
    (EDK2 SmmVariableHandler copies both back)."""
    # EDK2 writes DataSize and Attributes on BUFFER_TOO_SMALL too.
    guest.set("Var", b"hello", BS_RT)
    r = guest.get("Var", size=4)
    assert (r.status, r.data_size, r.attributes) == (S.BUFFER_TOO_SMALL, 5, BS_RT)
    assert guest.get("Var", size=0).status is S.BUFFER_TOO_SMALL


def test_get_missing_and_empty_name(guest: Guest) -> None:
    """UEFI 2.10 §8.2.1 GetVariable(); EDK2 VariableServiceGetVariable: an unknown name, an
    empty name (checked before any lookup) and a real name under another GUID are NOT_FOUND."""
    assert guest.get("Missing").status is S.NOT_FOUND
    assert guest.get("").status is S.NOT_FOUND  # EDK2: empty name is NOT_FOUND
    guest.set("Var", b"x")
    assert guest.get("Var", guid=g.EFI_GLOBAL_VARIABLE).status is S.NOT_FOUND


def test_boot_service_variables_vanish_after_exit_boot_services(guest: Guest) -> None:
    """UEFI 2.10 §8.2.1 GetVariable(); EDK2 FindVariableEx: after ExitBootServices a variable
    without RUNTIME_ACCESS is NOT_FOUND."""
    # §8.2: variables without RUNTIME_ACCESS are not visible at runtime (FindVariableEx).
    guest.set("BsOnly", b"1", NV_BS)
    guest.set("Rt", b"2", NV_BS_RT)
    guest.exit_boot_services()
    assert guest.get("BsOnly").status is S.NOT_FOUND
    assert guest.get("Rt").data == b"2"


# --- SetVariable attribute checks: VariableServiceSetVariable, in EDK2's order -----------
@pytest.mark.parametrize(("attrs", "expected"), [
    (0x80 | NV_BS_RT, S.INVALID_PARAMETER),  # ENHANCED_AUTH is outside EDK2's mask
    (0x100 | NV_BS_RT, S.INVALID_PARAMETER),  # reserved bit
    (0x04, S.INVALID_PARAMETER),  # RT without BS
    (0x05, S.INVALID_PARAMETER),
    (0x14, S.UNSUPPORTED),  # RT without BS, with AW
    (0x01, S.INVALID_PARAMETER),  # NV alone
    (0x11, S.UNSUPPORTED),  # NV alone, with AW
    (0x17, S.UNSUPPORTED),  # counter-based authenticated write
    (0x37, S.UNSUPPORTED),  # AW and AT together
    (0x0E, S.INVALID_PARAMETER),  # HR without NV
])
def test_invalid_attribute_combinations(guest: Guest, attrs: int, expected: Status) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(); EDK2 VariableServiceSetVariable, in its order: bits
    outside 0x6F|AW (ENHANCED_AUTH 0x80 too), RT without BS and NV alone are INVALID_PARAMETER
    (UNSUPPORTED with AW); AW, and AW with AT, are UNSUPPORTED. HR without NV|BS|RT is
    INVALID_PARAMETER (VarCheckUefiLib's HwErrRec#### property: EDK2 checks it from EndOfDxe,
    efird in every phase). Nothing is stored."""
    assert guest.set("Var", b"data", attrs) is expected
    assert guest.get("Var").status is S.NOT_FOUND


def test_empty_name_is_invalid(guest: Guest) -> None:
    """UEFI 2.10 §8.2.3 SetVariable() (VariableName must have 1 or more characters); EDK2
    VariableServiceSetVariable: an empty name is INVALID_PARAMETER."""
    assert guest.set("", b"x") is S.INVALID_PARAMETER


def test_hardware_error_records(guest: Guest) -> None:
    """UEFI 2.10 §8.2.8 Hardware Error Record Persistence and §8.2.3 SetVariable(): an HR
    variable must be HwErrRec#### under EFI_HARDWARE_ERROR_VARIABLE, else INVALID_PARAMETER (EDK2
    SetVariableCheckHandlerUefiDefined, VarCheckUefiLib); QueryVariableInfo(HR) reports the
    separate HR store (EDK2 VariableServiceQueryVariableInfoInternal). efird supports HR like
    EDK2 with PcdHwErrStorageSize != 0; OVMF sets 0 and refuses HR."""
    hr = g.EFI_HARDWARE_ERROR_VARIABLE
    assert guest.set("HwErrRec0001", b"rec", 0x0F, hr) is S.SUCCESS
    assert guest.set("HwErrRecXYZW", b"rec", 0x0F, hr) is S.INVALID_PARAMETER
    assert guest.set("HwErrRec0002", b"rec", 0x0F, VENDOR) is S.INVALID_PARAMETER
    status, total, remaining, _ = guest.query(0x0F)
    assert status is S.SUCCESS and total == Limits().hr_storage
    assert total - remaining == VARIABLE_HEADER_SIZE + 26 + 3


# --- create, update, delete: UpdateVariable ----------------------------------------------
def test_create_with_no_data_or_no_access_is_not_found(guest: Guest) -> None:
    """EDK2 UpdateVariable (Variable.c): creating with DataSize 0 or without BS/RT is
    NOT_FOUND (UEFI 2.10 §8.2.3: the variable to delete was not found). NV|APPEND is not "NV
    alone": VariableServiceSetVariable masks with 0x6F."""
    assert guest.set("Var", b"", NV_BS_RT) is S.NOT_FOUND
    assert guest.set("Var", b"data", 0) is S.NOT_FOUND
    # NV|APPEND is not "NV alone" (EDK2 masks with 0x6F), but has no access bits.
    assert guest.set("Var", b"data", 0x01 | 0x40) is S.NOT_FOUND


def test_delete_by_empty_data_and_by_zero_attributes(guest: Guest) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): DataSize 0, or no access attributes, deletes; EDK2
    UpdateVariable. Deleting a variable that is already gone is NOT_FOUND."""
    guest.set("A", b"1")
    guest.set("B", b"2")
    assert guest.set("A", b"", NV_BS_RT) is S.SUCCESS
    assert guest.set("B", b"ignored", 0) is S.SUCCESS
    assert guest.get("A").status is S.NOT_FOUND and guest.get("B").status is S.NOT_FOUND
    assert guest.set("A", b"", NV_BS_RT) is S.NOT_FOUND


def test_changing_attributes_of_existing_variable_is_invalid(guest: Guest) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): rewriting with other attributes is INVALID_PARAMETER
    and leaves the variable as it was (EDK2 VariableServiceSetVariable attribute check)."""
    guest.set("Var", b"1", NV_BS_RT)
    assert guest.set("Var", b"2", BS_RT) is S.INVALID_PARAMETER
    assert guest.get("Var").data == b"1"


def test_append(guest: Guest) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): APPEND_WRITE appends, and creates a missing variable;
    §8.2.1: APPEND is never returned in Attributes (EDK2 UpdateVariable strips it)."""
    assert guest.set("Var", b"ab", NV_BS_RT | 0x40) is S.SUCCESS  # append creates
    assert guest.set("Var", b"cd", NV_BS_RT | 0x40) is S.SUCCESS
    assert guest.get("Var").data == b"abcd"
    assert guest.get("Var").attributes == NV_BS_RT  # APPEND is never stored


def test_append_of_nothing_changes_nothing(guest: Guest) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): APPEND with DataSize 0 changes nothing and creates
    nothing, SUCCESS; EDK2 UpdateVariable. QEMU 10 uefi-vars deletes the variable instead."""
    # QEMU 10 deletes the variable here; UEFI says an empty append is not a delete.
    guest.set("Var", b"keep")
    assert guest.set("Var", b"", NV_BS_RT | 0x40) is S.SUCCESS
    assert guest.get("Var").data == b"keep"
    assert guest.set("New", b"", NV_BS_RT | 0x40) is S.SUCCESS
    assert guest.get("New").status is S.NOT_FOUND


def test_volatile_variables_do_not_survive_a_restart(guest: Guest, store_path: Path) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): without NON_VOLATILE a variable is not kept across a
    power cycle; an efird restart is a platform reset (EDK2 keeps volatile ones in RAM)."""
    guest.set("Nv", b"1", NV_BS_RT)
    guest.set("Vol", b"2", BS_RT)
    d2 = reopen(guest.domain, store_path)
    g2 = Guest(d2)
    assert g2.get("Nv").data == b"1"
    assert g2.get("Vol").status is S.NOT_FOUND
    d2.close()


# --- after ExitBootServices: UpdateVariable / VariableServiceSetVariable -----------------
def test_runtime_write_rules(guest: Guest) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): after ExitBootServices only NV|RT variables can be set.
    EDK2 VariableServiceSetVariable (existing non-RT: WRITE_PROTECTED) and UpdateVariable
    (existing volatile: WRITE_PROTECTED; new without NV or RT: INVALID_PARAMETER)."""
    guest.set("BsOnly", b"1", NV_BS)
    guest.set("VolRt", b"1", BS_RT)
    guest.exit_boot_services()
    assert guest.set("BsOnly", b"2", NV_BS) is S.WRITE_PROTECTED
    assert guest.set("VolRt", b"2", BS_RT) is S.WRITE_PROTECTED
    assert guest.set("NewVol", b"2", BS_RT) is S.INVALID_PARAMETER
    assert guest.set("NewBs", b"2", NV_BS) is S.INVALID_PARAMETER
    assert guest.set("NewNv", b"2", NV_BS_RT) is S.SUCCESS


def test_restart_resets_the_boot_phase(guest: Guest, store_path: Path) -> None:
    """EDK2 VariableSmm.c: mAtRuntime is set by EXIT_BOOT_SERVICE and starts FALSE on every
    boot, so after a restart (efird's platform reset) BS-only variables are visible again
    (UEFI 2.10 §8.2.1)."""
    guest.set("BsOnly", b"1", NV_BS)
    guest.exit_boot_services()
    d2 = reopen(guest.domain, store_path)
    assert Guest(d2).get("BsOnly").data == b"1"
    d2.close()


# --- sizes and quotas ---------------------------------------------------------------------
def test_size_limit_is_invalid_parameter(tmp_path: Path) -> None:
    """UEFI 2.10 §8.2.3 SetVariable(): DataSize over the maximum is INVALID_PARAMETER. EDK2
    VariableServiceSetVariable limits header + name + data to MaxVariableSize, and
    UpdateVariable refuses an APPEND past it with INVALID_PARAMETER."""
    limits = Limits(max_variable_size=200, max_volatile_variable_size=200)
    d = open_domain(tmp_path / "s", limits)
    guest = Guest(d)
    name_size = 2 * len("Var") + 2
    fits = 200 - VARIABLE_HEADER_SIZE - name_size
    assert guest.set("Var", bytes(fits)) is S.SUCCESS
    assert guest.set("Var2", bytes(fits + 1)) is S.INVALID_PARAMETER
    assert guest.set("Var", b"x", NV_BS_RT | 0x40) is S.INVALID_PARAMETER  # append past limit
    d.close()


def test_quota_is_out_of_resources_and_reported_honestly(tmp_path: Path) -> None:
    """UEFI 2.10 §8.2.3 (OUT_OF_RESOURCES) and §8.2.4 QueryVariableInfo(); EDK2 UpdateVariable
    and VariableServiceQueryVariableInfoInternal: space used is header + name + data,
    MaximumVariableSize is clamped to remaining - header, and a replacement frees the old
    copy first (EDK2 reclaims)."""
    d = open_domain(tmp_path / "q", Limits(nv_storage=1000))
    guest = Guest(d)
    status, total, remaining, max_size = guest.query(NV_BS_RT)
    assert (status, total, remaining) == (S.SUCCESS, 1000, 1000)
    assert max_size == 1000 - VARIABLE_HEADER_SIZE
    assert guest.set("A", bytes(500)) is S.SUCCESS
    used = VARIABLE_HEADER_SIZE + 4 + 500
    assert guest.query(NV_BS_RT)[2] == 1000 - used
    assert guest.set("B", bytes(500)) is S.OUT_OF_RESOURCES
    assert guest.get("B").status is S.NOT_FOUND
    assert guest.set("A", bytes(600)) is S.SUCCESS  # replacing frees the old size first
    d.close()


# --- QueryVariableInfo: VariableServiceQueryVariableInfo ---------------------------------
@pytest.mark.parametrize(("attrs", "expected"), [
    (0, S.INVALID_PARAMETER),
    (0x17, S.UNSUPPORTED),  # AW
    (0x100, S.UNSUPPORTED),  # only unknown bits
    (0x01, S.INVALID_PARAMETER),  # NV alone
    (0x04, S.INVALID_PARAMETER),  # RT without BS
    (0x0E, S.INVALID_PARAMETER),  # HR without NV
    (NV_BS_RT, S.SUCCESS),
    (BS, S.SUCCESS),
    (NV_BS_RT | 0x20, S.SUCCESS),
    (NV_BS_RT | 0x40, S.SUCCESS),  # APPEND is ignored
])
def test_query_attribute_validation(guest: Guest, attrs: int, expected: Status) -> None:
    """UEFI 2.10 §8.2.4 QueryVariableInfo() (APPEND is ignored); EDK2
    VariableServiceQueryVariableInfo, in its order: 0 is INVALID_PARAMETER, AW or only unknown
    bits UNSUPPORTED, NV alone, RT without BS and HR without NV INVALID_PARAMETER."""
    assert guest.query(attrs)[0] is expected


def test_query_after_exit_boot_services_needs_runtime_access(guest: Guest) -> None:
    """UEFI 2.10 §8.2.4 QueryVariableInfo(): after ExitBootServices a query without
    RUNTIME_ACCESS is INVALID_PARAMETER (EDK2 VariableServiceQueryVariableInfo)."""
    guest.exit_boot_services()
    assert guest.query(NV_BS)[0] is S.INVALID_PARAMETER
    assert guest.query(NV_BS_RT)[0] is S.SUCCESS


def test_volatile_quota_is_separate(guest: Guest) -> None:
    """UEFI 2.10 §8.2.4 QueryVariableInfo(); EDK2 VariableServiceQueryVariableInfoInternal:
    without NV the volatile store is reported, and a volatile variable uses only that store."""
    before = guest.query(BS_RT)[2]
    guest.set("Vol", bytes(100), BS_RT)
    assert guest.query(BS_RT)[2] == before - (VARIABLE_HEADER_SIZE + 8 + 100)
