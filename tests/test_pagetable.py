"""x86-64 page tables: the C builder against the Python reference (same bytes), and both
against an independent oracle (every leaf is one the inputs ask for, with the entry bits
FACTS.md lists, and together the leaves cover exactly the union of the inputs).

Buffers sit between canary bytes and start at odd host offsets, so a stray write or an
unaligned access shows; the canaries also fill the table area, so a table that was
not zeroed where it should have been shows up as garbage entries in the dump.
"""

from __future__ import annotations

import mmap
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from efird._cext import ffi
from hypothesis import event, given, settings
from hypothesis import strategies as st

from efird.core import pagetable as pt
from efird.core import pagetable_ref as ref
from efird.efi.status import Status

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE = 4 * KiB
GUARD = 64
CANARY = 0xA5
INVALID, TOO_SMALL = Status.INVALID_PARAMETER, Status.BUFFER_TOO_SMALL

# Entry bits, spelled out from FACTS.md rather than imported from the model under test.
P, RW, US, PWT, PCD, A, D, PS, G, NX = 1, 2, 4, 8, 16, 32, 64, 128, 256, 1 << 63
PAT_4K, PAT_LARGE = 1 << 7, 1 << 12
ADDR = 0x000F_FFFF_FFFF_F000


# ---- harness ----------------------------------------------------------------------------

class Guarded:
    """`size` usable bytes inside a canary-filled bytearray, starting at a host address
    that is `misalign` past a multiple of 16 (the C takes a 16-byte path when it can)."""

    def __init__(self, size: int, misalign: int = 3) -> None:
        self.raw = bytearray([CANARY]) * (size + 2 * GUARD + 16)
        address = int(ffi.cast("uintptr_t", ffi.from_buffer(self.raw)))
        self.offset, self.size = GUARD + (misalign - address) % 16, size
        self.view = memoryview(self.raw)[self.offset:self.offset + size]

    def guards_intact(self) -> bool:
        canary = CANARY.to_bytes(1, "little")
        return (self.raw[:self.offset] == canary * self.offset
                and self.raw[self.offset + self.size:]
                == canary * (len(self.raw) - self.offset - self.size))

    def untouched_from(self, used: int) -> bool:
        return bytes(self.view[used:]) == bytes([CANARY]) * (self.size - used)


@dataclass
class Outcome:
    status: Status
    built: pt.Built | None = None
    needed: int = 0


def run(impl: Any, buf: Any, base: int, levels: int, ranges: Sequence[pt.Range],
        mappings: Sequence[pt.Mapping] = (), flags: int = 0) -> Outcome:
    try:
        return Outcome(Status.SUCCESS, impl.build(buf, base, levels, ranges, mappings, flags))
    except pt.PageTableError as e:
        return Outcome(e.status, None, e.bytes_needed)


def build_both(base: int, levels: int, ranges: Sequence[pt.Range],
               mappings: Sequence[pt.Mapping] = (), flags: int = 0,
               size: int | None = None) -> tuple[Outcome, Guarded, Guarded]:
    """Size with a zero-length call, build with C and the reference, compare."""
    if size is None:
        probe = run(pt, bytearray(), base, levels, ranges, mappings, flags)
        assert probe == run(ref, bytearray(), base, levels, ranges, mappings, flags)
        if probe.status != TOO_SMALL:
            return probe, Guarded(0), Guarded(0)
        size = probe.needed
    r_buf = Guarded(size, misalign=5)
    r = run(ref, r_buf.view, base, levels, ranges, mappings, flags)
    assert r_buf.guards_intact()
    for misalign in (3, 8, 0):
        c_buf = Guarded(size, misalign)
        c = run(pt, c_buf.view, base, levels, ranges, mappings, flags)
        assert c == r
        assert c_buf.guards_intact()
        if c.built is not None:
            used = c.built.bytes_used
            assert c.built.cr3 == base
            assert bytes(c_buf.view[:used]) == bytes(r_buf.view[:used])
            assert c_buf.untouched_from(used) and r_buf.untouched_from(used)
    return c, c_buf, r_buf


def expected_bits(flags: int, level: int, build_flags: int = 0) -> int:
    e = P | A
    if not flags & pt.READONLY:
        e |= RW | D
    if not flags & pt.CODE and not build_flags & pt.BUILD_NO_NX:
        e |= NX
    if flags & pt.GLOBAL:
        e |= G
    pat = (flags >> 4) & 7
    e |= (PWT if pat & 1 else 0) | (PCD if pat & 2 else 0)
    if pat & 4:
        e |= PAT_4K if level == 1 else PAT_LARGE
    return e | (PS if level > 1 else 0)


