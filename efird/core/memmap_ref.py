"""The EFI memory map in plain Python: the reference model of cext/memmap.c.

It keeps the same rules as the C engine, written the obvious way: every change rebuilds
the descriptor list, then sorts and merges it as a whole. Tests run both on the same inputs
and require equal statuses, addresses, map keys and bytes. The benchmark uses it to show
what the C engine buys. It also holds the data model the C wrapper (efird.core.memmap)
shares: kinds, EFI types, attributes, result tuples and the binary layouts.

The rules (UEFI 2.10 §7.2 and §8.4, EDK2's DXE core, Linux's x86 EFI stub) and the choices
made where they leave room are documented in cext/memmap.h; the notes below only say where
this model's code differs in shape from the C.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum, IntFlag
from itertools import pairwise
from typing import NamedTuple

from efird.efi.status import Status

PAGE_SIZE = 4096
PAGE_MASK = PAGE_SIZE - 1
PHYS_LIMIT = 1 << 52  # 52-bit guest-physical addresses: the first address past the map
MAX_PAGES = PHYS_LIMIT // PAGE_SIZE
DESCRIPTOR_VERSION = 1
DEFAULT_DESCRIPTOR_SIZE = 48  # EDK2's, on purpose larger than the struct
MAX_DESCRIPTOR_SIZE = 4096
OPTIONAL_PTR = 0x1  # ConvertPointer's EFI_OPTIONAL_PTR

_U32 = 1 << 32
_U64 = 1 << 64


class Kind(IntEnum):
    """A region kind in the toolstack's description: E820 numbers, then efird's own."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    DISABLED = 6
    PERSISTENT = 7
    MMIO = 0x100
    RUNTIME_CODE = 0x101
    RUNTIME_DATA = 0x102
    BOOT_DATA = 0x103
    BOOT_CODE = 0x104
    LOADER_CODE = 0x105
    LOADER_DATA = 0x106
    MMIO_PORT = 0x107


class MemoryType(IntEnum):
    """EFI_MEMORY_TYPE (0x70000000.. OEM and 0x80000000.. OS-loader values also exist)."""

    RESERVED = 0
    LOADER_CODE = 1
    LOADER_DATA = 2
    BOOT_SERVICES_CODE = 3
    BOOT_SERVICES_DATA = 4
    RUNTIME_SERVICES_CODE = 5
    RUNTIME_SERVICES_DATA = 6
    CONVENTIONAL = 7
    UNUSABLE = 8
    ACPI_RECLAIM = 9
    ACPI_NVS = 10
    MMIO = 11
    MMIO_PORT_SPACE = 12
    PAL_CODE = 13
    PERSISTENT = 14
    UNACCEPTED = 15


OEM_MIN = 0x70000000
OS_MIN = 0x80000000


class Attribute(IntFlag):
    """EFI_MEMORY_DESCRIPTOR.Attribute bits used by the map."""

    UC = 0x1
    WC = 0x2
    WT = 0x4
    WB = 0x8
    NV = 0x8000
    RUNTIME = 1 << 63


class AllocateType(IntEnum):
    """EFI_ALLOCATE_TYPE."""

    ANY_PAGES = 0
    MAX_ADDRESS = 1
    ADDRESS = 2


