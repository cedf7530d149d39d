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


def test_qemu_append_keeps_every_signature_type() -> None:
    """QEMU 10 uefi-vars keeps only X.509 and SHA-256 lists through an append: covered in
    full, with signed writes, by test_secure_boot.py::
    test_append_deduplicates_every_signature_type; here the merge rule on its own."""
    from efird.efi import siglist

    owner = g.guid_bytes("77fa9abd-0359-4d32-bd60-28f4e78f784b")
    old = siglist.build(g.EFI_CERT_SHA1, owner, [b"\x01" * 20])
    new = (siglist.build(g.EFI_CERT_SHA384, owner, [b"\x02" * 48])
           + siglist.build(g.EFI_CERT_SHA512, owner, [b"\x03" * 64])
           + siglist.build(g.EFI_CERT_X509_SHA256, owner, [b"\x04" * 48])
           + siglist.build(g.EFI_CERT_SHA1, owner, [b"\x01" * 20]))  # already there
    merged = siglist.parse(old + siglist.filter_append(old, new))
    assert [sl.sig_type for sl in merged] == [g.EFI_CERT_SHA1, g.EFI_CERT_SHA384,
                                              g.EFI_CERT_SHA512, g.EFI_CERT_X509_SHA256]


def test_varstored_certificates_can_be_provisioned_after_first_boot(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """varstored provisions Secure Boot certificates only on a domain's first boot; efird
    enrolls them whenever the operator wants, on a store a guest has already used."""
    from . import sbkeys
    from .cli import efird_vars
    from .conftest import open_domain

    store = tmp_path / "vm.efivars"
    domain = open_domain(store)
    Guest(domain).set("BootedOnce", b"\x01")
    domain.close()
    pk = sbkeys.make_keypair(sbkeys.session_dir(tmp_path_factory), "late-pk", "late pk")
    result = efird_vars(store, "enroll", "--pk", str(pk.cert_pem_path))
    assert result.returncode == 0, result.stderr
    domain = open_domain(store)
    assert Guest(domain).get("SecureBoot", g.EFI_GLOBAL_VARIABLE).data == b"\x01"
    assert Guest(domain).get("BootedOnce").data == b"\x01"
    domain.close()


def test_varstored_has_no_time_reset_or_boot_services(guest: Guest) -> None:
    """varstored serves variables only; efird answers GetTime and GetMemoryMap (NOT_READY
    until the guest's memory map is known) with clean EFI statuses. (Reset: test_platform.)"""
    from .test_platform import get_time

    assert get_time(guest)[0].year >= 2025
    status = c.parse_get_memory_map(guest.raw(c.get_memory_map(4096)))[0]
    assert status in (S.SUCCESS, S.NOT_READY, S.BUFFER_TOO_SMALL)