@dataclass(frozen=True)
class Leaf:
    va: int
    size: int
    pa: int
    entry: int
    level: int


def dump(buf: Any, base: int, used: int, cr3: int, levels: int) -> Iterator[Leaf]:
    """Every leaf, checking that table entries are exactly P|RW|A and point into the
    tables of this build."""
    mv = memoryview(buf)

    def table(addr: int, level: int, va_base: int) -> Iterator[Leaf]:
        assert base <= addr < base + used and addr % PAGE == 0
        off = addr - base
        for i, (e,) in enumerate(struct.iter_unpack("<Q", mv[off:off + PAGE])):
            if not e:
                continue
            shift = 12 + 9 * (level - 1)
            va = va_base | (i << shift)
            if level == levels and i >= 256:
                va |= ~((1 << (9 * levels + 12)) - 1) & ((1 << 64) - 1)  # sign-extend
            if level == 1 or e & PS:
                assert level <= 3
                size = 1 << shift
                pa = e & ADDR & ~(size - 1)
                assert e & ADDR & (size - 1) & ~PAT_LARGE == 0
                yield Leaf(va, size, pa, e, level)
            else:
                assert e == (e & ADDR) | P | RW | A, hex(e)
                yield from table(e & ADDR, level - 1, va)

    yield from table(cr3, levels, 0)


def items(ranges: Sequence[pt.Range], mappings: Sequence[pt.Mapping],
          build_flags: int) -> list[tuple[int, int, int, int]]:
    """(virt, phys, size, flags) with flags as the entries will show them."""
    mask = ~pt.CODE if build_flags & pt.BUILD_NO_NX else ~0
    return ([(r.phys, r.phys, r.size, r.flags & mask) for r in ranges]
            + [(m.virt, m.phys, m.size, m.flags & mask) for m in mappings])


def conflicting(its: list[tuple[int, int, int, int]]) -> bool:
    for i, (v1, p1, s1, f1) in enumerate(its):
        for v2, p2, s2, f2 in its[i + 1:]:
            if v1 < v2 + s2 and v2 < v1 + s1 and (p1 - v1 != p2 - v2 or f1 != f2):
                return True
    return False