class E820Type(IntEnum):
    """E820 / hvm_memmap entry types the conversions produce."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    PMEM = 7  # Linux E820_TYPE_PMEM; 12 is the legacy E820_TYPE_PRAM, never produced


RAM_ATTRS = int(Attribute.UC | Attribute.WC | Attribute.WT | Attribute.WB)
RUNTIME = int(Attribute.RUNTIME)
FLAG_ALLOCATED = 0x1  # kept in the descriptor's padding, never encoded

# Kind -> (EFI type, attribute): cext/memmap.h has the same table as a comment.
KIND_TO_EFI: dict[int, tuple[int, int]] = {
    Kind.RAM: (MemoryType.CONVENTIONAL, RAM_ATTRS),
    Kind.RESERVED: (MemoryType.RESERVED, 0),
    Kind.ACPI: (MemoryType.ACPI_RECLAIM, RAM_ATTRS),
    Kind.NVS: (MemoryType.ACPI_NVS, RAM_ATTRS),
    Kind.UNUSABLE: (MemoryType.UNUSABLE, RAM_ATTRS),
    Kind.DISABLED: (MemoryType.RESERVED, 0),
    Kind.PERSISTENT: (MemoryType.PERSISTENT, RAM_ATTRS | Attribute.NV),
    Kind.MMIO: (MemoryType.MMIO, Attribute.UC | RUNTIME),
    Kind.RUNTIME_CODE: (MemoryType.RUNTIME_SERVICES_CODE, RAM_ATTRS | RUNTIME),
    Kind.RUNTIME_DATA: (MemoryType.RUNTIME_SERVICES_DATA, RAM_ATTRS | RUNTIME),
    Kind.BOOT_DATA: (MemoryType.BOOT_SERVICES_DATA, RAM_ATTRS),
    Kind.BOOT_CODE: (MemoryType.BOOT_SERVICES_CODE, RAM_ATTRS),
    Kind.LOADER_CODE: (MemoryType.LOADER_CODE, RAM_ATTRS),
    Kind.LOADER_DATA: (MemoryType.LOADER_DATA, RAM_ATTRS),
    Kind.MMIO_PORT: (MemoryType.MMIO_PORT_SPACE, Attribute.UC | RUNTIME),
}

# EFI type -> E820 type, as Linux's setup_e820 (drivers/firmware/efi/libstub/x86-stub.c);
# types not listed get no entry at all (its `default: continue`).
EFI_TO_E820: dict[int, int] = {
    MemoryType.RESERVED: E820Type.RESERVED,
    MemoryType.RUNTIME_SERVICES_CODE: E820Type.RESERVED,
    MemoryType.RUNTIME_SERVICES_DATA: E820Type.RESERVED,
    MemoryType.MMIO: E820Type.RESERVED,
    MemoryType.MMIO_PORT_SPACE: E820Type.RESERVED,
    MemoryType.PAL_CODE: E820Type.RESERVED,
    MemoryType.UNUSABLE: E820Type.UNUSABLE,
    MemoryType.ACPI_RECLAIM: E820Type.ACPI,
    MemoryType.LOADER_CODE: E820Type.RAM,
    MemoryType.LOADER_DATA: E820Type.RAM,
    MemoryType.BOOT_SERVICES_CODE: E820Type.RAM,
    MemoryType.BOOT_SERVICES_DATA: E820Type.RAM,
    MemoryType.CONVENTIONAL: E820Type.RAM,
    MemoryType.ACPI_NVS: E820Type.NVS,
    MemoryType.PERSISTENT: E820Type.PMEM,
}

RUNTIME_TYPES = frozenset({MemoryType.RUNTIME_SERVICES_CODE, MemoryType.RUNTIME_SERVICES_DATA,
                           MemoryType.PAL_CODE})

# Binary layouts (little-endian).
REGION = struct.Struct("<QQII")  # efird_mm_region == struct hvm_memmap_table_entry
DESCRIPTOR = struct.Struct("<IIQQQQ")  # EFI_MEMORY_DESCRIPTOR, padding included
E820_ENTRY = struct.Struct("<QQI")  # struct boot_e820_entry, packed
HVM_ENTRY = struct.Struct("<QQII")  # struct hvm_memmap_table_entry

Regions = Iterable[Sequence[int]] | bytes | bytearray | memoryview  # (addr, size, kind)
WritableBuffer = bytearray | memoryview


class Descriptor(NamedTuple):
    """One descriptor of the map, as tests and tools see it."""

    type: int
    phys_start: int
    virt_start: int
    num_pages: int
    attribute: int
    allocated: bool

    @property
    def end(self) -> int:
        return self.phys_start + self.num_pages * PAGE_SIZE


class MapInfo(NamedTuple):
    """GetMemoryMap's outputs besides the descriptors themselves."""

    status: Status
    map_size: int  # bytes written, or needed with BUFFER_TOO_SMALL
    map_key: int
    descriptor_size: int
    descriptor_version: int


class TableEntry(NamedTuple):
    """An E820 or hvm_memmap entry."""

    addr: int
    size: int
    type: int


def allocatable(memory_type: int) -> bool:
    """AllocatePages accepts it (EDK2's CoreInternalAllocatePages check)."""
    if memory_type >= OEM_MIN:
        return True
    return memory_type < MemoryType.PERSISTENT and memory_type != MemoryType.CONVENTIONAL


def pack_regions(regions: Regions) -> bytes:
    """The efird_mm_region array for (addr, size, kind) tuples; a buffer passes as is."""
    if isinstance(regions, bytes | bytearray | memoryview):
        data = bytes(regions)
        if len(data) % REGION.size:
            raise ValueError(f"region buffer length {len(data)} is not a multiple of 24")
        return data
    return b"".join(REGION.pack(addr, size, kind, 0) for addr, size, kind in regions)


