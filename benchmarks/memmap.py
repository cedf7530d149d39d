"""EFI memory-map benchmarks (cext/memmap.c): building a 100,000-region map and
AllocatePages on a fragmented 10,000-descriptor map, each against a floor measured in the
same run, and the speed-up of the C engine over the Python reference model."""

from __future__ import annotations

import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from efird._cext import ffi, lib

from benchmarks.common import Figure, median
from efird.core.memmap import AllocateType, Kind, MemoryMap, MemoryType
from efird.core.memmap_ref import PAGE_SIZE, REGION, ReferenceMemoryMap
from efird.efi.status import Status

P = PAGE_SIZE
BUILD_REGIONS = 100_000
FRAGMENTED = 10_000

# The floor for building an unsorted map: sorting 100,000 random page-aligned 64-bit keys
# in place with the same introsort the engine uses (inline comparison, no allocation).
# Any build of unsorted input has to do at least that much; the engine also validates,
# converts, moves 40-byte descriptors and merges.
SORT_FLOOR_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void swap(uint64_t *a, uint64_t *b) { uint64_t t = *a; *a = *b; *b = t; }

static void sort(uint64_t *d, size_t n, unsigned depth)
{
    while (n > 16) {
        if (depth-- == 0) break; /* never reached with random keys */
        size_t mid = n / 2, i = 0, j = n - 1;
        if (d[mid] < d[0]) swap(&d[mid], &d[0]);
        if (d[n - 1] < d[0]) swap(&d[n - 1], &d[0]);
        if (d[n - 1] < d[mid]) swap(&d[n - 1], &d[mid]);
        uint64_t p = d[mid];
        for (;;) {
            while (d[i] < p) i++;
            while (d[j] > p) j--;
            if (i >= j) break;
            swap(&d[i++], &d[j--]);
        }
        size_t left = j + 1;
        if (left < n - left) { sort(d, left, depth); d += left; n -= left; }
        else { sort(d + left, n - left, depth); n = left; }
    }
    for (size_t i = 1; i < n; i++) {
        uint64_t t = d[i];
        size_t j = i;
        for (; j > 0 && d[j - 1] > t; j--) d[j] = d[j - 1];
        d[j] = t;
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    size_t n = (size_t)atol(argv[1]);
    int rounds = atoi(argv[2]);
    uint64_t *k = malloc(n * sizeof(*k)), s = 88172645463325252ull;
    double *ns = malloc((size_t)rounds * sizeof(*ns));
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < n; i++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            k[i] = (s >> 24) << 12;
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        sort(k, n, 64);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        for (size_t i = 1; i < n; i++) if (k[i - 1] > k[i]) return 1;
        ns[r] = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    }
    qsort(ns, (size_t)rounds, sizeof(*ns), cmp);
    printf("%.0f\n", ns[rounds / 2]);
    return 0;
}
"""


def sort_floor_ns(count: int, rounds: int) -> float | None:
    """Median ns of the C key sort, or None without a C compiler."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "sort_floor.c", Path(tmp) / "sort_floor"
        src.write_text(SORT_FLOOR_C)
        try:
            subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True,
                           capture_output=True)
            out = subprocess.run([str(exe), str(count), str(rounds)], check=True,
                                 capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return float(out.stdout)


def build_input(rng: random.Random, count: int) -> list[tuple[int, int, int]]:
    """A toolstack-like description: mostly RAM, with reserved, ACPI, MMIO and runtime
    regions between, often touching (so merging has work to do), sometimes with holes."""
    kinds = [Kind.RAM] * 4 + [Kind.RESERVED, Kind.ACPI, Kind.NVS, Kind.MMIO,
                              Kind.RUNTIME_CODE, Kind.RUNTIME_DATA, Kind.BOOT_DATA]
    regions, addr = [], 0
    for _ in range(count):
        pages = rng.randint(1, 64)
        regions.append((addr, pages * P, int(rng.choice(kinds))))
        addr += (pages + (1 if rng.random() < 0.3 else 0)) * P
    return regions


def timed_ns(fn: Callable[[], object], rounds: int) -> list[float]:
    samples: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return samples


def build_figures(rng: random.Random) -> list[Figure]:
    regions = build_input(rng, BUILD_REGIONS)
    presorted = b"".join(REGION.pack(a, s, k, 0) for a, s, k in regions)
    rng.shuffle(regions)
    shuffled = b"".join(REGION.pack(a, s, k, 0) for a, s, k in regions)
    m = MemoryMap(BUILD_REGIONS)
    assert m.build(shuffled) == Status.SUCCESS
    ref = ReferenceMemoryMap(BUILD_REGIONS)
    assert ref.build(shuffled) == Status.SUCCESS and ref.descriptors() == m.descriptors()

    unsorted_ns = median(timed_ns(lambda: m.build(shuffled), 31))
    sorted_ns = median(timed_ns(lambda: m.build(presorted), 31))
    sort_ns = sort_floor_ns(BUILD_REGIONS, 31)
    # The floor for presorted input: one copy of the input bytes, C to C.
    src = ffi.from_buffer("uint8_t[]", presorted)
    dst = ffi.new("uint8_t[]", len(presorted))
    copy_ns = median(timed_ns(lambda: ffi.memmove(dst, src, len(presorted)), 31))
    ref_ns = median(timed_ns(lambda: ref.build(shuffled), 3))
    return [
        Figure("memmap build 100,000 regions (shuffled), median", unsorted_ns / 1e6, "ms",
               None if sort_ns is None else sort_ns / 1e6,
               "<= 20 ms; floor: C introsort of 100,000 u64 keys"),
        Figure("memmap build 100,000 regions (presorted), median", sorted_ns / 1e6, "ms",
               copy_ns / 1e6, "<= 20 ms; floor: memcpy of the 2.4 MB input"),
        Figure("memmap build 100,000 regions: C over Python model", ref_ns / unsorted_ns, "x",
               None, "report"),
    ]


def fragmented_map(rng: random.Random, capacity: int) -> tuple[list[tuple[int, int, int]], int]:
    """5,000 free ranges of 1-64 pages between 5,000 firmware/loader regions."""
    regions, addr = [], 0x100000
    for _ in range(FRAGMENTED // 2):
        pages = rng.randint(1, 64)
        regions.append((addr, pages * P, int(Kind.RAM)))
        addr += pages * P
        pages = rng.randint(1, 8)
        kind = rng.choice([Kind.BOOT_DATA, Kind.LOADER_CODE, Kind.LOADER_DATA, Kind.RESERVED])
        regions.append((addr, pages * P, int(kind)))
        addr += pages * P
    return regions, addr


def allocate_figures(rng: random.Random) -> list[Figure]:
    regions, top = fragmented_map(rng, FRAGMENTED + 2000)
    m = MemoryMap(FRAGMENTED + 2000)
    assert m.build(regions) == Status.SUCCESS and m.count == FRAGMENTED
    free = [d for d in m.descriptors() if d.type == MemoryType.CONVENTIONAL]
    data = int(MemoryType.LOADER_DATA)

    def any_pages() -> tuple[int, int, int, int]:
        return AllocateType.ANY_PAGES, data, rng.randint(1, 8), 0

    def max_address() -> tuple[int, int, int, int]:
        return AllocateType.MAX_ADDRESS, data, rng.randint(1, 8), top // 2

    def address() -> tuple[int, int, int, int]:
        d = rng.choice(free)
        return AllocateType.ADDRESS, data, 1, d.phys_start + rng.randrange(d.num_pages) * P

    def measure(mm: MemoryMap | ReferenceMemoryMap, make: Callable[[], tuple[int, int, int, int]],
                calls: int) -> tuple[float, float]:
        """Median ns of AllocatePages (each freed again, untimed) and of the floor, a
        no-op cffi call, timed the same way and interleaved so both see the same load."""
        values, floors = [], []
        noop = lib.efird_abi_version
        for _ in range(calls):
            kind, memory_type, pages, memory = make()
            t0 = time.perf_counter_ns()
            status, got = mm.allocate_pages(kind, memory_type, pages, memory)
            t1 = time.perf_counter_ns()
            noop()
            t2 = time.perf_counter_ns()
            assert status == Status.SUCCESS, status
            mm.free_pages(got, pages)
            values.append(t1 - t0)
            floors.append(t2 - t1)
        return statistics.median(values), statistics.median(floors)

    figures = []
    for label, make in (("AnyPages", any_pages), ("MaxAddress mid-map", max_address),
                        ("Address random free page", address)):
        measure(m, make, 2000)  # warm up
        value, floor = measure(m, make, 20000)
        figures.append(Figure(f"AllocatePages {label}, 10,000-desc map, median", value / 1000,
                              "us", floor / 1000, "<= 5 us; floor: no-op cffi call"))
    ref = ReferenceMemoryMap(FRAGMENTED + 2000)
    assert ref.build(regions) == Status.SUCCESS
    ref_value, _ = measure(ref, address, 40)
    c_value, _ = measure(m, address, 20000)
    figures.append(Figure("AllocatePages Address, 10,000 descs: C over Python model",
                          ref_value / c_value, "x", None, "report"))
    return figures


def run() -> list[Figure]:
    rng = random.Random(20240601)
    return build_figures(rng) + allocate_figures(rng)


if __name__ == "__main__":
    from benchmarks.common import report

    report(run())