def union_size(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, -1
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def check_against_oracle(buf: Any, base: int, built: pt.Built, levels: int,
                         ranges: Sequence[pt.Range], mappings: Sequence[pt.Mapping],
                         build_flags: int = 0) -> list[Leaf]:
    its = items(ranges, mappings, build_flags)
    leaves = list(dump(buf, base, built.bytes_used, built.cr3, levels))
    for leaf in leaves:
        over = [it for it in its if it[0] < leaf.va + leaf.size and leaf.va < it[0] + it[2]]
        assert over, f"leaf {leaf} maps what nobody asked for"
        for v, p, _, f in over:
            assert p - v == leaf.pa - leaf.va
            assert leaf.entry == leaf.pa | expected_bits(f, leaf.level, build_flags), leaf
        clipped = [(max(v, leaf.va), min(v + s, leaf.va + leaf.size)) for v, _, s, _ in over]
        assert union_size(clipped) == leaf.size, f"leaf {leaf} is larger than its ranges"
    assert sum(leaf.size for leaf in leaves) == union_size([(v, v + s) for v, _, s, _ in its])
    return leaves


# ---- the C builder against the reference and the oracle ---------------------------------

ANCHORS = [0, 2 * MiB, 1 * GiB, 1 * GiB - 2 * MiB, 3 * GiB + 4 * MiB, 512 * GiB - 2 * MiB,
           0xFEE0_0000, 5 * TiB]
HIGH_ANCHORS = [pt.EFI_VA_START - 2 * MiB, pt.EFI_VA_START - 1 * GiB, 0xFFFF_8000_0000_0000,
                (1 << 64) - 2 * MiB, 0x0000_7FFF_FFE0_0000, 0x00FF_FFFF_C000_0000,
                0xFF00_0000_0000_0000, 0x8000_0000_0000]
# Mostly plain data, so that overlaps are not nearly always conflicts.
FLAGS = st.one_of(st.just(0), st.sampled_from([
    pt.CODE, pt.READONLY, pt.CODE | pt.READONLY, pt.CACHE_UC, pt.CACHE_WC,
    pt.CACHE_WC | pt.GLOBAL, pt.CACHE_UC_MINUS | pt.CODE]))


def sizes(small_only: bool) -> st.SearchStrategy[int]:
    pages = st.sampled_from([1, 2, 3, 511, 512, 513, 1024, 1536])
    if small_only:
        return pages.map(lambda n: n * PAGE)
    return st.one_of(pages.map(lambda n: n * PAGE),
                     st.sampled_from([1 * GiB, 1 * GiB + 2 * MiB, 2 * GiB, 1 * GiB + PAGE]))


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, int, list[pt.Range], list[pt.Mapping], int]:
    levels = draw(st.sampled_from([4, 5]))
    build_flags = draw(st.sampled_from([0, 0, 0, pt.BUILD_NO_1G, pt.BUILD_4K_ONLY,
                                        pt.BUILD_NO_NX]))
    size = sizes(small_only=bool(build_flags & pt.BUILD_4K_ONLY))
    offset = st.integers(0, 600).map(lambda n: n * PAGE)
    ranges = draw(st.lists(st.builds(
        lambda a, o, s, f: pt.Range(a + o, s, f),
        st.sampled_from(ANCHORS), offset, size, FLAGS), max_size=4))
    neighbour: bool = draw(st.booleans())
    if ranges and neighbour:  # an entry that continues the one before, as memory maps do
        last = ranges[-1]
        ranges.append(pt.Range(last.phys + last.size, draw(size),
                               draw(st.sampled_from([last.flags, last.flags ^ pt.CODE]))))
    # Physical addresses share the virtual offset, shifted by 0, 4 KiB (no large leaves:
    # kept to small sizes) or 2 MiB (no 1 GiB leaves).
    mappings = draw(st.lists(st.builds(
        lambda a, o, p, po, s, f: pt.Mapping(a + o, p + o + po, s, f),
        st.sampled_from(HIGH_ANCHORS + ANCHORS), offset, st.sampled_from(ANCHORS),
        st.sampled_from([0, 0, PAGE, 2 * MiB]), size, FLAGS).filter(
            lambda m: m.size < GiB or (m.phys - m.virt) % (2 * MiB) == 0), max_size=3))
    if (ranges or mappings) and draw(st.integers(0, 4)) == 0:  # an exact or shifted twin
        choices: list[pt.Range | pt.Mapping] = [*ranges, *mappings]
        pick = draw(st.sampled_from(choices))
        twin = (pt.Mapping(pick.phys, pick.phys, pick.size, pick.flags)
                if isinstance(pick, pt.Range) else pick)
        mappings.append(pt.Mapping(twin.virt, twin.phys + draw(st.sampled_from([0, PAGE])),
                                   twin.size, draw(st.sampled_from([twin.flags, pt.CODE]))))
    base = draw(st.integers(0, 1 << 28)) * PAGE
    return levels, build_flags, ranges, mappings, base


def valid(virt: int, phys: int, size: int, levels: int) -> bool:
    bits = 57 if levels == 5 else 48
    last = virt + size - 1

    def canon(x: int) -> bool:
        return x < 1 << (bits - 1) or x >= (1 << 64) - (1 << (bits - 1))

    return (size > 0 and last < 1 << 64 and phys + size <= 1 << 52 and canon(virt)
            and canon(last) and (virt >> 63) == (last >> 63))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_c_matches_reference_and_oracle(case: tuple[Any, ...]) -> None:
    levels, build_flags, ranges, mappings, base = case
    its = items(ranges, mappings, 0)
    outcome, c_buf, _ = build_both(base, levels, ranges, mappings, build_flags)
    event(f"status {outcome.status.name}")
    if not all(valid(v, p, s, levels) for v, p, s, _ in its):
        event("invalid input")
        assert outcome.status == INVALID
        return
    if conflicting(items(ranges, mappings, build_flags)):
        event("conflict")
        assert outcome.status == INVALID
        return
    assert outcome.status == Status.SUCCESS and outcome.built is not None
    built = outcome.built
    leaves = check_against_oracle(c_buf.view, base, built, levels, ranges, mappings,
                                  build_flags)
    event(f"leaf sizes {sorted({leaf.size for leaf in leaves})}")
    if build_flags & pt.BUILD_4K_ONLY:
        assert all(leaf.size == PAGE for leaf in leaves)
    if build_flags & pt.BUILD_NO_1G:
        assert all(leaf.size < GiB for leaf in leaves)
    if len(list(ref.runs(ranges, mappings))) == 1:
        probe = run(pt, bytearray(), base, levels, ranges, mappings, build_flags)
        assert probe.needed == built.bytes_used  # the size estimate is exact for one run
    # The walker agrees with the dump, at the first and last byte of each leaf.
    for leaf in random.Random(0).sample(leaves, min(len(leaves), 64)):
        for off in (0, leaf.size - 1):
            got = pt.walk(c_buf.view, base, built.cr3, levels, leaf.va + off)
            assert got == ref.walk(c_buf.view, base, built.cr3, levels, leaf.va + off)
            assert got is not None and got.phys == leaf.pa + off
            assert got.leaf_size == leaf.size and got.entry == leaf.entry
    # One page short: both report BUFFER_TOO_SMALL and a size that is enough.
    if built.bytes_used > PAGE:
        short = build_both(base, levels, ranges, mappings, build_flags,
                           size=built.bytes_used - PAGE)[0]
        assert short.status == TOO_SMALL and short.needed >= built.bytes_used


