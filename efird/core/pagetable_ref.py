"""x86-64 page tables in pure Python: the reference model of cext/pagetable.c.

It defines what the C builder means and is checked against it byte for byte
(tests/test_pagetable.py), so the C can be tight without being the only statement of the
rules. It also owns the data model (flags, ranges, errors) that efird.core.pagetable
shares, because the model is what both implementations agree on.

Rules, as in cext/pagetable.h: identity ranges, then extra mappings, taken in order,
consecutive entries that continue one another (same flags, contiguous virt and phys)
merged into one run; each run mapped with the largest leaf it covers and its alignment
allows (1 GiB, 2 MiB, 4 KiB); tables carved from the buffer in order, root first.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from efird.efi.status import EfiError, Status

# Mapping flags.
CODE = 0x1
READONLY = 0x2
GLOBAL = 0x4
CACHE_SHIFT = 4
CACHE_MASK = 0x70
# The cache field is the index of the PAT entry a leaf selects, under Xen's PAT layout
# (PAT_MSR): entries 0-3 are the architectural reset values, entry 4 is WC.
CACHE_WB = 0x00
CACHE_WT = 0x10
CACHE_UC_MINUS = 0x20
CACHE_UC = 0x30
CACHE_WC = 0x40
CACHE_WP = 0x50
FLAGS_MASK = 0x77
PAT_MSR = 0x0000_0501_0007_0406

# Build flags.
BUILD_NO_1G = 0x1
BUILD_4K_ONLY = 0x2
BUILD_NO_NX = 0x4
BUILD_MASK = 0x7

EFI_VA_START = 0xFFFF_FFFF_0000_0000  # -4 GiB
EFI_VA_END = 0xFFFF_FFEF_0000_0000  # -68 GiB

PAGE = 4096
PHYS_LIMIT = 1 << 52
ADDR_MASK = 0x000F_FFFF_FFFF_F000
U64 = (1 << 64) - 1

# Entry bits.
P, RW, PWT, PCD, A, D, PS, G = 1, 2, 8, 0x10, 0x20, 0x40, 0x80, 0x100
PAT_4K, PAT_LARGE, NX = 0x80, 0x1000, 1 << 63
TABLE_BITS = P | RW | A

EFI_MEMORY_DESCRIPTOR = struct.Struct("<I4xQQQQ")  # Type, Physical, Virtual, Pages, Attr
EFI_BOOT_SERVICES_CODE = 3
EFI_BOOT_SERVICES_DATA = 4
EFI_RUNTIME_SERVICES_CODE = 5
EFI_MEMORY_WB = 0x8
EFI_MEMORY_RUNTIME = 1 << 63
PMD_SIZE = 1 << 21


class PageTableError(EfiError):
    """A build or walk the caller asked for that cannot be done; `bytes_needed` is set
    with BUFFER_TOO_SMALL (a size that is enough)."""

    def __init__(self, status: Status, reason: str = "", bytes_needed: int = 0) -> None:
        super().__init__(status, reason)
        self.bytes_needed = bytes_needed


@dataclass(frozen=True)
class Range:
    """Identity-map [phys, phys + size)."""

    phys: int
    size: int
    flags: int = 0


@dataclass(frozen=True)
class Mapping:
    """Map [virt, virt + size) to [phys, phys + size)."""

    virt: int
    phys: int
    size: int
    flags: int = 0


@dataclass(frozen=True)
class Built:
    cr3: int
    bytes_used: int


@dataclass(frozen=True)
class Translation:
    phys: int
    leaf_size: int
    entry: int
    flags: int  # effective over the walk: CODE unless some level had NX, READONLY, ...
    level: int  # of the leaf: 1 PTE, 2 PDE, 3 PDPTE


@dataclass(frozen=True)
class EfiRegion:
    """The fields of an EFI_MEMORY_DESCRIPTOR that Linux's layout depends on."""

    type: int
    phys: int
    pages: int
    attribute: int


def invalid(reason: str) -> PageTableError:
    return PageTableError(Status.INVALID_PARAMETER, reason)


def canonical(va: int, levels: int) -> bool:
    top = va >> (56 if levels == 5 else 47)
    return top == 0 or top == U64 >> (56 if levels == 5 else 47)


def _u(value: int, bits: int = 64) -> bool:
    return isinstance(value, int) and 0 <= value < (1 << bits)


def _valid_virt(virt: int, size: int, levels: int) -> bool:
    if size == 0 or size % PAGE or virt % PAGE or virt + size > 1 << 64:
        return False
    last = virt + size - 1
    return canonical(virt, levels) and canonical(last, levels) and virt >> 63 == last >> 63


def _valid_phys(phys: int, size: int) -> bool:
    return phys % PAGE == 0 and phys < PHYS_LIMIT and size <= PHYS_LIMIT - phys


