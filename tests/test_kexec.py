"""kexec through the kexec and boot-memory services (protocols/PROTOCOL.md §5): a soft
reset keeps variables, the runtime phase and the virtual map; the next kernel gets a fresh
boot path, the runtime map with VirtualStart and a SETUP_EFI blob, and may present only
the first kernel's virtual map again."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.bootmem.description import q35
from efird.domain import Domain
from efird.efi import guid as g
from efird.efi.status import Status
from efird.store.sqlite import SqliteStore

from .conftest import BS_RT, NV_BS, Guest

S = Status
DESC = struct.Struct("<IIQQQQ")
RUNTIME = 1 << 63
EFI_VA = 0xFFFFFFFF00000000


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[Domain]:
    d = Domain(SqliteStore(tmp_path / "vm.efivars"), memory_map=q35(1024))
    yield d
    d.close()


def kexec(guest: Guest, function: int, data: bytes) -> tuple[Status, bytes]:
    resp = guest.raw(c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", function, 0) + data))
    return c.return_status(resp), resp[40:]


def first_kernel(guest: Guest) -> list[tuple[int, int, int, int, int]]:
    """Boot, allocate runtime data, ExitBootServices, SetVirtualAddressMap like Linux."""
    guest.set("Volatile", b"kept", BS_RT)
    guest.set("BootOnly", b"hidden", NV_BS)
    status, _addr = c.parse_allocate_pages(guest.raw(c.allocate_pages(0, 6, 3)))  # RT data
    assert status is S.SUCCESS
    status, _, key, desc_size, _, raw = c.parse_get_memory_map(guest.raw(c.get_memory_map(8192)))
    assert c.return_status(guest.raw(c.exit_boot_services(key))) is S.SUCCESS
    runtime = []
    vmap = b""
    for n, at in enumerate(range(0, len(raw), desc_size)):
        kind, _pad, phys, _virt, pages, attr = DESC.unpack_from(raw, at)
        if attr & RUNTIME:
            virt = EFI_VA - (n + 1) * 0x1000000
            runtime.append((kind, phys, virt, pages, attr))
            vmap += DESC.pack(kind, 0, phys, virt, pages, attr) + bytes(desc_size - 40)
    assert runtime
    assert c.return_status(guest.raw(c.set_virtual_address_map(vmap, desc_size))) is S.SUCCESS
    return runtime


def vmap_of(runtime: list[tuple[int, int, int, int, int]], shift: int = 0) -> bytes:
    return b"".join(DESC.pack(k, 0, p, v + shift, n, a) + bytes(8) for k, p, v, n, a in runtime)


def test_kexec_cycle(domain: Domain) -> None:
    guest = Guest(domain)
    events: list[str] = []
    domain.listeners.append(lambda kind, data: events.append(kind))
    runtime = first_kernel(guest)
    fw = struct.pack("<QQQQ", 0x7F000, 0x7F100, 0xF0000, 0)
    assert kexec(guest, 4, fw)[0] is S.SUCCESS
    # what the first kernel hands the next one
    status, data = kexec(guest, 1, struct.pack("<QQII", 4096, 0, 0, 0) + bytes(4096))
    size, desc_size, version, _ = struct.unpack_from("<QQII", data)
    assert (status, desc_size, version) == (S.SUCCESS, 48, 1)
    got = [DESC.unpack_from(data, 24 + i) for i in range(0, size, 48)]
    assert [(k, p, v, n, a) for k, _pad, p, v, n, a in got] == runtime
    status, data = kexec(guest, 2, struct.pack("<Q", 96) + bytes(96))
    assert status is S.SUCCESS
    assert struct.unpack_from("<QQQQ", data, 8) == (0x7F000, 0, 0x7F100, 0xF0000)
    # the soft reset
    assert kexec(guest, 3, struct.pack("<Q", 0))[0] is S.SUCCESS
    assert events == ["kexec"]
    assert guest.get("Volatile").data == b"kept"  # variables untouched
    assert guest.get("BootOnly").status is S.NOT_FOUND  # still in the runtime phase
    # a fresh boot path for the next kernel, runtime regions still in it
    status, _, key, desc_size, _, raw = c.parse_get_memory_map(guest.raw(c.get_memory_map(8192)))
    assert status is S.SUCCESS
    regions = {(p, n) for _k, _pad, p, _v, n, a in
               (DESC.unpack_from(raw, at) for at in range(0, len(raw), desc_size))
               if a & RUNTIME}
    assert {(p, n) for _k, p, _v, n, _a in runtime} <= regions
    assert c.parse_allocate_pages(guest.raw(c.allocate_pages(0, 2, 4)))[0] is S.SUCCESS
    key = c.parse_get_memory_map(guest.raw(c.get_memory_map(8192)))[2]
    assert c.return_status(guest.raw(c.exit_boot_services(key))) is S.SUCCESS
    # the next kernel may only present the first kernel's virtual map
    assert c.return_status(guest.raw(c.set_virtual_address_map(vmap_of(runtime, 0x1000),
                                                               48))) is S.UNSUPPORTED
    assert c.return_status(guest.raw(c.set_virtual_address_map(vmap_of(runtime), 48))) \
        is S.SUCCESS
    _kind, phys, virt, _n, _a = runtime[0]
    assert c.parse_convert_pointer(guest.raw(c.convert_pointer(phys + 16))) == (S.SUCCESS,
                                                                                virt + 16)


def test_soft_reset_needs_a_map_and_takes_no_flags(tmp_path: Path) -> None:
    d = Domain(SqliteStore(tmp_path / "vm.efivars"))
    guest = Guest(d)
    assert kexec(guest, 3, struct.pack("<Q", 0))[0] is S.NOT_READY
    assert kexec(guest, 3, struct.pack("<Q", 1))[0] is S.INVALID_PARAMETER
    assert kexec(guest, 4, struct.pack("<QQQQ", 1, 2, 3, 4))[0] is S.INVALID_PARAMETER
    assert kexec(guest, 1, struct.pack("<QQII", 0, 20, 0, 0))[0] is S.INVALID_PARAMETER
    d.close()


def test_cold_reset_after_kexec_forgets_the_virtual_map(domain: Domain) -> None:
    """After a cold reset the next boot is a first boot: any valid virtual map goes."""
    guest = Guest(domain)
    runtime = first_kernel(guest)
    kexec(guest, 3, struct.pack("<Q", 0))
    guest.raw(c.envelope(g.EFIRD_RESET_SERVICE, struct.pack("<QQ", 1, 0)
                         + struct.pack("<IIQQ", 0, 0, 0, 0)))
    for kind, phys, _virt, pages, _attr in runtime:  # the same runtime allocations again
        if kind == 11:  # MMIO comes from the toolstack's description, not an allocation
            continue
        status, _ = c.parse_allocate_pages(guest.raw(c.allocate_pages(2, kind, pages, phys)))
        assert status is S.SUCCESS
    key = c.parse_get_memory_map(guest.raw(c.get_memory_map(8192)))[2]
    assert c.return_status(guest.raw(c.exit_boot_services(key))) is S.SUCCESS
    assert c.return_status(guest.raw(c.set_virtual_address_map(vmap_of(runtime, 0x1000),
                                                               48))) is S.SUCCESS


def test_migrated_boot_memory_state_keeps_the_runtime_map(domain: Domain,
                                                         tmp_path: Path) -> None:
    """save-state/restore-state's boot-memory part: the target hands out the same runtime
    map and, like after kexec, accepts only that virtual map."""
    guest = Guest(domain)
    runtime = first_kernel(guest)
    kexec(guest, 4, struct.pack("<QQQQ", 1, 2, 3, 0))
    exported = domain.bootmem.export_state()
    target = Domain(SqliteStore(tmp_path / "target.efivars"), memory_map=q35(1024))
    target.bootmem.import_state(target.bootmem.parse_state(exported))
    other = Guest(target)
    status, data = kexec(other, 1, struct.pack("<QQII", 4096, 0, 0, 0) + bytes(4096))
    assert status is S.SUCCESS
    size = struct.unpack_from("<Q", data)[0]
    assert [DESC.unpack_from(data, 24 + i)[2:4] for i in range(0, size, 48)] == \
        [(p, v) for _k, p, v, _n, _a in runtime]
    assert struct.unpack_from("<QQQQ", kexec(other, 2, struct.pack("<Q", 96) + bytes(96))[1],
                              8) == (1, 0, 2, 3)
    assert c.return_status(other.raw(c.set_virtual_address_map(vmap_of(runtime, 0x1000), 48))) \
        is S.UNSUPPORTED
    with pytest.raises((ValueError, TypeError, KeyError)):
        target.bootmem.parse_state({"exited": True, "runtime_map": [[1, 2]],
                                    "firmware_tables": [0, 0, 0]})
    target.close()


def test_soft_reset_after_init_memory_map_keeps_the_guests_layout(tmp_path: Path) -> None:
    """Without --memmap the next kernel's map comes from the hvm_memmap the guest gave:
    reserved and ACPI ranges stay what they were."""
    d = Domain(SqliteStore(tmp_path / "vm.efivars"))
    guest = Guest(d)
    entries = [(0, 0x9F000, 1), (0x100000, 0x3FF00000, 1), (0xE0000, 0x20000, 3),
               (0xFEC00000, 0x1000, 2)]
    assert c.return_status(guest.raw(c.init_memory_map(entries))) is S.SUCCESS
    before = c.parse_get_memory_map(guest.raw(c.get_memory_map(4096)))[5]
    assert kexec(guest, 3, struct.pack("<Q", 0))[0] is S.SUCCESS
    after = c.parse_get_memory_map(guest.raw(c.get_memory_map(4096)))[5]
    assert after == before
    d.close()