# ---- leaves, bits and layouts -----------------------------------------------------------

def build_c(levels: int, ranges: Sequence[pt.Range], mappings: Sequence[pt.Mapping] = (),
            flags: int = 0, base: int = 0x1000_0000) -> tuple[Guarded, pt.Built, list[Leaf]]:
    outcome, c_buf, _ = build_both(base, levels, ranges, mappings, flags)
    assert outcome.built is not None, outcome
    leaves = check_against_oracle(c_buf.view, base, outcome.built, levels, ranges, mappings,
                                  flags)
    return c_buf, outcome.built, leaves


def test_largest_leaf_first() -> None:
    _, _, leaves = build_c(4, [pt.Range(0, GiB + 2 * MiB + PAGE)])
    assert [leaf.size for leaf in leaves] == [GiB, 2 * MiB, PAGE]


def test_different_attributes_in_one_large_page_split_it() -> None:
    ranges = [pt.Range(0, PAGE), pt.Range(PAGE, PAGE, pt.CODE | pt.READONLY),
              pt.Range(2 * PAGE, 2 * MiB - 2 * PAGE), pt.Range(2 * MiB, 2 * MiB)]
    _, built, leaves = build_c(4, ranges)
    assert [leaf.size for leaf in leaves] == [PAGE] * 512 + [2 * MiB]
    assert built.bytes_used == 4 * PAGE  # root, PDPT, PD, one page table


def test_neighbours_with_the_same_flags_make_one_run() -> None:
    _, _, leaves = build_c(4, [pt.Range(0, MiB), pt.Range(MiB, MiB)])
    assert [leaf.size for leaf in leaves] == [2 * MiB]


def test_misaligned_physical_address_keeps_small_leaves() -> None:
    m = pt.Mapping(pt.EFI_VA_START - 2 * MiB, 0x8000_1000, 2 * MiB)
    _, _, leaves = build_c(4, [], [m])
    assert {leaf.size for leaf in leaves} == {PAGE}
    _, _, leaves = build_c(4, [], [pt.Mapping(m.virt, 0x8020_0000, 2 * MiB)])
    assert [leaf.size for leaf in leaves] == [2 * MiB]


@pytest.mark.parametrize("size", [PAGE, 2 * MiB, GiB])
@pytest.mark.parametrize("flags", [0, pt.CODE, pt.READONLY, pt.CACHE_UC, pt.CACHE_WC,
                                   pt.CACHE_UC_MINUS | pt.GLOBAL, pt.CACHE_WT, pt.CACHE_WP])
def test_entry_bits(size: int, flags: int) -> None:
    c_buf, built, leaves = build_c(4, [pt.Range(GiB, size, flags)])
    (leaf,) = leaves
    level = {PAGE: 1, 2 * MiB: 2, GiB: 3}[size]
    assert leaf.level == level and leaf.entry == GiB | expected_bits(flags, level)
    assert not leaf.entry & US
    assert bool(leaf.entry & NX) == (not flags & pt.CODE)
    assert bool(leaf.entry & RW) == (not flags & pt.READONLY)
    if flags & pt.CACHE_MASK == pt.CACHE_UC:  # MMIO: PCD|PWT, PAT entry 3
        assert leaf.entry & (PCD | PWT) == PCD | PWT
    if flags & pt.CACHE_MASK == pt.CACHE_WC:  # PAT entry 4: the PAT bit alone
        pat = PAT_4K if level == 1 else PAT_LARGE
        assert leaf.entry & (pat | PCD | PWT) == pat
        assert level == 1 or not leaf.entry & PAT_4K or leaf.entry & PS
    got = pt.walk(c_buf.view, 0x1000_0000, built.cr3, 4, GiB + size - 8)
    assert got is not None and got.flags == flags and got.phys == GiB + size - 8