def leaf_bits(flags: int, build_flags: int, level: int) -> int:
    """The bits of a leaf at `level` (1 = 4 KiB) for mapping `flags`."""
    e = P | A
    pat = (flags & CACHE_MASK) >> CACHE_SHIFT
    if not flags & READONLY:
        e |= RW | D  # a read-only leaf keeps D clear: RW=0 D=1 is a CET shadow-stack page
    if not flags & CODE and not build_flags & BUILD_NO_NX:
        e |= NX
    if flags & GLOBAL:
        e |= G
    if pat & 1:
        e |= PWT
    if pat & 2:
        e |= PCD
    if pat & 4:
        e |= PAT_4K if level == 1 else PAT_LARGE
    if level > 1:
        e |= PS
    return e


def _check_inputs(buf_size: int, base: int, levels: int, build_flags: int,
                  ranges: Sequence[Range], mappings: Sequence[Mapping]) -> None:
    if levels not in (4, 5):
        raise invalid("levels must be 4 or 5")
    if not _u(build_flags, 32) or build_flags & ~BUILD_MASK:
        raise invalid("unknown build flags")
    if not _u(base) or base % PAGE or base >= PHYS_LIMIT or buf_size > PHYS_LIMIT - base:
        raise invalid("table base must be 4 KiB aligned and the area below 2^52")
    for r in ranges:
        if not (_u(r.phys) and _u(r.size) and _u(r.flags, 32)) or r.flags & ~FLAGS_MASK:
            raise invalid(f"bad range {r}")
        if not _valid_phys(r.phys, r.size) or not _valid_virt(r.phys, r.size, levels):
            raise invalid(f"range {r} is empty, misaligned, beyond 2^52 or not canonical")
    for m in mappings:
        if not (_u(m.virt) and _u(m.phys) and _u(m.size) and _u(m.flags, 32)) \
                or m.flags & ~FLAGS_MASK:
            raise invalid(f"bad mapping {m}")
        if not _valid_phys(m.phys, m.size) or not _valid_virt(m.virt, m.size, levels):
            raise invalid(f"mapping {m} is empty, misaligned, beyond 2^52 or not canonical")


def runs(ranges: Sequence[Range], mappings: Sequence[Mapping]) -> Iterator[Mapping]:
    """Consecutive entries that continue one another, joined (as the C's next_run)."""
    items = [Mapping(r.phys, r.phys, r.size, r.flags) for r in ranges] + list(mappings)
    run: Mapping | None = None
    for x in items:
        if run is not None and x.flags == run.flags and run.virt + run.size == x.virt \
                and run.phys + run.size == x.phys:
            run = Mapping(run.virt, run.phys, run.size + x.size, run.flags)
            continue
        if run is not None:
            yield run
        run = x
    if run is not None:
        yield run


def table_bound(levels: int, allow: Sequence[bool], all_runs: Iterable[Mapping]) -> int:
    """Bytes of tables that are enough: root, plus what each run needs in an empty tree,
    less the table it shares with the previous run at each level."""
    prev: dict[int, int] = {}
    count = 1
    for run in all_runs:
        delta = (run.phys - run.virt) & U64
        last = run.virt + run.size - 1
        for k in range(1, levels):
            s = 12 + 9 * k
            mask = (1 << s) - 1
            n0, n1 = run.virt >> s, last >> s
            if k <= 2 and allow[k + 1] and not delta & mask:
                hp, tp = bool(run.virt & mask), bool((last + 1) & mask)
                if n0 == n1:
                    need, first, lastn = int(hp or tp), n0, n0
                else:
                    need = int(hp) + int(tp)
                    first = n0 if hp else n1
                    lastn = n1 if tp else n0
            else:
                need, first, lastn = n1 - n0 + 1, n0, n1
            if not need:
                continue
            if prev.get(k) == first:
                need -= 1
            prev[k] = lastn
            count += need
    return min(count * PAGE, U64)


