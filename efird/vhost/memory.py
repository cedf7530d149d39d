"""Guest memory: the only way efird touches a mapping.

The frontend hands over regions as file descriptors (SET_MEM_TABLE, ADD_MEM_REG). Each
is mapped whole (size + mmap_offset, as the spec says) and addressed two ways: by
guest-physical address (descriptor buffers) and by the frontend's userspace address
(ring addresses). Every access is bounds-checked against one region; an access that
does not fit entirely in one region fails with GuestMemoryError, never touches memory.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
from dataclasses import dataclass, field


class GuestMemoryError(ValueError):
    """An address or length the guest (or frontend) gave does not fit guest memory."""


@dataclass
class Region:
    gpa: int
    size: int
    uva: int
    mmap_offset: int
    mapping: mmap.mmap = field(repr=False)
    view: memoryview = field(repr=False)  # the region's bytes: view[0] is gpa

    def close(self) -> None:
        self.view.release()
        # a view may still be exported somewhere: the GC then finishes the job
        with contextlib.suppress(BufferError):
            self.mapping.close()


def map_region(fd: int, gpa: int, size: int, uva: int, mmap_offset: int) -> Region:
    """Map one region from the frontend's fd (the fd is not kept)."""
    if size <= 0 or gpa + size > 1 << 64 or uva + size > 1 << 64:
        raise GuestMemoryError(f"invalid region gpa={gpa:#x} size={size:#x}")
    try:
        mapping = mmap.mmap(fd, size + mmap_offset, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, OverflowError) as exc:
        raise GuestMemoryError(f"cannot map region gpa={gpa:#x} size={size:#x}: {exc}") from exc
    view = memoryview(mapping)[mmap_offset : mmap_offset + size]
    return Region(gpa, size, uva, mmap_offset, mapping, view)


class GuestMemory:
    """The current memory table. `generation` changes whenever the table changes, so
    users holding derived views (the rings) know to re-translate."""

    def __init__(self) -> None:
        self._regions: list[Region] = []  # sorted by gpa
        self._starts: list[int] = []
        self.generation = 0

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions)

    def replace(self, regions: list[Region]) -> None:
        old = self._regions
        self._regions = sorted(regions, key=lambda r: r.gpa)
        self._starts = [r.gpa for r in self._regions]
        self.generation += 1
        for r in old:
            if r not in regions:
                r.close()

    def add(self, region: Region) -> None:
        for r in self._regions:
            if r.gpa < region.gpa + region.size and region.gpa < r.gpa + r.size:
                region.close()
                raise GuestMemoryError(f"region at {region.gpa:#x} overlaps one at {r.gpa:#x}")
        self.replace([*self._regions, region])

    def remove(self, gpa: int, size: int, uva: int) -> bool:
        keep = [r for r in self._regions if not (r.gpa == gpa and r.size == size
                                                  and r.uva == uva)]
        if len(keep) == len(self._regions):
            return False
        self.replace(keep)
        return True

    def clear(self) -> None:
        self.replace([])

    def _find_gpa(self, addr: int, length: int) -> tuple[Region, int]:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            r = self._regions[i]
            off = addr - r.gpa
            if length >= 0 and off + length <= r.size:
                return r, off
        raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} is not in guest memory")

    def view(self, addr: int, length: int) -> memoryview:
        """A bounds-checked view of guest-physical memory (for short-lived use)."""
        r, off = self._find_gpa(addr, length)
        return r.view[off : off + length]

    def read(self, addr: int, length: int) -> bytes:
        """Copy bytes out of guest memory (the copy is what gets parsed)."""
        return bytes(self.view(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.view(addr, len(data))[:] = data

    def uva_view(self, uva: int, length: int) -> memoryview:
        """A view by the frontend's userspace address (vring addresses)."""
        for r in self._regions:
            off = uva - r.uva
            if off >= 0 and off + length <= r.size:
                return r.view[off : off + length]
        raise GuestMemoryError(f"userspace range {uva:#x}+{length:#x} is not in any region")


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