def test_pat_msr_layout() -> None:
    """Entry n of the PAT MSR is byte n; 0-3 are the reset value, 4 is WC (type 1)."""
    types = pt.PAT_MSR.to_bytes(8, "little")
    assert list(types) == [6, 4, 7, 0, 1, 5, 0, 0]
    assert types[:4] == (0x0007_0406_0007_0406).to_bytes(8, "little")[:4]
    assert types[pt.CACHE_WC >> 4] == 1 and types[pt.CACHE_UC >> 4] == 0
    assert types[pt.CACHE_WB >> 4] == 6


def test_no_nx_build_flag() -> None:
    _, _, leaves = build_c(4, [pt.Range(0, 4 * MiB)], flags=pt.BUILD_NO_NX)
    assert all(not leaf.entry & NX for leaf in leaves)


def test_five_levels() -> None:
    high = 0x00FF_FFFF_C000_0000  # only canonical with 57-bit addresses
    m = [pt.Mapping(high, 2 * GiB, GiB), pt.Mapping(0xFF00_0000_0000_0000, 0, 2 * MiB)]
    c_buf, built, leaves = build_c(5, [pt.Range(0, 2 * MiB)], m)
    assert [leaf.va for leaf in leaves] == [0, high, 0xFF00_0000_0000_0000]
    assert built.bytes_used == 9 * PAGE  # root, 3 x (P4D, PDPT), PDs for the 2 MiB leaves
    root = struct.unpack_from("<512Q", c_buf.view, 0)
    assert [i for i, e in enumerate(root) if e] == [0, 255, 256]
    assert run(pt, bytearray(1 << 20), 0, 4, [], m[:1]).status == INVALID


def test_identity_map_one_tebibyte_with_1g_leaves() -> None:
    c_buf, built, leaves = build_c(4, [pt.Range(0, TiB)], base=0)
    assert built.bytes_used == 3 * PAGE and built.cr3 == 0
    assert len(leaves) == 1024 and {leaf.size for leaf in leaves} == {GiB}
    got = pt.walk(c_buf.view, 0, 0, 4, TiB - 1)
    assert got is not None and got.phys == TiB - 1 and got.level == 3


def test_identity_map_8g_with_4k_leaves_sampled() -> None:
    """16 MiB of tables: big enough for the streaming stores, built at each alignment."""
    outcome, c_buf, _ = build_both(GiB, 4, [pt.Range(0, 8 * GiB)], (), pt.BUILD_4K_ONLY)
    assert outcome.built is not None
    assert outcome.built.bytes_used == (1 + 1 + 8 + 4096) * PAGE
    rng = random.Random(1)
    for va in [0, 8 * GiB - 1] + [rng.randrange(8 * GiB) for _ in range(2000)]:
        got = pt.walk(c_buf.view, GiB, GiB, 4, va)
        assert got is not None and got.phys == va and got.leaf_size == PAGE
        assert got.flags == 0 and got.entry & NX
    assert pt.walk(c_buf.view, GiB, GiB, 4, 8 * GiB) is None


def test_overlaps_that_agree_are_accepted() -> None:
    ranges = [pt.Range(2 * MiB, 4 * MiB), pt.Range(0, GiB), pt.Range(3 * MiB, PAGE)]
    _, _, leaves = build_c(4, ranges)
    assert sum(leaf.size for leaf in leaves) == GiB


# ---- errors -----------------------------------------------------------------------------

