"""Every known weakness of the closest peers (FACTS.md) as a regression test: each must
end in a clean EFI status here, with the service still serving."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import Status
from efird.store.base import StoreCorruptError
from efird.store.sqlite import SqliteStore

from .conftest import BS_RT, NV_BS_RT, VENDOR, Guest

S = Status


def test_qemu_empty_certificate_does_not_crash(guest: Guest) -> None:
    """QEMU 10 hw/uefi uefi-vars crashes on a time-based SetVariable with an empty certificate.
    efird: UEFI 2.10 §8.2.6 (CertData must parse as PKCS#7) gives SECURITY_VIOLATION; in setup
    mode EDK2 ProcessVarWithPk skips the signature but CheckSignatureListFormat refuses the
    payload (INVALID_PARAMETER)."""
    empty = bytes(16) + struct.pack("<IHH", 24, 0x0200, 0x0EF1) + g.EFI_CERT_TYPE_PKCS7
    # a private variable: nothing verifies against an empty certificate
    assert guest.set("Private", empty + b"payload", 0x27) is S.SECURITY_VIOLATION
    # setup mode needs no signature for db/PK (EDK2), but the payload is no signature list
    assert guest.set("db", empty + b"payload", 0x27, g.EFI_IMAGE_SECURITY_DATABASE
                     ) is S.INVALID_PARAMETER
    assert guest.set("PK", empty + b"payload", 0x27, g.EFI_GLOBAL_VARIABLE) is S.INVALID_PARAMETER
    assert guest.set("Still", b"serving") is S.SUCCESS


def test_qemu_nul_less_names_are_refused(guest: Guest) -> None:
    """QEMU 10 hw/uefi uefi-vars accepts names without their NUL terminator; EDK2
    SmmVariableHandler answers ACCESS_DENIED."""
    access = struct.pack("<16sQQI", VENDOR, 1, 4, NV_BS_RT) + "AB".encode("utf-16-le") + b"x"
    assert c.return_status(guest.raw(c.variable_request(3, access))) is S.ACCESS_DENIED
    assert guest.get("AB").status is S.NOT_FOUND


def test_qemu_empty_append_does_not_delete(guest: Guest) -> None:
    """QEMU 10 hw/uefi uefi-vars deletes a variable on an APPEND_WRITE with no payload; UEFI 2.10
    §8.2.3 and EDK2 UpdateVariable leave it unchanged."""
    guest.set("Keep", b"value")
    assert guest.set("Keep", b"", NV_BS_RT | 0x40) is S.SUCCESS
    assert guest.get("Keep").data == b"value"


def test_qemu_setup_mode_and_secure_boot_are_not_guest_writable(guest: Guest) -> None:
    """QEMU 10 hw/uefi uefi-vars lets the guest write SetupMode and SecureBoot; UEFI 2.10 §3.3
    makes them read-only (EDK2 enforces that from EndOfDxe, efird always)."""
    assert guest.set("SetupMode", b"\x00", BS_RT, g.EFI_GLOBAL_VARIABLE) is S.WRITE_PROTECTED
    assert guest.set("SecureBoot", b"\x01", BS_RT, g.EFI_GLOBAL_VARIABLE) is S.WRITE_PROTECTED
    assert guest.get("SetupMode", g.EFI_GLOBAL_VARIABLE).data == b"\x01"


def test_qemu_audit_and_deployed_mode_exist(guest: Guest) -> None:
    """QEMU 10 hw/uefi uefi-vars (like current EDK2) has no AuditMode/DeployedMode; efird
    publishes both as BS|RT variables (UEFI 2.10 §3.3, §32.3)."""
    for name in ("AuditMode", "DeployedMode"):
        r = guest.get(name, g.EFI_GLOBAL_VARIABLE)
        assert (r.status, r.attributes, r.data) == (S.SUCCESS, BS_RT, b"\x00")


def test_qemu_non_ascii_names_survive_a_restart(guest: Guest, store_path: Path) -> None:
    """QEMU 10 hw/uefi uefi-vars' JSON store loses non-ASCII names. efird store requirement:
    an acknowledged SetVariable survives a restart, whatever its CHAR16 name (UEFI 2.10
    §8.2.3)."""
    from .conftest import reopen

    guest.set("Ünïcödé\u4e2d", b"1")
    d2 = reopen(guest.domain, store_path)
    assert Guest(d2).get("Ünïcödé\u4e2d").data == b"1"
    d2.close()


def test_qemu_truncated_store_is_never_served_empty(tmp_path: Path) -> None:
    """QEMU 10 hw/uefi uefi-vars truncates and rewrites its file: a crash leaves an empty
    store, which it then serves. efird never truncates (WAL) and refuses an empty file loudly
    (efird store requirement: corruption is detected on open with a clear error, never an
    empty store). The kill -9 test in test_store.py covers the crash itself."""
    path = tmp_path / "vm.efivars"
    s = SqliteStore(path)
    s.close()
    path.write_bytes(b"")
    with pytest.raises(StoreCorruptError):
        SqliteStore(path)


def test_varstored_toctou_request_is_parsed_from_one_copy(guest: Guest) -> None:
    """XenServer varstored re-read guest memory after validating it. efird copies a request
    once, as EDK2 SmmVariableHandler copies the payload into a private SMM buffer; a guest
    changing the shared buffer mid-request cannot affect what is served."""
    shared = bytearray(c.set_variable(VENDOR, "Raced", NV_BS_RT, b"ok"))
    routes = guest.domain.dispatcher._routes
    real = routes[g.SMM_VARIABLE_PROTOCOL]

    def racing(buf: bytearray, start: int, length: int) -> None:
        # the "guest" rewrites NameSize and DataSize in shared memory after the copy
        struct.pack_into("<QQ", shared, 56, 2**62, 2**62)
        real.handler(buf, start, length)

    routes[g.SMM_VARIABLE_PROTOCOL] = type(real)(racing, real.status_offset, real.name)
    response = guest.domain.dispatcher.dispatch(shared)
    routes[g.SMM_VARIABLE_PROTOCOL] = real
    assert c.return_status(bytes(response)) is S.SUCCESS
    assert guest.get("Raced").data == b"ok"
