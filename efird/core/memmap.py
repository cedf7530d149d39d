"""The EFI memory map, kept by the C engine (cext/memmap.c) in one cffi-allocated array.

MemoryMap owns the descriptor array (allocated once, at its full capacity) and calls the
engine with it; descriptors only become Python objects when asked for (`descriptors()`),
never on the GetMemoryMap / AllocatePages / FreePages paths. Output buffers go to C
through `ffi.from_buffer`, without a copy, so the same call fills a bytearray in a test
or guest memory in the daemon.

Guest-caused failures come back as EFI statuses in the returned tuples, exactly as the
reference model (efird.core.memmap_ref) returns them. Exceptions are for programmer
errors only: OverflowError when an argument does not fit its C type (u32 / u64),
BufferError when an output buffer is read-only, ValueError for a region buffer whose length
is not a multiple of 24 bytes (and from `memory_map` for an invalid descriptor size).
"""

from __future__ import annotations

from typing import Any

from efird._cext import ffi, lib
from efird.core.memmap_ref import (
    DEFAULT_DESCRIPTOR_SIZE,
    DESCRIPTOR_VERSION,
    E820_ENTRY,
    FLAG_ALLOCATED,
    HVM_ENTRY,
    AllocateType,
    Attribute,
    Descriptor,
    E820Type,
    Kind,
    MapInfo,
    MemoryType,
    Regions,
    TableEntry,
    WritableBuffer,
    pack_regions,
)
from efird.efi.status import Status

__all__ = ["AllocateType", "Attribute", "Descriptor", "E820Type", "Kind", "MapInfo",
           "MemoryMap", "MemoryType", "TableEntry"]

# C status value -> Status member: a dict lookup is cheaper than Status(value).
_STATUS = {int(s): s for s in Status}


def _writable(buffer: WritableBuffer) -> Any:
    return ffi.from_buffer("uint8_t[]", buffer, require_writable=True)


def _nbytes(buffer: bytes | bytearray | memoryview) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


