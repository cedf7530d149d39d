"""Page-table benchmarks (issue: page tables): how fast the C builder writes tables,
against memset of the same number of bytes, and how much faster it is than the Python
reference model.

The floor is `efird_pt_bench_memset` (cext/pagetable.c): a plain C memset of the same
bytes into the same buffer, called through cffi exactly as the builder is, so both sides
pay the same call overhead and the same (already faulted-in) pages. Run with
`python -m benchmarks.pagetable`; benchmarks/__main__.py does not include it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from efird._cext import ffi, lib

from benchmarks.common import Figure, median, per_call_ns, report
from efird.core import pagetable as pt
from efird.core import pagetable_ref as ref

GiB, TiB = 1 << 30, 1 << 40
BASE = 0x1_0000_0000


class Build:
    """One prepared build: the cffi arguments are made once, so the timed call is the
    C function plus the one cffi call, the same as for the memset floor."""

    def __init__(self, ranges: list[pt.Range], build_flags: int) -> None:
        probe = ffi.new("uint64_t *")
        self.ranges = ffi.new("efird_pt_range[]", len(ranges))
        for i, r in enumerate(ranges):
            self.ranges[i].phys, self.ranges[i].size, self.ranges[i].flags = (
                r.phys, r.size, r.flags)
        self.count = len(ranges)
        self.flags = build_flags
        self.cr3, self.used = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        lib.efird_pt_build(ffi.NULL, 0, BASE, 4, build_flags, self.ranges, self.count,
                           ffi.NULL, 0, self.cr3, probe)
        self.buf = bytearray(probe[0])
        self.c_buf = ffi.from_buffer(self.buf)

    def __call__(self) -> None:
        status = lib.efird_pt_build(self.c_buf, len(self.buf), BASE, 4, self.flags,
                                    self.ranges, self.count, ffi.NULL, 0, self.cr3,
                                    self.used)
        assert status == 0 and self.used[0] == len(self.buf)

    def memset(self) -> None:
        lib.efird_pt_bench_memset(self.c_buf, len(self.buf))


def throughput(name: str, build: Build, calls: int, batch: int) -> Figure:
    """Table bytes per second, and memset's, in GB/s (median of `calls` batches)."""
    for _ in range(3):  # fault the buffer in, warm the caches
        build()
        build.memset()
    tables: list[float] = []
    floor: list[float] = []
    for _ in range(calls):  # interleaved, so drift hits both sides alike
        tables += per_call_ns(build, calls=1, batch=batch)
        floor += per_call_ns(build.memset, calls=1, batch=batch)
    size = len(build.buf)
    return Figure(name, size / median(tables), "GB/s", size / median(floor),
                  ">= 0.3 x memset")


def speedup(ranges: list[pt.Range], build_flags: int) -> Figure:
    """C over the Python reference, same input and same sized buffer."""
    c = Build(ranges, build_flags)
    r_buf = bytearray(len(c.buf))

    def python() -> None:
        ref.build(r_buf, BASE, 4, ranges, (), build_flags)

    def best(fn: Callable[[], Any], runs: int) -> float:
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t0)
        return min(samples)

    python()
    c()
    assert bytes(r_buf) == bytes(c.buf)
    return Figure("page tables: C speed-up over Python reference, 1 GiB in 4 KiB pages",
                  best(python, 5) / best(c, 50), "x", None, "informational")


def run() -> list[Figure]:
    one_tib = Build([pt.Range(0, TiB)], 0)  # 3 tables, 1024 1 GiB leaves
    fine = Build([pt.Range(0, 64 * GiB)], pt.BUILD_4K_ONLY)  # 128 MiB of page tables
    return [
        throughput("page tables: 1 TiB identity in 1 GiB leaves (12 KiB)", one_tib,
                   calls=200, batch=50),
        throughput("page tables: 64 GiB identity in 4 KiB leaves (128 MiB)", fine,
                   calls=7, batch=1),
        speedup([pt.Range(0, GiB)], pt.BUILD_4K_ONLY),
    ]


if __name__ == "__main__":
    report(run())