class _Builder:
    def __init__(self, mv: memoryview, base: int, allow: list[bool]) -> None:
        self.mv = mv
        self.base = base
        self.used = 0
        self.allow = allow  # by level 0..3; leaves allowed at 1..3
        self.leaf = [0, 0, 0, 0]

    def carve(self, zero: bool) -> int | None:
        if len(self.mv) - self.used < PAGE:
            return None
        off = self.used
        if zero:
            self.mv[off:off + PAGE] = bytes(PAGE)
        self.used += PAGE
        return off

    def load(self, off: int) -> int:
        return struct.unpack_from("<Q", self.mv, off)[0]

    def store(self, off: int, value: int) -> None:
        struct.pack_into("<Q", self.mv, off, value)

    def child_of(self, entry: int) -> int:
        addr = entry & ADDR_MASK
        if entry != addr | TABLE_BITS or addr < self.base or addr - self.base >= self.used:
            raise invalid("an entry points outside the tables of this build")
        return addr - self.base

    def map(self, off: int, level: int, va: int, last: int, delta: int, fresh: bool) -> None:
        """Map [va, last] (inside this table's reach) to va + delta mod 2^64."""
        if level == 1:
            p = off + ((va >> 12) & 511) * 8
            n = ((last - va) >> 12) + 1
            e = ((va + delta) & U64) | self.leaf[1]
            if fresh:
                entries = array("Q", range(e, e + n * PAGE, PAGE))
                if sys.byteorder != "little":
                    entries.byteswap()
                self.mv[p:p + 8 * n] = entries.tobytes()
                return
            for i in range(n):
                old = self.load(p + 8 * i)
                want = e + i * PAGE
                if old == want:
                    continue
                if old:
                    raise invalid("overlapping mappings disagree")
                self.store(p + 8 * i, want)
            return

        shift = 12 + 9 * (level - 1)
        span = 1 << shift
        cur = va
        while True:
            sbase = cur & ~(span - 1)
            slast = sbase + span - 1
            seg_last = min(slast, last)
            pa = (sbase + delta) & U64
            p = off + ((cur >> shift) & 511) * 8
            old = 0 if fresh else self.load(p)
            full = cur == sbase and seg_last == slast
            if old and not old & P:
                raise invalid("a non-present entry that is not empty")
            if full and level <= 3 and self.allow[level] and not pa & (span - 1):
                e = pa | self.leaf[level]
                if not old:
                    self.store(p, e)
                elif old & PS:
                    if old != e:
                        raise invalid("overlapping mappings disagree")
                else:
                    self.map(self.child_of(old), level - 1, cur, seg_last, delta, False)
            elif not old:
                child = self.carve(zero=not full)
                if child is None:
                    raise _TooSmall
                self.store(p, (self.base + child) | TABLE_BITS)
                self.map(child, level - 1, cur, seg_last, delta, True)
            elif old & PS:
                if level > 3 or pa & (span - 1) or pa >= PHYS_LIMIT \
                        or old != pa | self.leaf[level]:
                    raise invalid("overlapping mappings disagree")
            else:
                self.map(self.child_of(old), level - 1, cur, seg_last, delta, False)
            if seg_last == last:
                return
            cur = seg_last + 1


class _TooSmall(Exception):
    pass


def build(buf: bytearray | memoryview, base: int, levels: int, ranges: Sequence[Range],
          mappings: Sequence[Mapping] = (), build_flags: int = 0) -> Built:
    """Write the page tables into `buf` (guest memory at guest-physical `base`)."""
    mv = memoryview(buf).cast("B")
    if mv.readonly:
        raise invalid("buffer is read-only")
    _check_inputs(len(mv), base, levels, build_flags, ranges, mappings)
    allow = [False, True, not build_flags & BUILD_4K_ONLY,
             not build_flags & (BUILD_4K_ONLY | BUILD_NO_1G)]
    all_runs = list(runs(ranges, mappings))
    bound = table_bound(levels, allow, all_runs)
    b = _Builder(mv, base, allow)
    root = b.carve(zero=True)
    if root is None:
        raise PageTableError(Status.BUFFER_TOO_SMALL, "no room for the root", bound)
    for run in all_runs:
        b.leaf = [0] + [leaf_bits(run.flags, build_flags, lv) for lv in (1, 2, 3)]
        try:
            b.map(root, levels, run.virt, run.virt + run.size - 1,
                  (run.phys - run.virt) & U64, False)
        except _TooSmall:
            needed = bound if bound > len(mv) else len(mv) + PAGE
            raise PageTableError(Status.BUFFER_TOO_SMALL, "tables do not fit",
                                 needed) from None
    return Built(base + root, b.used)