def unpack_regions(regions: Regions) -> list[tuple[int, int, int]]:
    """(addr, size, kind) tuples from either form `pack_regions` accepts."""
    return [(a, s, k) for a, s, k, _ in REGION.iter_unpack(pack_regions(regions))]


def pack_descriptors(descriptors: Iterable[Descriptor | tuple[int, int, int, int, int]],
                     descriptor_size: int = DEFAULT_DESCRIPTOR_SIZE) -> bytes:
    """Descriptors (type, phys, virt, pages, attribute[, ...]) as a guest would write a
    virtual map for SetVirtualAddressMap."""
    pad = bytes(descriptor_size - DESCRIPTOR.size)
    return b"".join(DESCRIPTOR.pack(d[0], 0, d[1], d[2], d[3], d[4]) + pad for d in descriptors)


def unpack_descriptors(data: bytes, descriptor_size: int) -> list[tuple[int, int, int, int, int]]:
    """(type, phys, virt, pages, attribute) of each encoded descriptor."""
    out = []
    for off in range(0, len(data) - descriptor_size + 1, descriptor_size):
        t, _, phys, virt, pages, attr = DESCRIPTOR.unpack_from(data, off)
        out.append((t, phys, virt, pages, attr))
    return out


def _writable_view(buffer: WritableBuffer) -> memoryview:
    view = memoryview(buffer).cast("B")
    if view.readonly:
        raise BufferError("Object is not writable.")  # as cffi's from_buffer says it
    return view


def _check_ints(limit: int, *values: int) -> None:
    """The C wrapper passes these through cffi, which raises OverflowError; so do we."""
    for v in values:
        if not 0 <= v < limit:
            raise OverflowError(f"{v} does not fit the C argument")


class _D(NamedTuple):
    type: int
    flags: int
    phys: int
    virt: int
    pages: int
    attr: int

    @property
    def end(self) -> int:
        return self.phys + self.pages * PAGE_SIZE

    def same_kind(self, other: _D) -> bool:
        return (self.type, self.flags, self.attr) == (other.type, other.flags, other.attr)


def _coalesce(descs: list[_D]) -> list[_D]:
    out: list[_D] = []
    for d in descs:
        if out and out[-1].end == d.phys and out[-1].same_kind(d):
            out[-1] = out[-1]._replace(pages=out[-1].pages + d.pages)
        else:
            out.append(d)
    return out


