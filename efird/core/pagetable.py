"""x86-64 page tables written by the C core (cext/pagetable.c) into any writable buffer.

The buffer goes to C through `ffi.from_buffer`, without a copy, so the same call writes
into a bytearray in a test or straight into a guest-memory mmap in the daemon. Errors
come back as EFI statuses (PageTableError), the same ones the pure-Python reference
model in efird.core.pagetable_ref raises for the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from efird._cext import ffi, lib
from efird.core.pagetable_ref import (
    BUILD_4K_ONLY,
    BUILD_NO_1G,
    BUILD_NO_NX,
    CACHE_MASK,
    CACHE_SHIFT,
    CACHE_UC,
    CACHE_UC_MINUS,
    CACHE_WB,
    CACHE_WC,
    CACHE_WP,
    CACHE_WT,
    CODE,
    EFI_VA_END,
    EFI_VA_START,
    GLOBAL,
    PAT_MSR,
    READONLY,
    Built,
    EfiRegion,
    Mapping,
    PageTableError,
    Range,
    Translation,
    linux_region_flags,
    linux_runtime_mappings,
    pack_memory_map,
)
from efird.efi.status import Status

__all__ = [
    "BUILD_4K_ONLY", "BUILD_NO_1G", "BUILD_NO_NX", "CACHE_MASK", "CACHE_SHIFT", "CACHE_UC",
    "CACHE_UC_MINUS", "CACHE_WB", "CACHE_WC", "CACHE_WP", "CACHE_WT", "CODE", "EFI_VA_END",
    "EFI_VA_START", "GLOBAL", "PAT_MSR", "READONLY", "Built", "EfiRegion", "Mapping",
    "PageTableError", "Range", "Translation", "build", "linux_efi_virtual_addresses",
    "linux_region_flags", "linux_runtime_mappings", "pack_memory_map", "walk",
]

_U64 = 1 << 64
_U32 = 1 << 32


def _fits(*values: int, limit: int = _U64) -> bool:
    return all(isinstance(v, int) and 0 <= v < limit for v in values)


def _error(status: int, what: str, bytes_needed: int = 0) -> PageTableError:
    return PageTableError(Status(status), what, bytes_needed)


def _c_ranges(ranges: Sequence[Range]) -> Any:
    arr = ffi.new("efird_pt_range[]", max(len(ranges), 1))
    for i, r in enumerate(ranges):
        if not (_fits(r.phys, r.size) and _fits(r.flags, limit=_U32)):
            raise _error(Status.INVALID_PARAMETER, f"range {r} does not fit the C types")
        arr[i].phys, arr[i].size, arr[i].flags = r.phys, r.size, r.flags
    return arr


def _c_mappings(mappings: Sequence[Mapping]) -> Any:
    arr = ffi.new("efird_pt_mapping[]", max(len(mappings), 1))
    for i, m in enumerate(mappings):
        if not (_fits(m.virt, m.phys, m.size) and _fits(m.flags, limit=_U32)):
            raise _error(Status.INVALID_PARAMETER, f"mapping {m} does not fit the C types")
        arr[i].virt, arr[i].phys, arr[i].size, arr[i].flags = m.virt, m.phys, m.size, m.flags
    return arr


def build(buf: Any, base: int, levels: int, ranges: Sequence[Range],
          mappings: Sequence[Mapping] = (), build_flags: int = 0) -> Built:
    """Write 4- or 5-level tables into `buf` (any writable buffer: guest memory at
    guest-physical `base`); identity-map `ranges`, then map `mappings`.

    Raises PageTableError: INVALID_PARAMETER for bad or conflicting input,
    BUFFER_TOO_SMALL with `bytes_needed` (build with a zero-length buffer to size one).
    """
    if not (_fits(base) and _fits(levels, build_flags, limit=_U32)):
        raise _error(Status.INVALID_PARAMETER, "base, levels or flags out of range")
    c_buf = ffi.from_buffer(buf, require_writable=True)
    cr3, used = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    status = lib.efird_pt_build(c_buf, len(c_buf), base, levels, build_flags,
                                _c_ranges(ranges), len(ranges), _c_mappings(mappings),
                                len(mappings), cr3, used)
    if status == Status.BUFFER_TOO_SMALL:
        raise _error(status, "tables do not fit", used[0])
    if status:
        raise _error(status, "page tables not built")
    return Built(cr3[0], used[0])


def walk(buf: Any, base: int, cr3: int, levels: int, va: int) -> Translation | None:
    """Translate `va` through the tables at `cr3`; None when it is not mapped."""
    if not (_fits(base, cr3, va) and _fits(levels, limit=_U32)):
        raise _error(Status.INVALID_PARAMETER, "an argument is out of range")
    c_buf = ffi.from_buffer(buf)
    out = ffi.new("efird_pt_translation *")
    status = lib.efird_pt_walk(c_buf, len(c_buf), base, cr3, levels, va, out)
    if status == Status.NOT_FOUND:
        return None
    if status:
        raise _error(status, f"cannot walk to 0x{va:x}")
    return Translation(out.phys, out.leaf_size, out.entry, out.flags, out.level)


def linux_efi_virtual_addresses(memory_map: bytes, desc_size: int = 48) -> list[int]:
    """Where x86-64 Linux maps each descriptor of `memory_map` at SetVirtualAddressMap
    (0 = not mapped): see efird_pt_linux_efi_va in cext/pagetable.h."""
    if not _fits(desc_size) or desc_size == 0:
        raise _error(Status.INVALID_PARAMETER, "bad descriptor size")
    count = len(memory_map) // desc_size
    virt = ffi.new("uint64_t[]", max(count, 1))
    status = lib.efird_pt_linux_efi_va(ffi.from_buffer(memory_map), len(memory_map),
                                       desc_size, virt, count)
    if status:
        raise _error(status, "no Linux layout for this memory map")
    return list(virt[0:count])
