"""The EFI memory-map engine (cext/memmap.c): C against the Python reference model on
random inputs, canaries around every buffer C writes, every documented error, and the
maps real q35 guests get."""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from itertools import pairwise

import pytest
from efird._cext import ffi, lib
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from efird.core.memmap import MemoryMap
from efird.core.memmap_ref import (
    DESCRIPTOR,
    E820_ENTRY,
    HVM_ENTRY,
    MAX_PAGES,
    OPTIONAL_PTR,
    PAGE_SIZE,
    PHYS_LIMIT,
    RAM_ATTRS,
    REGION,
    RUNTIME,
    AllocateType,
    Attribute,
    E820Type,
    Kind,
    MemoryType,
    ReferenceMemoryMap,
    TableEntry,
    pack_descriptors,
    unpack_descriptors,
)
from efird.efi.status import Status

P = PAGE_SIZE
Maps = MemoryMap | ReferenceMemoryMap
ANY, MAX, AT = AllocateType.ANY_PAGES, AllocateType.MAX_ADDRESS, AllocateType.ADDRESS
CONV = MemoryType.CONVENTIONAL
EFI_VA_START = 0xFFFFFFFF00000000  # Linux maps runtime regions top-down from -4 GiB
RELAXED = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def both(capacity: int) -> tuple[MemoryMap, ReferenceMemoryMap]:
    return MemoryMap(capacity), ReferenceMemoryMap(capacity)


def encoded_tables(m: Maps) -> tuple[bytes, bytes]:
    _, n = m.to_e820(bytearray())
    e820, hvm = bytearray(n * E820_ENTRY.size), bytearray(n * HVM_ENTRY.size)
    assert m.to_e820(e820) == (Status.SUCCESS, n)
    assert m.to_hvm_memmap(hvm) == (Status.SUCCESS, n)
    return bytes(e820), bytes(hvm)


def assert_same(c: MemoryMap, r: ReferenceMemoryMap) -> None:
    assert c.descriptors() == r.descriptors()
    assert (c.count, c.map_key, c.virtual_mode) == (r.count, r.map_key, r.virtual_mode)
    for size in (0, 40, 56):
        assert c.memory_map(size) == r.memory_map(size)
    assert encoded_tables(c) == encoded_tables(r)


def assert_invariants(m: Maps) -> None:
    """Sorted, disjoint, below 2^52, and no two neighbours that should have merged."""
    ds = m.descriptors()
    for d in ds:
        assert d.num_pages > 0 and d.phys_start % P == 0 and d.end <= PHYS_LIMIT
    for a, b in pairwise(ds):
        assert a.end <= b.phys_start
        if a.end == b.phys_start:
            assert (a.type, a.attribute, a.allocated) != (b.type, b.attribute, b.allocated)


# ---- strategies ------------------------------------------------------------------------

KINDS = list(Kind)


@st.composite
def layouts(draw: st.DrawFn, max_regions: int = 24, base: int | None = None) -> list[list[int]]:
    """Disjoint regions, often touching (so that merging matters), in sorted order."""
    addr = base if base is not None else draw(st.integers(0, 1 << 20)) * P
    out = []
    for _ in range(draw(st.integers(0, max_regions))):
        addr += draw(st.sampled_from([0, 0, 0, 1, 5])) * P
        pages = draw(st.integers(1, 40))
        kind = draw(st.sampled_from(KINDS + [Kind.RAM] * 6))
        out.append([addr, pages * P, int(kind)])
        addr += pages * P
    return out


