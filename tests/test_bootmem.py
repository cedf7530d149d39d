"""The boot-memory service through envelopes (protocols/PROTOCOL.md §5; UEFI 2.10 §7.2
GetMemoryMap/AllocatePages/FreePages/ExitBootServices, §8.4 SetVirtualAddressMap/
ConvertPointer), on QEMU q35's layout for a 4 GiB guest."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.bootmem.description import DescriptionError, load, parse, q35
from efird.core import pagetable
from efird.domain import Domain
from efird.efi.status import Status
from efird.store.sqlite import SqliteStore
from efird.vhost.memory import GuestMemory, map_region

from .conftest import NV_BS, VENDOR, Guest

S = Status
DESC = struct.Struct("<IIQQQQ")
ANY, MAX_ADDRESS, ADDRESS = 0, 1, 2
LOADER_DATA, RUNTIME_DATA, CONVENTIONAL = 2, 6, 7


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[Domain]:
    d = Domain(SqliteStore(tmp_path / "vm.efivars"), memory_map=q35(4096))
    yield d
    d.close()


@pytest.fixture
def guest(domain: Domain) -> Guest:
    return Guest(domain)


def memory_map(guest: Guest, size: int = 1 << 14, desc: int = 0
               ) -> tuple[Status, int, int, int, int, bytes]:
    return c.parse_get_memory_map(guest.raw(c.get_memory_map(size, desc)))


def descriptors(raw: bytes, desc_size: int) -> list[tuple[int, int, int, int]]:
    out = []
    for at in range(0, len(raw), desc_size):
        kind, _pad, phys, _virt, pages, attr = DESC.unpack_from(raw, at)
        out.append((kind, phys, pages, attr))
    return out


def test_get_memory_map_sizes_and_descriptor_size(guest: Guest) -> None:
    status, needed, key, desc_size, version, _ = memory_map(guest, size=8)
    assert (status, desc_size, version) == (S.BUFFER_TOO_SMALL, 48, 1)  # filled even so
    assert needed % 48 == 0 and needed > 0
    status, size, key2, desc_size, _, raw = memory_map(guest, size=needed)
    assert (status, size, key2) == (S.SUCCESS, needed, key)
    descs = descriptors(raw, 48)
    assert any(kind == CONVENTIONAL and phys == 0x100000000 for kind, phys, _, _ in descs)
    ends = [phys + pages * 4096 for _, phys, pages, _ in descs]
    assert all(a <= b[1] for a, b in zip(ends, descs[1:], strict=False))  # sorted, disjoint
    status, size, *_ , _raw40 = memory_map(guest, desc=40)
    assert status is S.SUCCESS and size == len(descs) * 40
    assert memory_map(guest, desc=39)[0] is S.INVALID_PARAMETER


def test_allocate_free_and_map_key(guest: Guest) -> None:
    key0 = memory_map(guest)[2]
    status, addr = c.parse_allocate_pages(guest.raw(c.allocate_pages(ANY, LOADER_DATA, 4)))
    assert status is S.SUCCESS and addr % 4096 == 0
    key1 = memory_map(guest)[2]
    assert key1 != key0
    status, low = c.parse_allocate_pages(guest.raw(c.allocate_pages(MAX_ADDRESS, RUNTIME_DATA,
                                                                    1, 0xFFFFFFFF)))
    assert status is S.SUCCESS and low + 4096 <= 0x100000000
    status, fixed = c.parse_allocate_pages(guest.raw(c.allocate_pages(ADDRESS, LOADER_DATA, 2,
                                                                      0x200000)))
    assert (status, fixed) == (S.SUCCESS, 0x200000)
    # OEM and OS-loader memory types are allocatable too
    for memory_type in (0x70000001, 0x80000002):
        assert c.parse_allocate_pages(guest.raw(c.allocate_pages(ANY, memory_type, 1)))[0] \
            is S.SUCCESS
    assert c.return_status(guest.raw(c.free_pages(fixed, 2))) is S.SUCCESS
    assert c.return_status(guest.raw(c.free_pages(fixed, 2))) is S.NOT_FOUND  # never again
    assert c.return_status(guest.raw(c.free_pages(0x300001, 1))) is S.INVALID_PARAMETER
    assert c.return_status(guest.raw(c.allocate_pages(ANY, LOADER_DATA, 0))) \
        is S.INVALID_PARAMETER
    assert c.return_status(guest.raw(c.allocate_pages(ADDRESS, LOADER_DATA, 1, 0xB0000000))) \
        is S.NOT_FOUND  # MMIO is not conventional memory


def test_exit_boot_services_needs_the_current_key(guest: Guest) -> None:
    guest.set("BsOnly", b"1", NV_BS)
    key = memory_map(guest)[2]
    guest.raw(c.allocate_pages(ANY, LOADER_DATA, 1))  # the map changed: key is stale
    assert c.return_status(guest.raw(c.exit_boot_services(key))) is S.INVALID_PARAMETER
    assert guest.get("BsOnly", VENDOR).status is S.SUCCESS  # still at boot time
    key = memory_map(guest)[2]  # Linux fetches the map again and retries
    assert c.return_status(guest.raw(c.exit_boot_services(key))) is S.SUCCESS
    assert guest.get("BsOnly", VENDOR).status is S.NOT_FOUND  # variables are at runtime
    assert memory_map(guest)[0] is S.UNSUPPORTED  # boot services are gone
    assert c.return_status(guest.raw(c.allocate_pages(ANY, LOADER_DATA, 1))) is S.UNSUPPORTED


def test_virtual_address_map_and_convert_pointer(guest: Guest) -> None:
    c.parse_allocate_pages(guest.raw(c.allocate_pages(ANY, RUNTIME_DATA, 2)))
    status, _size, key, desc_size, _, raw = memory_map(guest)
    runtime = [(i, d) for i, d in enumerate(descriptors(raw, desc_size)) if d[3] >> 63]
    assert runtime, "the map has runtime regions"
    vmap = b"".join(DESC.pack(kind, 0, phys, 0xFFFFFFFF00000000 + n * 0x10000000, pages, attr)
                    + bytes(desc_size - DESC.size)
                    for n, (_, (kind, phys, pages, attr)) in enumerate(runtime))
    assert c.return_status(guest.raw(c.set_virtual_address_map(vmap, desc_size))) \
        is S.UNSUPPORTED  # not before ExitBootServices
    guest.raw(c.exit_boot_services(key))
    assert c.return_status(guest.raw(c.set_virtual_address_map(vmap, desc_size))) is S.SUCCESS
    _, (_kind, phys, _pages, _attr) = runtime[0]
    status, virt = c.parse_convert_pointer(guest.raw(c.convert_pointer(phys + 8)))
    assert (status, virt) == (S.SUCCESS, 0xFFFFFFFF00000000 + 8)
    assert c.return_status(guest.raw(c.set_virtual_address_map(vmap, desc_size))) \
        is not S.SUCCESS  # only once


def test_build_page_tables_into_guest_memory(guest: Guest, domain: Domain) -> None:
    assert c.return_status(guest.raw(c.build_page_tables(0x1000000, 1 << 20))) \
        is S.UNSUPPORTED  # no guest memory attached (efird call)
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 64 << 20)
    memory = GuestMemory()
    memory.add(map_region(fd, 0, 64 << 20, 0x7F0000000000, 0))
    os.close(fd)
    domain.bootmem.attach_memory(memory)
    status, cr3, needed = c.parse_build_page_tables(guest.raw(c.build_page_tables(0x1000000,
                                                                                  4096)))
    assert status is S.BUFFER_TOO_SMALL and needed > 4096
    status, cr3, used = c.parse_build_page_tables(guest.raw(c.build_page_tables(
        0x1000000, 8 << 20, 4, 1)))
    assert status is S.SUCCESS and cr3 == 0x1000000 and 0 < used <= 8 << 20
    tables = memory.view(0x1000000, 8 << 20)
    for va in (0x0, 0x100000, 0x7FFFF000, 0x100000000, 0x17FFFF000):
        t = pagetable.walk(tables, 0x1000000, cr3, 4, va)
        assert t is not None and t.phys == va, hex(va)
    assert pagetable.walk(tables, 0x1000000, cr3, 4, 0x200000000) is None  # beyond RAM
    tables.release()
    assert c.return_status(guest.raw(c.build_page_tables(0x10000000000, 4096))) \
        is S.INVALID_PARAMETER  # not guest memory


def test_init_memory_map_from_the_guests_hvm_memmap(tmp_path: Path) -> None:
    d = Domain(SqliteStore(tmp_path / "vm.efivars"))
    guest = Guest(d)
    assert memory_map(guest)[0] is S.NOT_READY
    entries = [(0, 0x9F000, 1), (0x100000, 0x7FF00000, 1), (0xFEC00000, 0x1000, 2)]
    assert c.return_status(guest.raw(c.init_memory_map(entries, flags=1))) \
        is S.INVALID_PARAMETER
    assert c.return_status(guest.raw(c.init_memory_map(entries))) is S.SUCCESS
    assert memory_map(guest)[0] is S.SUCCESS
    assert c.return_status(guest.raw(c.init_memory_map(entries))) is S.ALREADY_STARTED
    d.close()


def test_exit_is_recorded_and_reported_to_the_toolstack(guest: Guest, domain: Domain) -> None:
    events: list[tuple[str, dict]] = []
    domain.listeners.append(lambda kind, data: events.append((kind, data)))
    data = "no kernel".encode("utf-16-le") + b"\0\0"
    assert c.return_status(guest.raw(c.exit_image(0x800000000000000E, data))) is S.SUCCESS
    assert domain.bootmem.exit_status == 0x800000000000000E
    assert events == [("boot-failed", {"status": "0x800000000000000e", "data": "no kernel"})]


def test_malformed_requests(guest: Guest) -> None:
    assert c.return_status(guest.raw(c.bootmem_request(1, bytes(8)))) is S.BAD_BUFFER_SIZE
    assert c.return_status(guest.raw(c.bootmem_request(77, bytes(8)))) is S.UNSUPPORTED
    lying = bytearray(c.set_virtual_address_map(bytes(48), 48))
    struct.pack_into("<Q", lying, 40, 1 << 40)  # MemoryMapSize past the envelope
    assert c.return_status(guest.raw(bytes(lying))) is S.BAD_BUFFER_SIZE


def test_memmap_description_files(tmp_path: Path) -> None:
    good = tmp_path / "good.memmap"
    good.write_text("# q35-ish\n0x0 0x9f000 ram\n0x100000 0x3ff00000 1\n"
                    "0xb0000000 0x10000000 mmio  # ECAM\n")
    assert load(good)[2] == (0xB0000000, 0x10000000, 0x100)
    with pytest.raises(DescriptionError, match=r"bad\.memmap:2: unknown kind 'rom'"):
        parse("0 0x1000 ram\n0x1000 0x1000 rom\n", "bad.memmap")
    with pytest.raises(DescriptionError, match=r"missing\.memmap"):
        load(tmp_path / "missing.memmap")
    with pytest.raises(DescriptionError, match=r"expected 'START SIZE KIND'"):
        parse("0 0x1000\n")


def test_page_table_attributes_follow_the_map(tmp_path: Path) -> None:
    """Code is executable, everything else NX; MMIO is uncached (PCD|PWT)."""
    d = Domain(SqliteStore(tmp_path / "vm.efivars"),
               memory_map=[(0, 0x200000, 1), (0x200000, 0x200000, 0x105),
                           (0xFE000000, 0x200000, 0x100)])
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 16 << 20)
    memory = GuestMemory()
    memory.add(map_region(fd, 0, 16 << 20, 0x7F0000000000, 0))
    os.close(fd)
    d.bootmem.attach_memory(memory)
    guest = Guest(d)
    status, cr3, _used = c.parse_build_page_tables(guest.raw(c.build_page_tables(0x800000,
                                                                                1 << 20)))
    assert status is S.SUCCESS
    tables = memory.view(0x800000, 1 << 20)
    data, code, mmio = (pagetable.walk(tables, 0x800000, cr3, 4, va)
                        for va in (0x1000, 0x201000, 0xFE000000))
    assert data is not None and code is not None and mmio is not None
    nx, pcd, pwt = 1 << 63, 1 << 4, 1 << 3
    assert data.entry & nx and not code.entry & nx
    assert mmio.entry & pcd and mmio.entry & pwt and mmio.entry & nx
    tables.release()
    d.close()