R = pt.Range
M = pt.Mapping
BAD: list[tuple[str, int, int, list[Any], list[Any]]] = [
    ("levels 3", 3, 0, [R(0, PAGE)], []),
    ("levels 6", 6, 0, [R(0, PAGE)], []),
    ("unknown build flag", 4, 0x8, [R(0, PAGE)], []),
    ("zero size", 4, 0, [R(0, 0)], []),
    ("unaligned phys", 4, 0, [R(0x800, PAGE)], []),
    ("unaligned size", 4, 0, [R(0, 0x1800)], []),
    ("unknown flag", 4, 0, [R(0, PAGE, 0x8)], []),
    ("cache bit 7", 4, 0, [R(0, PAGE, 0x80)], []),
    ("phys at 2^52", 4, 0, [], [M(0, 1 << 52, PAGE)]),
    ("phys crosses 2^52", 4, 0, [], [M(0, (1 << 52) - PAGE, 2 * PAGE)]),
    ("identity above 47 bits", 4, 0, [R(1 << 47, PAGE)], []),
    ("identity above 56 bits", 5, 0, [R((1 << 52) - PAGE, 2 * PAGE)], []),
    ("non-canonical virt", 4, 0, [], [M(0x0000_8000_0000_0000, 0, PAGE)]),
    ("non-canonical virt (LA57)", 5, 0, [], [M(0x0100_0000_0000_0000, 0, PAGE)]),
    ("virt into the hole", 4, 0, [], [M(0x0000_7FFF_FFFF_F000, 0, 2 * PAGE)]),
    ("virt wraps", 4, 0, [], [M((1 << 64) - PAGE, 0, 2 * PAGE)]),
    ("unaligned virt", 4, 0, [], [M(0x1800, 0, PAGE)]),
    ("negative", 4, 0, [R(-PAGE, PAGE)], []),
    ("too wide", 4, 0, [], [M(1 << 64, 0, PAGE)]),
    ("flags too wide", 4, 0, [R(0, PAGE, 1 << 32)], []),
    ("conflicting flags", 4, 0, [R(0, 2 * MiB), R(MiB, PAGE, pt.CODE)], []),
    ("conflicting phys", 4, 0, [R(0, PAGE)], [M(0, PAGE, PAGE)]),
    ("conflict inside a 1G leaf", 4, 0, [R(0, GiB)], [M(GiB - PAGE, 0, PAGE)]),
    ("conflict with a 2M leaf later", 4, 0, [R(0, PAGE, pt.CACHE_UC), R(0, 2 * MiB)], []),
]


