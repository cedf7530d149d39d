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
    assert guest.set("Var", b"hello") is S.SUCCESS
    r = guest.get("Var")
    assert (r.status, r.attributes, r.data_size, r.data) == (S.SUCCESS, NV_BS_RT, 5, b"hello")


def test_get_buffer_too_small_reports_size_and_attributes(guest: Guest) -> None:
    # EDK2 writes DataSize and Attributes on BUFFER_TOO_SMALL too.
    guest.set("Var", b"hello", BS_RT)
    r = guest.get("Var", size=4)
    assert (r.status, r.data_size, r.attributes) == (S.BUFFER_TOO_SMALL, 5, BS_RT)
    assert guest.get("Var", size=0).status is S.BUFFER_TOO_SMALL


def test_get_missing_and_empty_name(guest: Guest) -> None:
    assert guest.get("Missing").status is S.NOT_FOUND
    assert guest.get("").status is S.NOT_FOUND  # EDK2: empty name is NOT_FOUND
    guest.set("Var", b"x")
    assert guest.get("Var", guid=g.EFI_GLOBAL_VARIABLE).status is S.NOT_FOUND


def test_boot_service_variables_vanish_after_exit_boot_services(guest: Guest) -> None:
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
    assert guest.set("Var", b"data", attrs) is expected
    assert guest.get("Var").status is S.NOT_FOUND


def test_empty_name_is_invalid(guest: Guest) -> None:
    assert guest.set("", b"x") is S.INVALID_PARAMETER


def test_hardware_error_records(guest: Guest) -> None:
    hr = g.EFI_HARDWARE_ERROR_VARIABLE
    assert guest.set("HwErrRec0001", b"rec", 0x0F, hr) is S.SUCCESS
    assert guest.set("HwErrRecXYZW", b"rec", 0x0F, hr) is S.INVALID_PARAMETER
    assert guest.set("HwErrRec0002", b"rec", 0x0F, VENDOR) is S.INVALID_PARAMETER
    status, total, remaining, _ = guest.query(0x0F)
    assert status is S.SUCCESS and total == Limits().hr_storage
    assert total - remaining == VARIABLE_HEADER_SIZE + 26 + 3


# --- create, update, delete: UpdateVariable ----------------------------------------------
def test_create_with_no_data_or_no_access_is_not_found(guest: Guest) -> None:
    assert guest.set("Var", b"", NV_BS_RT) is S.NOT_FOUND
    assert guest.set("Var", b"data", 0) is S.NOT_FOUND
    # NV|APPEND is not "NV alone" (EDK2 masks with 0x6F), but has no access bits.
    assert guest.set("Var", b"data", 0x01 | 0x40) is S.NOT_FOUND


def test_delete_by_empty_data_and_by_zero_attributes(guest: Guest) -> None:
    guest.set("A", b"1")
    guest.set("B", b"2")
    assert guest.set("A", b"", NV_BS_RT) is S.SUCCESS
    assert guest.set("B", b"ignored", 0) is S.SUCCESS
    assert guest.get("A").status is S.NOT_FOUND and guest.get("B").status is S.NOT_FOUND
    assert guest.set("A", b"", NV_BS_RT) is S.NOT_FOUND


def test_changing_attributes_of_existing_variable_is_invalid(guest: Guest) -> None:
    guest.set("Var", b"1", NV_BS_RT)
    assert guest.set("Var", b"2", BS_RT) is S.INVALID_PARAMETER
    assert guest.get("Var").data == b"1"


def test_append(guest: Guest) -> None:
    assert guest.set("Var", b"ab", NV_BS_RT | 0x40) is S.SUCCESS  # append creates
    assert guest.set("Var", b"cd", NV_BS_RT | 0x40) is S.SUCCESS
    assert guest.get("Var").data == b"abcd"
    assert guest.get("Var").attributes == NV_BS_RT  # APPEND is never stored


def test_append_of_nothing_changes_nothing(guest: Guest) -> None:
    # QEMU 10 deletes the variable here; UEFI says an empty append is not a delete.
    guest.set("Var", b"keep")
    assert guest.set("Var", b"", NV_BS_RT | 0x40) is S.SUCCESS
    assert guest.get("Var").data == b"keep"
    assert guest.set("New", b"", NV_BS_RT | 0x40) is S.SUCCESS
    assert guest.get("New").status is S.NOT_FOUND


def test_volatile_variables_do_not_survive_a_restart(guest: Guest, store_path: Path) -> None:
    guest.set("Nv", b"1", NV_BS_RT)
    guest.set("Vol", b"2", BS_RT)
    d2 = reopen(guest.domain, store_path)
    g2 = Guest(d2)
    assert g2.get("Nv").data == b"1"
    assert g2.get("Vol").status is S.NOT_FOUND
    d2.close()


# --- after ExitBootServices: UpdateVariable / VariableServiceSetVariable -----------------
def test_runtime_write_rules(guest: Guest) -> None:
    guest.set("BsOnly", b"1", NV_BS)
    guest.set("VolRt", b"1", BS_RT)
    guest.exit_boot_services()
    assert guest.set("BsOnly", b"2", NV_BS) is S.WRITE_PROTECTED
    assert guest.set("VolRt", b"2", BS_RT) is S.WRITE_PROTECTED
    assert guest.set("NewVol", b"2", BS_RT) is S.INVALID_PARAMETER
    assert guest.set("NewBs", b"2", NV_BS) is S.INVALID_PARAMETER
    assert guest.set("NewNv", b"2", NV_BS_RT) is S.SUCCESS


def test_restart_resets_the_boot_phase(guest: Guest, store_path: Path) -> None:
    guest.set("BsOnly", b"1", NV_BS)
    guest.exit_boot_services()
    d2 = reopen(guest.domain, store_path)
    assert Guest(d2).get("BsOnly").data == b"1"
    d2.close()


# --- sizes and quotas ---------------------------------------------------------------------
def test_size_limit_is_invalid_parameter(tmp_path: Path) -> None:
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
    assert guest.query(attrs)[0] is expected


def test_query_after_exit_boot_services_needs_runtime_access(guest: Guest) -> None:
    guest.exit_boot_services()
    assert guest.query(NV_BS)[0] is S.INVALID_PARAMETER
    assert guest.query(NV_BS_RT)[0] is S.SUCCESS


def test_volatile_quota_is_separate(guest: Guest) -> None:
    before = guest.query(BS_RT)[2]
    guest.set("Vol", bytes(100), BS_RT)
    assert guest.query(BS_RT)[2] == before - (VARIABLE_HEADER_SIZE + 8 + 100)