class MemoryMap:
    """One guest's EFI memory map, with room for `capacity` descriptors."""

    def __init__(self, capacity: int) -> None:
        self._descs = ffi.new("efird_mm_desc[]", capacity)
        self._map = ffi.new("efird_mm_map *")
        lib.efird_mm_init(self._map, self._descs, capacity)
        # Out-parameters, allocated once: the hot calls allocate nothing in Python.
        self._u64 = ffi.new("uint64_t[4]")
        self._u32 = ffi.new("uint32_t[1]")

    @property
    def capacity(self) -> int:
        return int(self._map.capacity)

    @property
    def count(self) -> int:
        return int(self._map.count)

    @property
    def map_key(self) -> int:
        return int(self._map.map_key)

    @property
    def virtual_mode(self) -> bool:
        return bool(self._map.virtual_mode)

    def descriptors(self) -> list[Descriptor]:
        """A snapshot of the map (for tests, tools and logs; not for hot paths)."""
        out, descs = [], self._map.descs  # the map floats inside self._descs
        for i in range(self._map.count):
            d = descs[i]
            out.append(Descriptor(d.type, d.phys_start, d.virt_start, d.num_pages, d.attribute,
                                  bool(d.flags & FLAG_ALLOCATED)))
        return out

    def build(self, regions: Regions) -> Status:
        """Replace the map with one built from the toolstack's regions: (addr, size, kind)
        tuples, or packed efird_mm_region / hvm_memmap entries (used without a copy)."""
        if isinstance(regions, bytes | bytearray | memoryview):
            data: bytes | bytearray | memoryview = regions
            if _nbytes(data) % 24:
                raise ValueError(f"region buffer length {_nbytes(data)} is not a multiple of 24")
        else:
            data = pack_regions(regions)
        source = ffi.from_buffer("uint8_t[]", data)
        if int(ffi.cast("uintptr_t", source)) % 8:  # C reads it as structs: keep it aligned
            source = ffi.from_buffer("uint8_t[]", bytes(data))
        count = _nbytes(data) // 24
        return _STATUS[lib.efird_mm_build(self._map, ffi.cast("efird_mm_region *", source),
                                          count)]

    def allocate_pages(self, alloc_type: int, memory_type: int, pages: int,
                       memory: int = 0) -> tuple[Status, int]:
        """AllocatePages: (status, address). `memory` is the address for
        AllocateAddress, the highest usable byte for AllocateMaxAddress, unused for
        AllocateAnyPages; it comes back unchanged on failure."""
        out = self._u64
        out[0] = memory
        status = lib.efird_mm_allocate_pages(self._map, alloc_type, memory_type, pages, out)
        return _STATUS[status], int(out[0])

    def free_pages(self, memory: int, pages: int) -> Status:
        """FreePages: only pages that AllocatePages handed out can be freed."""
        return _STATUS[lib.efird_mm_free_pages(self._map, memory, pages)]

    def get_memory_map(self, buffer: WritableBuffer, descriptor_size: int = 0) -> MapInfo:
        """GetMemoryMap into `buffer` (all of it is available); descriptor_size 0 = 48."""
        out, version = self._u64, self._u32
        out[0], out[1], out[2], version[0] = _nbytes(buffer), 0, descriptor_size, 0
        status = lib.efird_mm_get_memory_map(self._map, _writable(buffer), out, out + 1,
                                             out + 2, version)
        return MapInfo(_STATUS[status], int(out[0]), int(out[1]), int(out[2]), int(version[0]))

    def memory_map(self, descriptor_size: int = 0) -> bytes:
        """The encoded map, exactly sized (a convenience for tests and tools)."""
        size = descriptor_size or DEFAULT_DESCRIPTOR_SIZE
        buf = bytearray(self.count * size)
        info = self.get_memory_map(buf, descriptor_size)
        if info.status != Status.SUCCESS:
            raise ValueError(f"descriptor size {descriptor_size}: {info.status.name}")
        return bytes(buf)

    def to_e820(self, buffer: WritableBuffer) -> tuple[Status, int]:
        """Packed 20-byte E820 entries into `buffer`: (status, entries written or needed)."""
        count = self._u64
        count[0] = _nbytes(buffer) // E820_ENTRY.size
        status = lib.efird_mm_to_e820(
            self._map, ffi.cast("efird_mm_e820_entry *", _writable(buffer)), count)
        return _STATUS[status], int(count[0])

    def to_hvm_memmap(self, buffer: WritableBuffer) -> tuple[Status, int]:
        """24-byte hvm_memmap_table entries into `buffer`: (status, entries)."""
        count = self._u64
        count[0] = _nbytes(buffer) // HVM_ENTRY.size
        status = lib.efird_mm_to_hvm_memmap(
            self._map, ffi.cast("efird_mm_hvm_entry *", _writable(buffer)), count)
        return _STATUS[status], int(count[0])

    def table(self) -> list[TableEntry]:
        """The E820 entries as tuples (the hvm_memmap holds the same ones)."""
        status, needed = self.to_e820(bytearray())
        buf = bytearray(needed * E820_ENTRY.size)
        status, count = self.to_e820(buf)
        assert status == Status.SUCCESS, status  # sized just above
        return [TableEntry(*E820_ENTRY.unpack_from(buf, i * E820_ENTRY.size))
                for i in range(count)]

    def set_virtual_address_map(self, virtual_map: bytes | bytearray | memoryview,
                                descriptor_size: int,
                                descriptor_version: int = DESCRIPTOR_VERSION) -> Status:
        """SetVirtualAddressMap with the guest's virtual map (read, never written)."""
        status = lib.efird_mm_set_virtual_address_map(
            self._map, ffi.from_buffer("uint8_t[]", virtual_map), _nbytes(virtual_map),
            descriptor_size, descriptor_version)
        return _STATUS[status]

    def convert_pointer(self, address: int, debug_disposition: int = 0) -> tuple[Status, int]:
        """ConvertPointer: (status, address), the address unchanged unless converted."""
        out = self._u64
        out[0] = address
        status = lib.efird_mm_convert_pointer(self._map, debug_disposition, out)
        return _STATUS[status], int(out[0])