class ReferenceMemoryMap:
    """Same API and results as efird.core.memmap.MemoryMap, in plain Python."""

    def __init__(self, capacity: int) -> None:
        _check_ints(_U64, capacity)
        self.capacity = capacity
        self.map_key = 0
        self.virtual_mode = False
        self._descs: list[_D] = []

    @property
    def count(self) -> int:
        return len(self._descs)

    def descriptors(self) -> list[Descriptor]:
        return [Descriptor(d.type, d.phys, d.virt, d.pages, d.attr, bool(d.flags & FLAG_ALLOCATED))
                for d in self._descs]

    # ---- build ---------------------------------------------------------------------------

    def build(self, regions: Regions) -> Status:
        items = unpack_regions(regions)
        self._descs = []
        self.virtual_mode = False
        self.map_key += 1
        if len(items) > self.capacity:
            return Status.OUT_OF_RESOURCES
        descs = []
        for addr, size, kind in items:
            conv = KIND_TO_EFI.get(kind)
            if conv is None or size == 0 or addr + size > PHYS_LIMIT:
                return Status.INVALID_PARAMETER
            start, end = addr, addr + size
            if kind == Kind.RAM:
                start, end = -(-start // PAGE_SIZE) * PAGE_SIZE, end // PAGE_SIZE * PAGE_SIZE
                if start >= end:
                    continue
            elif start % PAGE_SIZE or end % PAGE_SIZE:
                return Status.INVALID_PARAMETER
            descs.append(_D(int(conv[0]), 0, start, 0, (end - start) // PAGE_SIZE, int(conv[1])))
        descs.sort(key=lambda d: d.phys)
        if any(b.phys < a.end for a, b in pairwise(descs)):
            return Status.INVALID_PARAMETER
        self._descs = _coalesce(descs)
        return Status.SUCCESS

    # ---- AllocatePages / FreePages ----------------------------------------------------------

    def _set_range(self, new: _D) -> Status:
        """Make [new.phys, new.end) read `new`, whatever was there, all or nothing."""
        out = [new]
        for d in self._descs:
            if d.end <= new.phys or d.phys >= new.end:
                out.append(d)
                continue
            if d.phys < new.phys:
                out.append(d._replace(pages=(new.phys - d.phys) // PAGE_SIZE))
            if d.end > new.end:
                out.append(d._replace(phys=new.end, pages=(d.end - new.end) // PAGE_SIZE))
        out.sort(key=lambda d: d.phys)
        out = _coalesce(out)
        if len(out) > self.capacity:
            return Status.OUT_OF_RESOURCES
        self._descs = out
        self.map_key += 1
        return Status.SUCCESS

    def allocate_pages(self, alloc_type: int, memory_type: int, pages: int,
                       memory: int = 0) -> tuple[Status, int]:
        _check_ints(_U32, alloc_type, memory_type)
        _check_ints(_U64, pages, memory)
        if self.virtual_mode:
            return Status.UNSUPPORTED, memory
        if alloc_type > AllocateType.ADDRESS or not allocatable(memory_type) or pages == 0:
            return Status.INVALID_PARAMETER, memory
        size = pages * PAGE_SIZE
        source: _D | None = None
        if alloc_type == AllocateType.ADDRESS:
            if memory % PAGE_SIZE:
                return Status.INVALID_PARAMETER, memory
            start = memory
            for d in self._descs:
                if (d.type == MemoryType.CONVENTIONAL and d.phys <= start
                        and start + size <= d.end):
                    source = d
            if source is None:
                return Status.NOT_FOUND, memory
        else:
            top = PHYS_LIMIT
            if alloc_type == AllocateType.MAX_ADDRESS and memory < PHYS_LIMIT - 1:
                top = (memory + 1) & ~PAGE_MASK
            start = 0
            for d in reversed(self._descs):
                if d.type != MemoryType.CONVENTIONAL or d.phys >= top:
                    continue
                end = min(d.end, top)
                if end - d.phys >= size:
                    source, start = d, end - size
                    break
            if source is None:
                return Status.OUT_OF_RESOURCES, memory
        attr = source.attr | (RUNTIME if memory_type in RUNTIME_TYPES else 0)
        status = self._set_range(_D(memory_type, FLAG_ALLOCATED, start, 0, pages, attr))
        return status, (start if status == Status.SUCCESS else memory)

    def free_pages(self, memory: int, pages: int) -> Status:
        _check_ints(_U64, memory, pages)
        if self.virtual_mode:
            return Status.UNSUPPORTED
        if pages == 0 or memory % PAGE_SIZE:
            return Status.INVALID_PARAMETER
        end = memory + pages * PAGE_SIZE
        if end > PHYS_LIMIT:
            return Status.NOT_FOUND
        covered = memory  # every page up to here came from AllocatePages
        for d in self._descs:
            if d.end <= covered:
                continue
            if d.phys > covered or not d.flags & FLAG_ALLOCATED:
                return Status.NOT_FOUND
            covered = d.end
            if covered >= end:
                break
        if covered < end:
            return Status.NOT_FOUND
        return self._set_range(_D(MemoryType.CONVENTIONAL, 0, memory, 0, pages, RAM_ATTRS))

    # ---- GetMemoryMap ----------------------------------------------------------------------

    def get_memory_map(self, buffer: WritableBuffer,
                       descriptor_size: int = 0) -> MapInfo:
        _check_ints(_U64, descriptor_size)
        view = _writable_view(buffer)
        size = descriptor_size or DEFAULT_DESCRIPTOR_SIZE
        if size < DESCRIPTOR.size or size > MAX_DESCRIPTOR_SIZE or size % 8:
            return MapInfo(Status.INVALID_PARAMETER, len(view), 0, descriptor_size, 0)
        need = len(self._descs) * size
        if len(view) < need:
            return MapInfo(Status.BUFFER_TOO_SMALL, need, self.map_key, size, DESCRIPTOR_VERSION)
        pad = bytes(size - DESCRIPTOR.size)
        view[:need] = b"".join(DESCRIPTOR.pack(d.type, 0, d.phys, d.virt, d.pages, d.attr) + pad
                               for d in self._descs)
        return MapInfo(Status.SUCCESS, need, self.map_key, size, DESCRIPTOR_VERSION)

    def memory_map(self, descriptor_size: int = 0) -> bytes:
        size = descriptor_size or DEFAULT_DESCRIPTOR_SIZE
        buf = bytearray(len(self._descs) * size)
        info = self.get_memory_map(buf, descriptor_size)
        if info.status != Status.SUCCESS:
            raise ValueError(f"descriptor size {descriptor_size}: {info.status.name}")
        return bytes(buf)

    # ---- E820 / hvm_memmap -----------------------------------------------------------------

    def table(self) -> list[TableEntry]:
        """The entries setup_e820 would produce (the same list for E820 and hvm_memmap)."""
        out: list[TableEntry] = []
        for d in self._descs:
            t = EFI_TO_E820.get(d.type)
            if t is None:
                continue
            if out and out[-1].type == t and out[-1].addr + out[-1].size == d.phys:
                out[-1] = out[-1]._replace(size=out[-1].size + d.pages * PAGE_SIZE)
            else:
                out.append(TableEntry(d.phys, d.pages * PAGE_SIZE, int(t)))
        return out

    def _to_table(self, buffer: WritableBuffer, entry: struct.Struct) -> tuple[Status, int]:
        view = _writable_view(buffer)
        entries = self.table()
        if len(entries) > len(view) // entry.size:
            return Status.BUFFER_TOO_SMALL, len(entries)
        for i, e in enumerate(entries):
            values = (e.addr, e.size, e.type) + ((0,) if entry is HVM_ENTRY else ())
            entry.pack_into(view, i * entry.size, *values)
        return Status.SUCCESS, len(entries)

    def to_e820(self, buffer: WritableBuffer) -> tuple[Status, int]:
        return self._to_table(buffer, E820_ENTRY)

    def to_hvm_memmap(self, buffer: WritableBuffer) -> tuple[Status, int]:
        return self._to_table(buffer, HVM_ENTRY)

    # ---- SetVirtualAddressMap / ConvertPointer ---------------------------------------------

    def set_virtual_address_map(self, virtual_map: bytes | bytearray | memoryview,
                                descriptor_size: int,
                                descriptor_version: int = DESCRIPTOR_VERSION) -> Status:
        _check_ints(_U64, descriptor_size)
        _check_ints(_U32, descriptor_version)
        if self.virtual_mode:
            return Status.UNSUPPORTED
        data = bytes(virtual_map)
        if (descriptor_version != DESCRIPTOR_VERSION or descriptor_size < DESCRIPTOR.size
                or descriptor_size > MAX_DESCRIPTOR_SIZE or descriptor_size % 8
                or len(data) % descriptor_size):
            return Status.INVALID_PARAMETER
        virt_of: dict[int, int] = {}  # index of a runtime descriptor -> its virtual start
        for _, phys, virt, pages, attr in unpack_descriptors(data, descriptor_size):
            if pages == 0 or phys % PAGE_SIZE:
                return Status.INVALID_PARAMETER
            end = phys + pages * PAGE_SIZE
            holder = [i for i, d in enumerate(self._descs) if d.phys <= phys < d.end]
            if end > PHYS_LIMIT or not holder or end > self._descs[holder[0]].end:
                return Status.NOT_FOUND
            i = holder[0]
            d = self._descs[i]
            if not d.attr & RUNTIME:
                continue  # not firmware's: Linux also maps boot-services regions
            if (d.phys, d.pages) != (phys, pages) or not attr & RUNTIME or i in virt_of:
                return Status.INVALID_PARAMETER
            if virt % PAGE_SIZE or virt + pages * PAGE_SIZE > _U64:
                return Status.INVALID_PARAMETER
            virt_of[i] = virt
        if any(d.attr & RUNTIME and i not in virt_of for i, d in enumerate(self._descs)):
            return Status.NO_MAPPING
        for i, virt in virt_of.items():
            self._descs[i] = self._descs[i]._replace(virt=virt)
        self.virtual_mode = True
        return Status.SUCCESS

    def convert_pointer(self, address: int, debug_disposition: int = 0) -> tuple[Status, int]:
        _check_ints(_U64, address, debug_disposition)
        if not self.virtual_mode:
            return Status.UNSUPPORTED, address
        if address == 0:
            ok = debug_disposition & OPTIONAL_PTR
            return (Status.SUCCESS if ok else Status.INVALID_PARAMETER), address
        for d in self._descs:
            if d.phys <= address < d.end and d.attr & RUNTIME:
                return Status.SUCCESS, d.virt + address - d.phys
        return Status.NOT_FOUND, address