@st.composite
def region_sets(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """Layouts, shuffled, sometimes broken in one of the ways build must notice."""
    regions = draw(layouts(base=draw(st.sampled_from([None, PHYS_LIMIT - (1 << 24)]))))
    if regions:
        i = draw(st.integers(0, len(regions) - 1))
        r = regions[i]
        how = draw(st.sampled_from(["none"] * 5 + ["ram_ragged", "misalign", "zero", "overlap",
                                                  "kind", "limit", "wrap"]))
        if how == "ram_ragged":  # RAM trimmed inward, even to nothing
            for r in regions:
                if r[2] == Kind.RAM:
                    head, tail = draw(st.integers(0, 5000)), draw(st.integers(0, 5000))
                    if head + tail < r[1]:
                        r[0], r[1] = r[0] + head, r[1] - head - tail
        elif how == "misalign":
            r[draw(st.integers(0, 1))] += draw(st.integers(1, P - 1))
        elif how == "zero":
            r[1] = 0
        elif how == "overlap":
            regions.append([r[0] + draw(st.integers(0, r[1] // P - 1)) * P, P,
                            draw(st.sampled_from(KINDS))])
        elif how == "kind":
            r[2] = draw(st.sampled_from([0, 8, 12, 0xFF, 0x108, 0xFFFFFFFF]))
        elif how == "limit":
            r[0] = PHYS_LIMIT - P
            r[1] = 2 * P
        elif how == "wrap":  # addr + size runs past 2^64
            r[0], r[1] = (1 << 64) - P, 2 * P
    order = draw(st.permutations(regions)) if regions else []
    return [(a, size, k) for a, size, k in order]


ALLOC_TYPES = st.sampled_from([ANY, ANY, MAX, MAX, AT, AT, AT, 3])
MEMORY_TYPES = st.sampled_from([1, 2, 2, 2, 3, 4, 4, 5, 6, 0, 8, 9, 10, 11, 12, 13, 0x70000000,
                                0x80000001, 0xFFFFFFFF, 7, 14, 15, 16, 0x6FFFFFFF])


def interesting_address(data: st.DataObject, m: Maps) -> int:
    """Mostly page addresses at or inside descriptors; now and then anything at all."""
    ds = m.descriptors()
    choice = data.draw(st.integers(0, 9))
    if choice == 0 or not ds:
        return data.draw(st.sampled_from([0, P - 1, PHYS_LIMIT, PHYS_LIMIT - P, (1 << 64) - P,
                                          data.draw(st.integers(0, (1 << 64) - 1))]))
    d = data.draw(st.sampled_from(ds))
    offset = data.draw(st.integers(0, d.num_pages)) * P
    return d.phys_start + offset + (data.draw(st.sampled_from([0] * 9 + [1, 0x800])))


# ---- C against the reference --------------------------------------------------------------

@RELAXED
@given(region_sets(), st.integers(0, 40))
def test_build_matches_reference(regions: list[tuple[int, int, int]], slack: int) -> None:
    capacity = max(0, len(regions) - 3 + slack)
    c, r = both(capacity)
    status = c.build(regions)
    assert status == r.build(regions)
    event(f"build {status.name}")
    assert_same(c, r)
    assert_invariants(c)


@RELAXED
@given(layouts(max_regions=60))
def test_build_accepts_hvm_memmap_bytes(regions: list[list[int]]) -> None:
    data = b"".join(REGION.pack(a, s, k, 0xDEAD) for a, s, k in regions)  # reserved ignored
    c, r = both(len(regions))
    assert c.build(data) == r.build(regions) == Status.SUCCESS
    assert_same(c, r)
    odd = bytearray(b"\0" + data)  # the same entries at an unaligned address
    assert c.build(memoryview(odd)[1:]) == Status.SUCCESS
    assert c.descriptors() == r.descriptors()


@RELAXED
@given(st.data())
def test_allocate_free_sequences_match_reference(data: st.DataObject) -> None:
    regions = data.draw(layouts(max_regions=12))
    capacity = data.draw(st.integers(len(regions), len(regions) + 10))
    c, r = both(capacity)
    assert c.build(regions) == r.build(regions) == Status.SUCCESS
    allocated: list[tuple[int, int]] = []
    for _ in range(data.draw(st.integers(1, 25))):
        if bool(allocated) and data.draw(st.booleans()):
            base, pages = data.draw(st.sampled_from(allocated))
            first = data.draw(st.integers(0, pages - 1))
            count = data.draw(st.integers(1, pages - first + 2))  # may run past the end
            address = base + first * P
            if data.draw(st.integers(0, 5)) == 0:
                address, count = interesting_address(data, r), data.draw(st.integers(0, 9))
            status = c.free_pages(address, count)
            assert status == r.free_pages(address, count)
            event(f"free {status.name}")
        else:
            kind, memory_type = data.draw(ALLOC_TYPES), data.draw(MEMORY_TYPES)
            pages = data.draw(st.sampled_from([0, 1, 1, 2, 3, 8, 40, 200, MAX_PAGES + 1]))
            memory = interesting_address(data, r)
            result = c.allocate_pages(kind, memory_type, pages, memory)
            assert result == r.allocate_pages(kind, memory_type, pages, memory)
            event(f"allocate {AllocateType(kind).name if kind < 3 else kind} {result[0].name}")
            if result[0] == Status.SUCCESS:
                allocated.append((result[1], pages))
        assert c.descriptors() == r.descriptors()
        assert c.map_key == r.map_key
    assert_same(c, r)
    assert_invariants(c)


def runtime_virtual_map(m: Maps, descriptor_size: int) -> list[tuple[int, int, int, int, int]]:
    """What Linux x86-64 passes: runtime and boot-services regions, in reverse order, runtime
    ones at top-down addresses below -4 GiB."""
    out, va = [], EFI_VA_START
    for t, phys, _, pages, attr in reversed(unpack_descriptors(m.memory_map(descriptor_size),
                                                               descriptor_size)):
        if attr & RUNTIME:
            va -= pages * P
            out.append((t, phys, va, pages, attr))
        elif t in (MemoryType.BOOT_SERVICES_CODE, MemoryType.BOOT_SERVICES_DATA):
            out.append((t, phys, phys, pages, attr))
    return out


@RELAXED
@given(st.data())
def test_virtual_map_and_convert_pointer_match_reference(data: st.DataObject) -> None:
    regions = data.draw(layouts(max_regions=16))
    c, r = both(len(regions) + 8)
    assert c.build(regions) == r.build(regions) == Status.SUCCESS
    for _ in range(data.draw(st.integers(0, 3))):
        memory_type = data.draw(st.sampled_from([5, 6, 13, 2, 4]))
        assert (c.allocate_pages(ANY, memory_type, 2)
                == r.allocate_pages(ANY, memory_type, 2))
    size = data.draw(st.sampled_from([40, 48, 64]))
    vmap = runtime_virtual_map(r, size)
    how = data.draw(st.sampled_from(["none"] * 4 + ["drop", "dup", "virt", "pages", "attr",
                                                    "outside", "inner", "zero", "phys",
                                                    "wrap", "shuffle"]))
    if vmap and how != "none":
        i = data.draw(st.integers(0, len(vmap) - 1))
        t, phys, virt, pages, attr = vmap[i]
        if how == "drop":
            del vmap[i]
        elif how == "dup":
            vmap.append(vmap[i])
        elif how == "virt":
            vmap[i] = (t, phys, virt + data.draw(st.integers(1, P - 1)), pages, attr)
        elif how == "pages":
            vmap[i] = (t, phys, virt, pages + data.draw(st.sampled_from([-1, 1])), attr)
        elif how == "attr":
            vmap[i] = (t, phys, virt, pages, attr & ~RUNTIME)
        elif how == "outside":
            vmap.append((0, PHYS_LIMIT - P, 0, 1, RUNTIME))
        elif how == "inner" and pages > 1:
            vmap.append((t, phys + P, virt, 1, attr))
        elif how == "zero":
            vmap[i] = (t, phys, virt, 0, attr)
        elif how == "phys":
            vmap[i] = (t, phys + 8, virt, pages, attr)
        elif how == "wrap":
            vmap[i] = (t, phys, (1 << 64) - P, pages + 1, attr) if attr & RUNTIME else vmap[i]
        elif how == "shuffle":
            vmap = data.draw(st.permutations(vmap))
    raw = pack_descriptors(vmap, size)
    version = data.draw(st.sampled_from([1] * 9 + [2]))
    if data.draw(st.integers(0, 9)) == 0:
        raw += b"\0" * 8  # not a whole number of descriptors
    status = c.set_virtual_address_map(raw, size, version)
    assert status == r.set_virtual_address_map(raw, size, version)
    event(f"svam {how} {status.name}")
    assert_same(c, r)
    for _ in range(8):
        address = interesting_address(data, r)
        disposition = data.draw(st.sampled_from([0, OPTIONAL_PTR]))
        converted = c.convert_pointer(address, disposition)
        assert converted == r.convert_pointer(address, disposition)
        event(f"convert {converted[0].name}")
    again = c.set_virtual_address_map(raw, size, version)
    assert again == r.set_virtual_address_map(raw, size, version)
    if status == Status.SUCCESS:
        assert again == Status.UNSUPPORTED


# ---- nothing is written outside the buffers given -----------------------------------------

GUARD = 64


def guarded(size: int, fill: int = 0x5A) -> tuple[bytearray, memoryview]:
    buf = bytearray(b"\xA5" * GUARD + bytes([fill]) * size + b"\xC3" * GUARD)
    return buf, memoryview(buf)[GUARD:GUARD + size]


def assert_guards(buf: bytearray) -> None:
    assert buf[:GUARD] == b"\xA5" * GUARD
    assert buf[-GUARD:] == b"\xC3" * GUARD


@RELAXED
@given(layouts(max_regions=30), st.sampled_from([0, 40, 48, 56, 4096]), st.integers(-60, 60))
def test_get_memory_map_stays_inside_buffer(regions: list[list[int]], descriptor_size: int,
                                             delta: int) -> None:
    m = MemoryMap(len(regions))
    assert m.build(regions) == Status.SUCCESS
    need = m.count * (descriptor_size or 48)
    size = max(0, need + delta)
    buf, view = guarded(size)
    info = m.get_memory_map(view, descriptor_size)
    assert_guards(buf)
    assert info.map_size == need and info.descriptor_version == 1
    body = bytes(buf[GUARD:GUARD + size])
    if size < need:
        assert info.status == Status.BUFFER_TOO_SMALL
        assert body == b"\x5A" * size  # nothing written at all
    else:
        assert info.status == Status.SUCCESS
        assert body[need:] == b"\x5A" * (size - need)
        assert body[:need] == reference_of(regions).memory_map(descriptor_size)


def reference_of(regions: list[list[int]]) -> ReferenceMemoryMap:
    r = ReferenceMemoryMap(len(regions))
    assert r.build(regions) == Status.SUCCESS
    return r


@RELAXED
@given(layouts(max_regions=30), st.integers(-3, 3))
def test_tables_stay_inside_buffer(regions: list[list[int]], delta: int) -> None:
    m = MemoryMap(len(regions))
    assert m.build(regions) == Status.SUCCESS
    expect = reference_of(regions).table()
    for convert, entry in ((m.to_e820, E820_ENTRY), (m.to_hvm_memmap, HVM_ENTRY)):
        capacity = max(0, len(expect) + delta)
        for size in (capacity * entry.size, capacity * entry.size + entry.size - 1):
            buf, view = guarded(size)
            status, count = convert(view)
            assert_guards(buf)
            assert count == len(expect)
            body = bytes(buf[GUARD:GUARD + size])
            if capacity < len(expect):
                assert status == Status.BUFFER_TOO_SMALL and body == b"\x5A" * size
            else:
                assert status == Status.SUCCESS
                got = [TableEntry(*entry.unpack_from(body, i * entry.size)[:3])
                       for i in range(count)]
                assert got == expect
                if entry is HVM_ENTRY:  # reserved fields written as zero
                    assert all(HVM_ENTRY.unpack_from(body, i * 24)[3] == 0 for i in range(count))
                assert body[count * entry.size:] == b"\x5A" * (size - count * entry.size)


class RawMap:
    """A map over a descriptor array with a canary descriptor on each side."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = ffi.new("efird_mm_desc[]", capacity + 2)
        self.canary = bytes(range(40))
        ffi.memmove(self.raw, self.canary, 40)
        ffi.memmove(self.raw + capacity + 1, self.canary, 40)
        ffi.memmove(self.raw + 1, b"\xEE" * 40 * capacity, 40 * capacity)
        self.map = ffi.new("efird_mm_map *")
        assert lib.efird_mm_init(self.map, self.raw + 1, capacity) == 0

    def check(self) -> None:
        assert bytes(ffi.buffer(self.raw, 40)) == self.canary
        assert bytes(ffi.buffer(self.raw + self.capacity + 1, 40)) == self.canary
        assert self.map.count <= self.capacity


@RELAXED
@given(st.data())
def test_descriptor_array_is_never_overrun(data: st.DataObject) -> None:
    regions = data.draw(layouts(max_regions=10))
    capacity = data.draw(st.integers(0, len(regions) + 4))
    m = RawMap(capacity)
    packed = b"".join(REGION.pack(a, s, k, 0) for a, s, k in regions)
    source = ffi.from_buffer("efird_mm_region[]", packed) if packed else ffi.NULL
    lib.efird_mm_build(m.map, source, len(regions))
    m.check()
    memory = ffi.new("uint64_t *")
    live: list[tuple[int, int]] = []
    for _ in range(data.draw(st.integers(1, 40))):
        if bool(live) and data.draw(st.booleans()):
            base, pages = data.draw(st.sampled_from(live))
            k = data.draw(st.integers(0, pages - 1))
            lib.efird_mm_free_pages(m.map, base + k * P, 1)  # holes split descriptors
        else:
            memory[0] = data.draw(st.integers(0, 1 << 40)) & ~(P - 1)
            kind = data.draw(st.sampled_from([ANY, MAX, AT]))
            memory_type = data.draw(st.sampled_from([1, 2, 4, 5]))
            pages = data.draw(st.integers(1, 5))
            if lib.efird_mm_allocate_pages(m.map, kind, memory_type, pages, memory) == 0:
                live.append((memory[0], pages))
        m.check()


# ---- every documented error --------------------------------------------------------------

LOW: list[tuple[int, int, int]] = [
    (0x0, 0x100000, Kind.RAM), (0x100000, 0x10000, Kind.RUNTIME_CODE),
    (0x110000, 0x10000, Kind.RUNTIME_DATA), (0x120000, 0x2000, Kind.BOOT_DATA),
    (0x200000, 0x200000, Kind.RAM), (0xFEC00000, P, Kind.MMIO)]


def built(regions: list[tuple[int, int, int]] = LOW, capacity: int = 32) -> list[Maps]:
    maps: list[Maps] = [MemoryMap(capacity), ReferenceMemoryMap(capacity)]
    for m in maps:
        assert m.build(regions) == Status.SUCCESS
    return maps


BAD_REGIONS: dict[str, list[tuple[int, int, int]]] = {
    "unknown kind": [(0, P, 0x1FF)],
    "kind 0": [(0, P, 0)],
    "zero size": [(0, 0, Kind.RESERVED)],
    "zero-size RAM": [(0, 0, Kind.RAM)],
    "misaligned start": [(0x800, P, Kind.RESERVED)],
    "misaligned size": [(0, P + 1, Kind.ACPI)],
    "misaligned runtime": [(0, 0x1800, Kind.RUNTIME_CODE)],
    "overlap": [(0, 4 * P, Kind.RAM), (2 * P, 4 * P, Kind.RESERVED)],
    "same start": [(0, P, Kind.NVS), (0, P, Kind.NVS)],
    "contains": [(0, 8 * P, Kind.MMIO), (2 * P, P, Kind.MMIO)],
    "past 2^52": [(PHYS_LIMIT - P, 2 * P, Kind.RAM)],
    "at 2^52": [(PHYS_LIMIT, P, Kind.RESERVED)],
    "wraps 2^64": [((1 << 64) - P, 2 * P, Kind.RESERVED)],
}


@pytest.mark.parametrize("case", sorted(BAD_REGIONS))
def test_build_rejects(case: str) -> None:
    for m in (MemoryMap(8), ReferenceMemoryMap(8)):
        key = m.map_key
        assert m.build(BAD_REGIONS[case]) == Status.INVALID_PARAMETER, case
        assert m.count == 0 and m.map_key == key + 1  # an empty map, never a partial one


def test_build_rules() -> None:
    for m in (MemoryMap(8), ReferenceMemoryMap(8)):
        # RAM is trimmed inward; what remains may then touch a page-aligned neighbour.
        assert m.build([(0x800, 3 * P, Kind.RAM), (3 * P, P, Kind.RESERVED)]) == Status.SUCCESS
        assert [(d.phys_start, d.num_pages) for d in m.descriptors()] == [(P, 2), (3 * P, 1)]
        assert m.build([(0x10, 0xFF0, Kind.RAM)]) == Status.SUCCESS and m.count == 0
        assert m.build([(P, P, 1)] * 9) == Status.OUT_OF_RESOURCES  # capacity 8
        assert m.build([]) == Status.SUCCESS and m.count == 0
        # Up to the last page below 2^52.
        assert m.build([(PHYS_LIMIT - P, P, Kind.RAM)]) == Status.SUCCESS
        # Equal neighbours merge; different attributes or types do not.
        assert m.build([(0, P, 1), (P, P, 1), (2 * P, P, 2), (3 * P, P, 6), (4 * P, P, 0x101),
                        (5 * P, P, 0x102)]) == Status.SUCCESS
        assert [(d.type, d.num_pages) for d in m.descriptors()] == [(7, 2), (0, 2), (5, 1), (6, 1)]


def test_kinds_map_to_efi_types() -> None:
    regions = [(i * 16 * P, P, k) for i, k in enumerate(Kind)]
    c, r = both(len(regions))
    assert c.build(regions) == r.build(regions) == Status.SUCCESS
    got = {Kind(regions[i][2]).name: (d.type, d.attribute)
           for i, d in enumerate(c.descriptors())}
    wb = RAM_ATTRS
    assert got == {
        "RAM": (7, wb), "RESERVED": (0, 0), "ACPI": (9, wb), "NVS": (10, wb),
        "UNUSABLE": (8, wb), "DISABLED": (0, 0), "PERSISTENT": (14, wb | Attribute.NV),
        "MMIO": (11, Attribute.UC | RUNTIME), "RUNTIME_CODE": (5, wb | RUNTIME),
        "RUNTIME_DATA": (6, wb | RUNTIME), "BOOT_DATA": (4, wb), "BOOT_CODE": (3, wb),
        "LOADER_CODE": (1, wb), "LOADER_DATA": (2, wb), "MMIO_PORT": (12, Attribute.UC | RUNTIME),
    }
    assert [e.type for e in c.table()] == [1, 2, 3, 4, 5, 2, 7, 2, 2, 2, 1, 1, 1, 1, 2]


def test_tables_follow_linux_efi_stub() -> None:
    """setup_e820: loader and boot-services memory is RAM, runtime memory reserved, equal
    neighbours merge, and OEM / OS-loader types get no entry at all (`default: continue`)."""
    for m in built():
        assert m.allocate_pages(AT, MemoryType.LOADER_CODE, 1, 0x200000)[0] == Status.SUCCESS
        assert m.allocate_pages(AT, 0x80000000, 1, 0x201000)[0] == Status.SUCCESS
        assert m.allocate_pages(AT, 0x70000000, 1, 0x202000)[0] == Status.SUCCESS
        assert m.allocate_pages(AT, MemoryType.RUNTIME_SERVICES_DATA, 1, 0x203000)[0] == 0
        assert m.allocate_pages(AT, MemoryType.ACPI_NVS, 1, 0x204000)[0] == Status.SUCCESS
        assert m.allocate_pages(AT, MemoryType.UNUSABLE, 1, 0x205000)[0] == Status.SUCCESS
        ram, res = E820Type.RAM, E820Type.RESERVED
        assert m.table() == [TableEntry(*e) for e in [
            (0, 0x100000, ram), (0x100000, 0x20000, res),  # runtime code + data
            (0x120000, 0x2000, ram),  # boot-services data
            (0x200000, P, ram),  # loader code; the OS and OEM pages after it are a hole
            (0x203000, P, res), (0x204000, P, E820Type.NVS), (0x205000, P, E820Type.UNUSABLE),
            (0x206000, 0x1FA000, ram), (0xFEC00000, P, res)]]


def test_python_constants_match_the_header() -> None:
    for k in Kind:
        assert getattr(lib, f"EFIRD_MM_KIND_{k.name}") == k
    assert lib.EFIRD_MM_PHYS_LIMIT == PHYS_LIMIT and lib.EFIRD_MM_PAGE_SIZE == P
    assert lib.EFIRD_MM_ATTR_RUNTIME == RUNTIME and lib.EFIRD_MM_DEFAULT_DESC_SIZE == 48
    for name in ("INVALID_PARAMETER", "UNSUPPORTED", "BUFFER_TOO_SMALL", "OUT_OF_RESOURCES",
                 "NOT_FOUND", "NO_MAPPING"):
        assert getattr(lib, f"EFIRD_MM_{name}") == Status[name]
    assert ffi.sizeof("efird_mm_desc") == DESCRIPTOR.size == lib.efird_abi_struct_size(
        b"EFI_MEMORY_DESCRIPTOR")
    assert ffi.sizeof("efird_mm_e820_entry") == 20 and ffi.sizeof("efird_mm_hvm_entry") == 24
    assert ffi.sizeof("efird_mm_region") == REGION.size


ALLOC_ERRORS: list[tuple[str, int, int, int, int, Status]] = [
    ("pages 0", ANY, 2, 0, 0, Status.INVALID_PARAMETER),
    ("pages 0 at", AT, 2, 0, 0x200000, Status.INVALID_PARAMETER),
    ("misaligned address", AT, 2, 1, 0x200800, Status.INVALID_PARAMETER),
    ("bad allocate type", 3, 2, 1, 0, Status.INVALID_PARAMETER),
    ("conventional", ANY, 7, 1, 0, Status.INVALID_PARAMETER),
    ("persistent", ANY, 14, 1, 0, Status.INVALID_PARAMETER),
    ("unaccepted", ANY, 15, 1, 0, Status.INVALID_PARAMETER),
    ("type 16", ANY, 16, 1, 0, Status.INVALID_PARAMETER),
    ("below OEM range", ANY, 0x6FFFFFFF, 1, 0, Status.INVALID_PARAMETER),
    ("no room", ANY, 2, 0x1000, 0, Status.OUT_OF_RESOURCES),
    ("no room below", MAX, 2, 0x101, 0x1FFFFF, Status.OUT_OF_RESOURCES),
    ("below the first page", MAX, 2, 1, 0xFFE, Status.OUT_OF_RESOURCES),
    ("too many pages", ANY, 2, MAX_PAGES + 1, 0, Status.OUT_OF_RESOURCES),
    ("address taken", AT, 2, 1, 0x100000, Status.NOT_FOUND),
    ("address in a hole", AT, 2, 1, 0x130000, Status.NOT_FOUND),
    ("address runs out", AT, 2, 2, 0x3FF000, Status.NOT_FOUND),
    ("address past 2^52", AT, 2, 1, PHYS_LIMIT, Status.NOT_FOUND),
    ("address wraps", AT, 2, 2, (1 << 64) - P, Status.NOT_FOUND),
]


@pytest.mark.parametrize("case", ALLOC_ERRORS, ids=[c[0] for c in ALLOC_ERRORS])
def test_allocate_pages_rejects(case: tuple[str, int, int, int, int, Status]) -> None:
    _, kind, memory_type, pages, memory, expected = case
    for m in built():
        before, key = m.descriptors(), m.map_key
        assert m.allocate_pages(kind, memory_type, pages, memory) == (expected, memory)
        assert m.descriptors() == before and m.map_key == key


@pytest.mark.parametrize("memory_type", [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13,
                                         0x70000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_every_allocatable_type(memory_type: int) -> None:
    for m in built():
        status, address = m.allocate_pages(ANY, memory_type, 3)
        assert (status, address) == (Status.SUCCESS, 0x3FD000)  # top-down
        d = next(d for d in m.descriptors() if d.phys_start == address)
        runtime = RUNTIME if memory_type in (5, 6, 13) else 0
        assert (d.type, d.num_pages, d.attribute, d.allocated) == (memory_type, 3,
                                                                   RAM_ATTRS | runtime, True)
        assert m.free_pages(address, 3) == Status.SUCCESS
        assert m.descriptors() == built()[1].descriptors()


def test_allocation_placement() -> None:
    for m in built():
        assert m.allocate_pages(ANY, 2, 1) == (Status.SUCCESS, 0x3FF000)
        # MaxAddress: the highest fit whose last byte is <= the limit.
        assert m.allocate_pages(MAX, 2, 1, 0x2FFFFF) == (Status.SUCCESS, 0x2FF000)
        assert m.allocate_pages(MAX, 2, 1, 0x2FFFFE) == (Status.SUCCESS, 0x2FE000)
        assert m.allocate_pages(MAX, 2, 2, 0xFFFFF) == (Status.SUCCESS, 0xFE000)
        assert m.allocate_pages(MAX, 2, 0x200, 0xFFFFFFFFFFFFFFFF)[0] == Status.OUT_OF_RESOURCES
        assert m.allocate_pages(AT, 1, 1, 0) == (Status.SUCCESS, 0)
        assert m.allocate_pages(AT, 1, 1, 0) == (Status.NOT_FOUND, 0)
        # Adjacent allocations of one type merge; a different type does not.
        assert m.allocate_pages(AT, 1, 1, P) == (Status.SUCCESS, P)
        assert m.allocate_pages(AT, 2, 1, 2 * P) == (Status.SUCCESS, 2 * P)
        assert [(d.type, d.num_pages) for d in m.descriptors()[:3]] == [(1, 2), (2, 1), (7, 0xFB)]
    c, r = built()
    assert_same(c, r)  # type: ignore[arg-type]


def test_descriptor_array_full() -> None:
    for capacity in (7, 8):
        for m in built(capacity=capacity):
            key = m.map_key
            status, _ = m.allocate_pages(AT, 2, 3, 0x300000)  # one range becomes three: 6 -> 8
            if capacity == 7:
                assert status == Status.OUT_OF_RESOURCES
                assert m.map_key == key and m.descriptors() == built()[0].descriptors()
                continue
            assert status == Status.SUCCESS and m.count == 8
            # growing the allocation at its end needs no new descriptor
            assert m.allocate_pages(AT, 2, 1, 0x303000) == (Status.SUCCESS, 0x303000)
            assert m.count == 8
            # a hole in its middle needs two that the array does not have
            assert m.free_pages(0x301000, 1) == Status.OUT_OF_RESOURCES
            assert m.free_pages(0x300000, 4) == Status.SUCCESS and m.count == 6


def test_free_pages_rules() -> None:
    for m in built():
        assert m.free_pages(0x200000, 0) == Status.INVALID_PARAMETER
        assert m.free_pages(0x200800, 1) == Status.INVALID_PARAMETER
        assert m.free_pages(0x200000, 1) == Status.NOT_FOUND  # free memory
        assert m.free_pages(0x120000, 1) == Status.NOT_FOUND  # toolstack's boot data
        assert m.free_pages(0x100000, 1) == Status.NOT_FOUND  # runtime code
        assert m.free_pages(0x130000, 1) == Status.NOT_FOUND  # a hole
        assert m.free_pages(PHYS_LIMIT, 1) == Status.NOT_FOUND
        assert m.free_pages((1 << 64) - P, 2) == Status.NOT_FOUND
        a = m.allocate_pages(AT, 2, 4, 0x200000)
        b = m.allocate_pages(AT, 4, 4, 0x204000)
        assert a[0] == b[0] == Status.SUCCESS
        assert m.free_pages(0x200000, 9) == Status.NOT_FOUND  # one page too many
        key = m.map_key
        assert m.free_pages(0x202000, 4) == Status.SUCCESS  # across two allocations
        assert m.map_key == key + 1
        assert m.free_pages(0x202000, 1) == Status.NOT_FOUND  # twice
        assert m.free_pages(0x200000, 2) == Status.SUCCESS
        assert m.free_pages(0x206000, 2) == Status.SUCCESS
        assert m.descriptors() == built()[0].descriptors()  # merged back into one range


def test_get_memory_map_rules() -> None:
    for m in built():
        need = m.count * 48
        info = m.get_memory_map(bytearray(0))
        assert info == (Status.BUFFER_TOO_SMALL, need, m.map_key, 48, 1)
        assert m.get_memory_map(bytearray(need - 1), 0).status == Status.BUFFER_TOO_SMALL
        assert m.get_memory_map(bytearray(need + 5)) == (Status.SUCCESS, need, m.map_key, 48, 1)
        for bad in (8, 39, 44, 4104):
            assert m.get_memory_map(bytearray(9000), bad) == (Status.INVALID_PARAMETER, 9000, 0,
                                                             bad, 0)
        info = m.get_memory_map(bytearray(m.count * 4096), 4096)
        assert info == (Status.SUCCESS, m.count * 4096, m.map_key, 4096, 1)
    c, _ = built()
    first = DESCRIPTOR.unpack_from(c.memory_map(64))
    assert first == (7, 0, 0, 0, 0x100, RAM_ATTRS)
    assert c.memory_map(64)[40:64] == bytes(24)


def test_null_pointers() -> None:
    m = ffi.new("efird_mm_map *")
    descs = ffi.new("efird_mm_desc[]", 4)
    u64 = ffi.new("uint64_t[3]")
    u32 = ffi.new("uint32_t *")
    inv, null = Status.INVALID_PARAMETER, ffi.NULL
    assert lib.efird_mm_init(null, descs, 4) == inv
    assert lib.efird_mm_init(m, null, 4) == inv
    assert lib.efird_mm_init(m, descs, 4) == 0
    assert lib.efird_mm_build(null, null, 0) == inv
    assert lib.efird_mm_build(m, null, 1) == inv
    assert lib.efird_mm_build(m, null, 0) == 0
    region = ffi.new("efird_mm_region *", {"addr": 0, "size": 4 * P, "kind": 1})
    assert lib.efird_mm_build(m, region, 1) == 0
    assert lib.efird_mm_allocate_pages(m, 0, 2, 1, null) == inv
    assert lib.efird_mm_allocate_pages(null, 0, 2, 1, u64) == inv
    assert lib.efird_mm_free_pages(null, 0, 1) == inv
    u64[0], u64[2] = 1000, 0
    assert lib.efird_mm_get_memory_map(m, null, u64, u64 + 1, u64 + 2, u32) == inv
    u64[0] = 0  # too small: NULL is fine, the caller is asking for the size
    assert lib.efird_mm_get_memory_map(m, null, u64, u64 + 1, u64 + 2, u32) == (
        Status.BUFFER_TOO_SMALL)
    assert u64[0] == 48 and u64[2] == 48 and u32[0] == 1
    for outs in ((null, u64 + 1, u64 + 2, u32), (u64, null, u64 + 2, u32),
                 (u64, u64 + 1, null, u32), (u64, u64 + 1, u64 + 2, null)):
        assert lib.efird_mm_get_memory_map(m, null, *outs) == inv
    u64[0] = 1
    assert lib.efird_mm_to_e820(m, null, u64) == inv
    assert lib.efird_mm_to_hvm_memmap(m, null, u64) == inv
    assert lib.efird_mm_to_e820(m, null, null) == inv
    u64[0] = 0
    assert lib.efird_mm_to_e820(m, null, u64) == Status.BUFFER_TOO_SMALL and u64[0] == 1
    assert lib.efird_mm_set_virtual_address_map(m, null, 48, 48, 1) == inv
    assert lib.efird_mm_set_virtual_address_map(null, null, 0, 48, 1) == inv
    assert lib.efird_mm_convert_pointer(m, 0, null) == inv
    # a map whose count exceeds its capacity is refused outright
    m.count = 5
    assert lib.efird_mm_free_pages(m, 0, 1) == inv


def linux_virtual_map(m: Maps) -> bytes:
    return pack_descriptors(runtime_virtual_map(m, 48), 48)


def test_set_virtual_address_map_rules() -> None:
    for m in built():
        runtime = [d for d in m.descriptors() if d.attribute & RUNTIME]
        assert [d.phys_start for d in runtime] == [0x100000, 0x110000, 0xFEC00000]
        good = linux_virtual_map(m)

        def svam(entries: list[tuple[int, int, int, int, int]], size: int = 48,
                 version: int = 1, m: Maps = m) -> Status:
            return m.set_virtual_address_map(pack_descriptors(entries, size), size, version)

        entries = unpack_descriptors(good, 48)
        assert m.set_virtual_address_map(good, 48, 2) == Status.INVALID_PARAMETER
        assert m.set_virtual_address_map(good, 32, 1) == Status.INVALID_PARAMETER
        assert m.set_virtual_address_map(good[:-8], 48, 1) == Status.INVALID_PARAMETER
        assert svam(entries, 44) == Status.INVALID_PARAMETER
        assert svam(entries[1:]) == Status.NO_MAPPING
        assert svam([]) == Status.NO_MAPPING
        i = next(k for k, e in enumerate(entries) if e[1] == 0x100000)  # runtime code, 16 pages
        t, phys, virt, pages, attr = entries[i]
        assert pages == 16
        for broken, expected in [
            ((t, phys, virt + 0x10, pages, attr), Status.INVALID_PARAMETER),
            ((t, phys, virt, pages - 1, attr), Status.INVALID_PARAMETER),
            ((t, phys, virt, pages, attr & ~RUNTIME), Status.INVALID_PARAMETER),
            ((t, phys, virt, 0, attr), Status.INVALID_PARAMETER),
            ((t, phys + 1, virt, pages, attr), Status.INVALID_PARAMETER),
            ((t, phys, (1 << 64) - 15 * P, pages, attr), Status.INVALID_PARAMETER),  # wraps
            ((t, 0x140000, virt, 1, attr), Status.NOT_FOUND),  # a hole
            ((t, PHYS_LIMIT, virt, 1, attr), Status.NOT_FOUND),
        ]:
            assert svam([*entries[:i], broken, *entries[i + 1:]]) == expected, broken
        assert svam(entries + entries[:1]) == Status.INVALID_PARAMETER  # twice
        # A range inside a runtime region is not that region.
        assert svam([*entries, (t, phys + P, virt, 1, attr)]) == Status.INVALID_PARAMETER
        assert not m.virtual_mode and all(d.virt_start == 0 for d in m.descriptors())
        assert m.convert_pointer(0x100000) == (Status.UNSUPPORTED, 0x100000)
        # Linux also hands over boot-services regions and ranges it reserved inside them.
        extra = [(4, 0x120000, 0x120000, 1, RUNTIME | RAM_ATTRS), (4, 0x121000, 0, 1, 0xF)]
        assert svam(entries[::-1] + extra) == Status.SUCCESS and m.virtual_mode
        virt_of = {d.phys_start: d.virt_start for d in m.descriptors()}
        assert virt_of[0x120000] == 0 and virt_of[0] == 0
        assert virt_of[0xFEC00000] == EFI_VA_START - P
        assert virt_of[0x100000] == EFI_VA_START - P - 0x10000 - 0x10000
        assert svam(entries) == Status.UNSUPPORTED
        assert m.allocate_pages(ANY, 2, 1) == (Status.UNSUPPORTED, 0)
        assert m.free_pages(0x120000, 1) == Status.UNSUPPORTED
        # ConvertPointer
        assert m.convert_pointer(0x110010) == (Status.SUCCESS, virt_of[0x110000] + 0x10)
        assert m.convert_pointer(0xFEC00FFF) == (Status.SUCCESS, EFI_VA_START - 1)
        assert m.convert_pointer(0x120000) == (Status.NOT_FOUND, 0x120000)  # boot data
        assert m.convert_pointer(0x130000) == (Status.NOT_FOUND, 0x130000)  # hole
        assert m.convert_pointer(0x1000) == (Status.NOT_FOUND, 0x1000)
        assert m.convert_pointer(0) == (Status.INVALID_PARAMETER, 0)
        assert m.convert_pointer(0, OPTIONAL_PTR) == (Status.SUCCESS, 0)
        # the virtual starts are in the encoded map, for the kexec runtime map
        assert any(v == EFI_VA_START - P for _, _, v, _, _ in unpack_descriptors(
            m.memory_map(), 48))
    assert built()[0].set_virtual_address_map(b"", 48) == Status.NO_MAPPING
    assert MemoryMap(0).set_virtual_address_map(b"", 48) == Status.SUCCESS  # nothing to map


def test_build_resets_virtual_mode() -> None:
    for m in built():
        assert m.set_virtual_address_map(linux_virtual_map(m), 48) == Status.SUCCESS
        assert m.build(LOW) == Status.SUCCESS
        assert not m.virtual_mode and all(d.virt_start == 0 for d in m.descriptors())


def test_programmer_errors_raise() -> None:
    for m in built():
        with pytest.raises(OverflowError):
            m.allocate_pages(ANY, 1 << 32, 1)
        with pytest.raises(OverflowError):
            m.free_pages(-P, 1)
        with pytest.raises(ValueError):
            m.build(b"\0" * 25)
        with pytest.raises(ValueError):
            m.memory_map(44)
    for m in built():
        with pytest.raises(BufferError):
            m.get_memory_map(b"read-only")  # type: ignore[arg-type]
        with pytest.raises(BufferError):
            m.to_e820(b"read-only" * 30)  # type: ignore[arg-type]


# ---- the maps real guests see -------------------------------------------------------------

GiB = 1 << 30
RUNTIME_CODE, RUNTIME_DATA = 0x7FF00000, 0x7FF40000


def q35_layout(ram: int, amd: bool = False) -> list[tuple[int, int, int]]:
    """What a toolstack passes for a QEMU q35 guest with `ram` bytes (hw/i386/pc_q35.c,
    pc.c): RAM below 4 GiB up to 2 GiB once the guest has >= 2.75 GiB (lowmem 0x80000000,
    else 0xB0000000), the rest from 4 GiB, or from 1 TiB past AMD's HyperTransport hole
    (0xFD00000000, 12 GiB) when it would reach it on an AMD host; the ECAM window
    (MCH_HOST_BRIDGE_PCIEXBAR_DEFAULT 0xB0000000, 256 MiB), IOAPIC, HPET, LAPIC, the KVM
    identity map/TSS pages (0xFEFFC000, 16 KiB, reserved in QEMU's E820) and the flash.
    The legacy VGA/ROM hole 0xA0000-0xFFFFF is left out; low RAM ends at the classic
    0x9FC00, which the map trims to a page. The last 1 MiB of low RAM holds efird's runtime
    code and data, then ACPI NVS and tables."""
    lowmem = 0x80000000 if ram >= 0xB0000000 else 0xB0000000
    below, above = min(ram, lowmem), max(0, ram - lowmem)
    high, top = 1 << 32, below - 0x100000  # efird's last 1 MiB of low RAM
    regions: list[tuple[int, int, int]] = [
        (0, 0x9FC00, Kind.RAM),
        (0x100000, top - 0x100000, Kind.RAM),
        (top, 0x40000, Kind.RUNTIME_CODE),
        (top + 0x40000, 0x40000, Kind.RUNTIME_DATA),
        (top + 0x80000, 0x20000, Kind.NVS),
        (top + 0xA0000, 0x60000, Kind.ACPI),
        (0xB0000000, 0x10000000, Kind.MMIO),
        (0xFEC00000, P, Kind.RESERVED),
        (0xFED00000, P, Kind.RESERVED),
        (0xFEE00000, 0x100000, Kind.RESERVED),
        (0xFEFFC000, 0x4000, Kind.RESERVED),
        (0xFFC00000, 0x400000, Kind.MMIO),
    ]
    if above:
        if amd and high + above > 0xFD00000000:
            regions.append((0xFD00000000, 0x300000000, Kind.RESERVED))
            high = 1 << 40
        regions.append((high, above, Kind.RAM))
    return regions


def test_q35_4gib_guest() -> None:
    regions = q35_layout(4 * GiB)
    c, r = both(64)
    assert c.build(list(reversed(regions))) == r.build(regions) == Status.SUCCESS
    assert_same(c, r)
    wb, uc_rt = RAM_ATTRS, Attribute.UC | RUNTIME
    assert [(d.type, d.phys_start, d.num_pages, d.attribute) for d in c.descriptors()] == [
        (CONV, 0x0, 0x9F, wb),
        (CONV, 0x100000, 0x7FE00, wb),
        (5, RUNTIME_CODE, 0x40, wb | RUNTIME),
        (6, RUNTIME_DATA, 0x40, wb | RUNTIME),
        (10, 0x7FF80000, 0x20, wb),
        (9, 0x7FFA0000, 0x60, wb),
        (11, 0xB0000000, 0x10000, uc_rt),
        (0, 0xFEC00000, 1, 0),
        (0, 0xFED00000, 1, 0),
        (0, 0xFEE00000, 0x100, 0),
        (0, 0xFEFFC000, 4, 0),
        (11, 0xFFC00000, 0x400, uc_rt),
        (CONV, 0x100000000, 0x80000, wb),
    ]
    free = sum(d.num_pages for d in c.descriptors() if d.type == CONV) * P
    assert free == 4 * GiB - 0x60000 - 0x1000 - 0x100000  # legacy hole, trim, top 1 MiB
    expected_table = [
        (0, 0x9F000, E820Type.RAM),
        (0x100000, RUNTIME_CODE - 0x100000, E820Type.RAM),
        (RUNTIME_CODE, 0x80000, E820Type.RESERVED),  # runtime code + data, merged
        (0x7FF80000, 0x20000, E820Type.NVS),
        (0x7FFA0000, 0x60000, E820Type.ACPI),
        (0xB0000000, 0x10000000, E820Type.RESERVED),
        (0xFEC00000, P, E820Type.RESERVED),
        (0xFED00000, P, E820Type.RESERVED),
        (0xFEE00000, 0x100000, E820Type.RESERVED),
        (0xFEFFC000, 0x4000, E820Type.RESERVED),
        (0xFFC00000, 0x400000, E820Type.RESERVED),
        (1 << 32, 2 * GiB, E820Type.RAM),
    ]
    assert c.table() == [TableEntry(*e) for e in expected_table]
    e820, hvm = encoded_tables(c)
    assert e820[:20] == struct.pack("<QQI", 0, 0x9F000, 1) and len(hvm) == 24 * 12
    # Linux's stub: a buffer below 4 GiB, the kernel at its preferred address, anything.
    for m in (c, r):
        assert m.allocate_pages(MAX, 2, 16, 0xFFFFFFFF) == (Status.SUCCESS, RUNTIME_CODE - 16 * P)
        assert m.allocate_pages(AT, 1, 0x2000, 0x1000000) == (Status.SUCCESS, 0x1000000)
        assert m.allocate_pages(ANY, 4, 1) == (Status.SUCCESS, 0x180000000 - P)
        assert m.set_virtual_address_map(linux_virtual_map(m), 48) == Status.SUCCESS
        assert m.convert_pointer(RUNTIME_DATA + 8)[1] == EFI_VA_START - 0x400000 - 0x10000000 \
            - 0x40000 + 8
    assert_same(c, r)


@pytest.mark.parametrize("amd", [False, True], ids=["intel", "amd"])
def test_q35_1tib_guest(amd: bool) -> None:
    regions = q35_layout(1 << 40, amd)
    c, r = both(64)
    assert c.build(regions) == r.build(regions) == Status.SUCCESS
    assert_same(c, r)
    top = c.descriptors()[-1]
    high = (1 << 40) if amd else (1 << 32)
    assert (top.type, top.phys_start, top.num_pages) == (CONV, high, ((1 << 40) - 2 * GiB) // P)
    table = c.table()
    assert table[-1] == TableEntry(high, (1 << 40) - 2 * GiB, E820Type.RAM)
    if amd:
        assert table[-2] == TableEntry(0xFD00000000, 12 * GiB, E820Type.RESERVED)
    total = sum(e.size for e in table if e.type == E820Type.RAM)
    assert total == (1 << 40) - 0x60000 - 0x1000 - 0x100000
    assert c.allocate_pages(ANY, 2, 1) == (Status.SUCCESS, high + (1 << 40) - 2 * GiB - P)
    assert c.allocate_pages(MAX, 2, 1, 0xFFFFFFFF) == (Status.SUCCESS, RUNTIME_CODE - P)


def test_small_q35_guest_keeps_ram_below_4gib() -> None:
    ram = 0xA0000000  # 2.5 GiB: below 0xB0000000, so all of it stays under the ECAM window
    c, r = both(32)
    assert c.build(q35_layout(ram)) == r.build(q35_layout(ram)) == Status.SUCCESS
    assert_same(c, r)
    ds = c.descriptors()
    assert ds[-1].phys_start == 0xFFC00000  # nothing above 4 GiB
    assert [(d.type, d.phys_start) for d in ds[2:6]] == [(5, 0x9FF00000), (6, 0x9FF40000),
                                                          (10, 0x9FF80000), (9, 0x9FFA0000)]
    free = sum(d.num_pages for d in ds if d.type == CONV) * P
    assert free == ram - 0x60000 - 0x1000 - 0x100000


# ---- speed sanity (the benchmark has the real figures) -------------------------------------

def test_large_maps_are_fast() -> None:
    rng = random.Random(7)
    regions, addr = [], 0
    for _ in range(100_000):
        pages = rng.randint(1, 64)
        regions.append((addr, pages * P, rng.choice([1, 1, 2, 3, 0x100, 0x101])))
        addr += (pages + rng.choice([0, 0, 1])) * P
    rng.shuffle(regions)
    data = b"".join(REGION.pack(a, s, k, 0) for a, s, k in regions)
    m = MemoryMap(100_000)
    best = min(_timed(lambda: m.build(data)) for _ in range(3))
    assert m.build(data) == Status.SUCCESS
    assert best < 0.2, best  # the goal is 20 ms; this only catches quadratic blunders
    assert_invariants(m)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