def walk(buf: bytes | bytearray | memoryview, base: int, cr3: int, levels: int,
         va: int) -> Translation | None:
    """Translate `va` as the CPU would; None when it is not mapped."""
    mv = memoryview(buf).cast("B")
    if levels not in (4, 5) or not _u(va) or not canonical(va, levels) or not _u(cr3):
        raise invalid("levels must be 4 or 5 and va canonical")
    table = cr3 & ADDR_MASK
    writable, nx = True, False
    for level in range(levels, 0, -1):
        shift = 12 + 9 * (level - 1)
        off = table - base
        if table < base or len(mv) < PAGE or off > len(mv) - PAGE:
            raise invalid(f"table 0x{table:x} is outside the buffer")
        e = struct.unpack_from("<Q", mv, off + ((va >> shift) & 511) * 8)[0]
        if not e & P:
            return None
        writable = writable and bool(e & RW)
        nx = nx or bool(e & NX)
        if level == 1 or e & PS:
            span = 1 << shift
            if level > 3:
                raise invalid("PS set in a PML4E/PML5E")
            if level == 1:
                addr, pat = e & ADDR_MASK, bool(e & PAT_4K)
            else:
                if e & ADDR_MASK & (span - 1) & ~PAT_LARGE:
                    raise invalid("reserved address bits set in a large leaf")
                addr, pat = e & ADDR_MASK & ~(span - 1), bool(e & PAT_LARGE)
            cache = (1 if e & PWT else 0) | (2 if e & PCD else 0) | (4 if pat else 0)
            flags = (0 if nx else CODE) | (0 if writable else READONLY) \
                | (GLOBAL if e & G else 0) | cache << CACHE_SHIFT
            return Translation(addr | (va & (span - 1)), span, e, flags, level)
        table = e & ADDR_MASK
    raise AssertionError("level 1 always returns")


# ---- Linux's EFI runtime layout ---------------------------------------------------------

def pack_memory_map(regions: Sequence[EfiRegion], desc_size: int = 48) -> bytes:
    """An EFI memory map (VirtualStart 0) with `desc_size` bytes a descriptor."""
    pad = bytes(desc_size - EFI_MEMORY_DESCRIPTOR.size)
    return b"".join(EFI_MEMORY_DESCRIPTOR.pack(r.type, r.phys, 0, r.pages, r.attribute) + pad
                    for r in regions)


def linux_efi_virtual_addresses(memory_map: bytes, desc_size: int = 48) -> list[int]:
    """The virtual address x86-64 Linux gives each descriptor at SetVirtualAddressMap
    (0: left unmapped), as cext/pagetable.c's efird_pt_linux_efi_va documents: regions
    merged as efi_merge_regions() does, walked backwards, picked by should_map_region()
    and placed top-down from EFI_VA_START by efi_map_region()."""
    if desc_size < EFI_MEMORY_DESCRIPTOR.size or len(memory_map) % desc_size:
        raise invalid("descriptor size below 40 or map not a whole number of them")
    descs = [EFI_MEMORY_DESCRIPTOR.unpack_from(memory_map, i)
             for i in range(0, len(memory_map), desc_size)]

    def folded(i: int) -> bool:
        if i == 0:
            return False
        t, pa, _, _, attr = descs[i]
        pt, ppa, _, ppages, pattr = descs[i - 1]
        return t == pt and attr == pattr and pa == (ppa + (ppages << 12)) & U64

    virt = [0] * len(descs)
    efi_va, carried, overflow = EFI_VA_START, 0, False
    for i in range(len(descs) - 1, -1, -1):
        t, pa, _, pages, attr = descs[i]
        if folded(i):
            carried += pages
            continue
        size = ((pages + carried) << 12) & U64
        carried = 0
        if not attr & EFI_MEMORY_RUNTIME and t not in (EFI_BOOT_SERVICES_CODE,
                                                      EFI_BOOT_SERVICES_DATA):
            continue
        efi_va = (efi_va - size) & U64
        if not pa & (PMD_SIZE - 1):
            efi_va &= ~(PMD_SIZE - 1)
        else:
            prev_va = efi_va
            efi_va = (efi_va & ~(PMD_SIZE - 1)) + (pa & (PMD_SIZE - 1))
            if efi_va > prev_va:
                efi_va = (efi_va - PMD_SIZE) & U64
        if efi_va < EFI_VA_END:
            overflow = True
            continue
        virt[i] = efi_va
    for i in range(1, len(descs)):
        if virt[i - 1] and folded(i):
            virt[i] = (virt[i - 1] + (descs[i - 1][3] << 12)) & U64
    if overflow:
        raise PageTableError(Status.OUT_OF_RESOURCES,
                             "runtime regions do not fit between -68 GiB and -4 GiB")
    return virt


def linux_region_flags(region: EfiRegion) -> int:
    """The flags Linux's __map_region() maps an EFI region with: writable; executable only
    for boot/runtime services code; PCD alone (UC-) unless the region is WB."""
    flags = CODE if region.type in (EFI_BOOT_SERVICES_CODE, EFI_RUNTIME_SERVICES_CODE) else 0
    return flags | (CACHE_WB if region.attribute & EFI_MEMORY_WB else CACHE_UC_MINUS)


def linux_runtime_mappings(regions: Sequence[EfiRegion], virt: Sequence[int]) -> list[Mapping]:
    """The -4 GiB mappings Linux makes for `regions` at the addresses `virt` computed for
    them (identity mappings, which Linux makes too, are the caller's ranges)."""
    return [Mapping(v, r.phys, r.pages * PAGE, linux_region_flags(r))
            for r, v in zip(regions, virt, strict=True) if v and r.pages]