@pytest.mark.parametrize(("levels", "flags", "ranges", "mappings"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_invalid_parameter(levels: int, flags: int, ranges: list[Any],
                                        mappings: list[Any]) -> None:
    for impl in (pt, ref):
        g = Guarded(64 * KiB)
        assert run(impl, g.view, 0, levels, ranges, mappings, flags).status == INVALID
        assert g.guards_intact()


@pytest.mark.parametrize("base", [0x800, 1 << 52, (1 << 52) - PAGE])
def test_bad_table_base(base: int) -> None:
    for impl in (pt, ref):
        assert run(impl, bytearray(2 * PAGE), base, 4, [R(0, PAGE)]).status == INVALID


def test_buffer_too_small_reports_what_is_enough() -> None:
    ranges = [R(0, PAGE), R(GiB, PAGE), R(512 * GiB, PAGE)]
    for impl in (pt, ref):
        for size in (0, 100, PAGE, 5 * PAGE):
            g = Guarded(size)
            out = run(impl, g.view, 0, 4, ranges)
            # root; PDPT, 2 PDs, 2 PTs below 512 GiB; PDPT, PD, PT above
            assert out.status == TOO_SMALL and out.needed == 9 * PAGE, (impl, size)
            assert g.guards_intact()
        assert run(impl, bytearray(9 * PAGE), 0, 4, ranges).status == Status.SUCCESS


def test_builds_straight_into_an_mmap() -> None:
    """Guest memory is an mmap in the daemon: the tables go there without a copy."""
    with mmap.mmap(-1, 64 * KiB) as guest:
        built = pt.build(memoryview(guest)[16 * KiB:], 0x8000_0000 + 16 * KiB, 5,
                         [R(0, 2 * MiB)])
        assert built.cr3 == 0x8000_0000 + 16 * KiB and built.bytes_used == 4 * PAGE
        got = pt.walk(guest, 0x8000_0000, built.cr3, 5, 0x1234)
        assert got is not None and got.phys == 0x1234 and got.leaf_size == 2 * MiB
        assert guest[:16 * KiB] == bytes(16 * KiB)


def test_read_only_buffer_is_refused() -> None:
    with pytest.raises((TypeError, BufferError, pt.PageTableError)):
        pt.build(bytes(PAGE), 0, 4, [R(0, PAGE)])
    with pytest.raises(pt.PageTableError):
        ref.build(memoryview(bytes(PAGE)), 0, 4, [R(0, PAGE)])


# ---- the walker -------------------------------------------------------------------------

def walk_both(buf: Any, base: int, cr3: int, levels: int, va: int) -> Any:
    results = []
    for impl in (pt, ref):
        try:
            results.append(impl.walk(buf, base, cr3, levels, va))
        except pt.PageTableError as e:
            results.append(e.status)
    assert results[0] == results[1]
    return results[0]


def test_walker_errors() -> None:
    base = 0x10_0000
    buf = bytearray(4 * PAGE)
    built = pt.build(buf, base, 4, [R(0, PAGE)])
    assert walk_both(buf, base, built.cr3, 4, 0x234) == pt.Translation(
        0x234, PAGE, P | RW | A | D | NX, 0, 1)
    assert walk_both(buf, base, built.cr3, 4, PAGE) is None  # NOT_FOUND
    assert walk_both(buf, base, built.cr3, 4, 1 << 47) == INVALID  # not canonical
    assert walk_both(buf, base, base + 4 * PAGE, 4, 0) == INVALID  # CR3 outside
    assert walk_both(buf, base, base - PAGE, 4, 0) == INVALID
    assert walk_both(buf, base, built.cr3, 3, 0) == INVALID
    pml4e = struct.unpack_from("<Q", buf, 0)[0]
    struct.pack_into("<Q", buf, 0, 0x7000_0000 | P | RW)  # PDPT outside the buffer
    assert walk_both(buf, base, built.cr3, 4, 0) == INVALID
    struct.pack_into("<Q", buf, 0, pml4e | PS)  # PS is reserved in a PML4E
    assert walk_both(buf, base, built.cr3, 4, 0) == INVALID
    struct.pack_into("<Q", buf, 0, pml4e)
    struct.pack_into("<Q", buf, PAGE, (1 << 21) | P | PS)  # 1 GiB leaf, address bit 21
    assert walk_both(buf, base, built.cr3, 4, 0) == INVALID
    struct.pack_into("<Q", buf, PAGE, GiB | PAT_LARGE | P | PS | PCD)
    got = walk_both(buf, base, built.cr3, 4, 5)
    assert got.phys == GiB + 5 and got.flags == (pt.CACHE_WC | pt.CACHE_UC_MINUS | pt.CODE
                                             | pt.READONLY)


def test_build_refuses_a_tampered_tree_inside_its_own_buffer() -> None:
    """Tables the builder reads back must be its own: a guest rewriting them mid-build
    cannot steer writes elsewhere. Simulated by building over an existing tree."""
    buf = bytearray(8 * PAGE)
    built = ref.build(buf, 0, 4, [R(0, PAGE)])
    assert built.bytes_used == 4 * PAGE
    b = ref._Builder(memoryview(buf), 0, [False, True, True, True])
    b.used = 4 * PAGE
    b.leaf = [0, *(ref.leaf_bits(0, 0, lv) for lv in (1, 2, 3))]
    struct.pack_into("<Q", buf, 0, 0x40_0000 | P | RW | A)  # beyond what was carved
    with pytest.raises(pt.PageTableError):
        b.map(0, 4, PAGE, 2 * PAGE - 1, 0, False)


# ---- Linux's EFI runtime layout ---------------------------------------------------------

RT_CODE, RT_DATA, CONV, MMIO, BS_CODE, BS_DATA = 5, 6, 7, 11, 3, 4
RUNTIME, WB, UC = 1 << 63, 0x8, 0x1


def layout_both(regions: Sequence[pt.EfiRegion], desc_size: int = 48) -> Any:
    memory_map = pt.pack_memory_map(regions, desc_size)
    results = []
    for impl in (pt, ref):
        try:
            results.append(impl.linux_efi_virtual_addresses(memory_map, desc_size))
        except pt.PageTableError as e:
            results.append(e.status)
    assert results[0] == results[1]
    return results[0]


def test_linux_layout_top_down_from_minus_4g() -> None:
    regions = [pt.EfiRegion(RT_CODE, 0x7F00_0000, 16, RUNTIME | WB),
               pt.EfiRegion(RT_DATA, 0x7F01_0000, 32, RUNTIME | WB),
               pt.EfiRegion(CONV, 0x8000_0000, 4096, WB),
               pt.EfiRegion(MMIO, 0xFED0_0000, 1, RUNTIME | UC)]
    virt = layout_both(regions)
    # Walked backwards: the MMIO page first, keeping its offset in its 2 MiB page, then
    # the data and the code below it, so entry N stays below entry N+1.
    assert virt == [0xFFFF_FFFE_FFE0_0000, 0xFFFF_FFFE_FFE1_0000, 0, 0xFFFF_FFFE_FFF0_0000]
    assert all(v % (2 * MiB) == r.phys % (2 * MiB) for v, r in zip(virt, regions, strict=True) if v)


def test_linux_layout_merges_neighbours_and_maps_boot_services() -> None:
    regions = [pt.EfiRegion(BS_CODE, 0x10_0000, 16, WB),
               pt.EfiRegion(RT_DATA, 0x20_0000, 16, RUNTIME | WB),
               pt.EfiRegion(RT_DATA, 0x21_0000, 16, RUNTIME | WB),  # folded into the one above
               pt.EfiRegion(RT_DATA, 0x30_0000, 16, RUNTIME | UC)]  # other attribute
    virt = layout_both(regions)
    assert virt[3] == 0xFFFF_FFFE_FFE0_0000 + 0x10_0000
    assert virt[1] == 0xFFFF_FFFE_FFE0_0000  # 128 KiB below, rounded down to 2 MiB
    assert virt[2] == virt[1] + 0x1_0000
    assert virt[0] == 0xFFFF_FFFE_FFC0_0000 + 0x10_0000


def test_linux_layout_window_overflow() -> None:
    regions = [pt.EfiRegion(RT_DATA, i * 64 * GiB, (40 * GiB) // PAGE, RUNTIME | WB)
               for i in range(2)]
    assert layout_both(regions) == Status.OUT_OF_RESOURCES
    assert layout_both(regions[:1]) == [pt.EFI_VA_START - 40 * GiB]


def test_linux_layout_bad_descriptor_size() -> None:
    memory_map = pt.pack_memory_map([pt.EfiRegion(RT_DATA, 0, 1, RUNTIME)], 48)
    for impl in (pt, ref):
        with pytest.raises(pt.PageTableError):
            impl.linux_efi_virtual_addresses(memory_map, 32)
        with pytest.raises(pt.PageTableError):
            impl.linux_efi_virtual_addresses(memory_map + b"x", 48)


REGION = st.builds(pt.EfiRegion, st.sampled_from([BS_CODE, BS_DATA, RT_CODE, RT_DATA, CONV,
                                                  MMIO]),
                   st.integers(0, 1 << 20).map(lambda n: n * PAGE),
                   st.sampled_from([1, 2, 16, 512, 513, 4096]),
                   st.sampled_from([WB, RUNTIME | WB, RUNTIME | UC, RUNTIME | WB | 0x4000]))


@st.composite
def memory_maps(draw: st.DrawFn) -> list[pt.EfiRegion]:
    regions: list[pt.EfiRegion] = []
    for r in draw(st.lists(REGION, max_size=12)):
        follow: bool = draw(st.booleans())
        if regions and follow:  # continue the previous region
            prev = regions[-1]
            same = draw(st.booleans())
            r = pt.EfiRegion(prev.type if same else r.type, prev.phys + prev.pages * PAGE,
                             r.pages, prev.attribute if same else r.attribute)
        regions.append(r)
    return regions


@settings(max_examples=200, deadline=None)
@given(memory_maps(), st.sampled_from([40, 48, 56]))
def test_linux_layout_c_matches_reference(regions: list[pt.EfiRegion], desc_size: int) -> None:
    virt = layout_both(regions, desc_size)
    if isinstance(virt, list):
        mapped = [(v, r) for v, r in zip(virt, regions, strict=True) if v]
        assert all(pt.EFI_VA_END <= v < pt.EFI_VA_START for v, _ in mapped)
        assert all(v % (2 * MiB) == r.phys % (2 * MiB) for v, r in mapped)


def test_runtime_regions_mapped_twice_like_linux() -> None:
    """Identity and -4 GiB, then every runtime page translates through both."""
    regions = [pt.EfiRegion(RT_CODE, 0x7F00_0000, 16, RUNTIME | WB),
               pt.EfiRegion(RT_DATA, 0x7F01_0000, 600, RUNTIME | WB),
               pt.EfiRegion(CONV, 0x8000_0000, 4096, WB),
               pt.EfiRegion(MMIO, 0xFED0_0000, 1, RUNTIME | UC)]
    virt = pt.linux_efi_virtual_addresses(pt.pack_memory_map(regions))
    mappings = pt.linux_runtime_mappings(regions, virt)
    ranges = [pt.Range(r.phys, r.pages * PAGE, pt.linux_region_flags(r)) for r in regions]
    for levels in (4, 5):
        c_buf, built, _ = build_c(levels, ranges, mappings, base=0x1_0000_0000)
        for r, v in zip(regions, virt, strict=True):
            for off in range(0, r.pages * PAGE, PAGE * 7):
                for va in ((v + off) if v else None, r.phys + off):
                    if va is None:
                        continue
                    got = pt.walk(c_buf.view, 0x1_0000_0000, built.cr3, levels, va)
                    assert got is not None and got.phys == r.phys + off
                    assert got.flags == pt.linux_region_flags(r)
        code = pt.walk(c_buf.view, 0x1_0000_0000, built.cr3, levels, virt[0])
        mmio = pt.walk(c_buf.view, 0x1_0000_0000, built.cr3, levels, virt[3])
        assert code is not None and not code.entry & NX
        assert mmio is not None and mmio.entry & (PCD | PWT | NX) == PCD | NX
