"""The PVH shim as built by the project's own build: what QEMU and Xen need to find in
the ELF, and the properties the runtime region depends on."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from .guest.boot import ROOT, SHIM_OUT, build_shim

PT_LOAD, PT_NOTE = 1, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


@pytest.fixture(scope="module")
def elf() -> bytes:
    return build_shim().read_bytes()


def program_headers(data: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(type, offset, vaddr, paddr, filesz, memsz) of every program header."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    out = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        out.append((p_type, off, vaddr, paddr, filesz, memsz))
    return out


def symbols(path: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in map(str.split, out.splitlines())
            if len(parts) == 3}


def test_elf64_with_a_pvh_entry_note_in_a_pt_note(elf: bytes) -> None:
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1  # ELF64, little-endian
    assert struct.unpack_from("<H", elf, 0x12)[0] == 62  # EM_X86_64
    notes = [ph for ph in program_headers(elf) if ph[0] == PT_NOTE]
    assert len(notes) == 1
    _t, off, _v, _p, size, _m = notes[0]
    found = []
    at = off
    while at < off + size:
        namesz, descsz, ntype = struct.unpack_from("<III", elf, at)
        name = elf[at + 12: at + 12 + namesz]
        desc_at = at + 12 + (namesz + 3) // 4 * 4
        found.append((name, descsz, ntype, elf[desc_at: desc_at + descsz]))
        at = desc_at + (descsz + 3) // 4 * 4
    (note,) = [n for n in found if n[2] == XEN_ELFNOTE_PHYS32_ENTRY]
    assert note[0] == b"Xen\0" and note[1] == 8
    entry, = struct.unpack("<Q", note[3])
    assert entry == symbols(SHIM_OUT / "efird-shim.elf")["pvh_start32"]
    loads = [ph for ph in program_headers(elf) if ph[0] == PT_LOAD]
    assert any(p <= entry < p + m for _t, _o, _v, p, _f, m in loads)
    assert all(p + m < 1 << 32 for _t, _o, _v, p, _f, m in loads)  # reachable in 32-bit mode


def test_runtime_region_is_page_aligned_and_holds_all_runtime_data(elf: bytes) -> None:
    sym = symbols(SHIM_OUT / "efird-shim.elf")
    start, end = sym["__rt_start"], sym["__rt_end"]
    assert start % 4096 == 0 and end % 4096 == 0 and start < end
    rt = symbols(SHIM_OUT / "rt.o")
    for name in rt:
        if name in sym and not name.startswith("__"):
            assert start <= sym[name] < end, f"{name} is outside the runtime region"


def test_runtime_object_has_no_absolute_relocations() -> None:
    """The runtime region moves at SetVirtualAddressMap: its code must reach its data
    RIP-relative. Only the tables the OS reads hold absolute addresses, and they are
    filled in at run time and moved by SetVirtualAddressMap."""
    build_shim()
    out = subprocess.run(["readelf", "-rW", str(SHIM_OUT / "rt.o")], capture_output=True,
                         text=True, check=True).stdout
    kinds = {line.split()[2] for line in out.splitlines() if "R_X86_64" in line}
    assert kinds <= {"R_X86_64_PC32", "R_X86_64_PLT32"}, kinds


def test_region_kinds_in_the_abi_header_match_the_memory_map_engine(tmp_path: Path) -> None:
    pairs = ["MMIO", "RUNTIME_CODE", "RUNTIME_DATA", "BOOT_DATA", "BOOT_CODE", "LOADER_CODE",
             "LOADER_DATA", "MMIO_PORT"]
    src = tmp_path / "kinds.c"
    src.write_text('#include "efird.h"\n#include "memmap.h"\n' + "".join(
        f'_Static_assert(EFIRD_REGION_{k} == EFIRD_MM_KIND_{k}, "{k}");\n' for k in pairs))
    done = subprocess.run(["gcc", "-fsyntax-only", f"-I{ROOT / 'protocols'}",
                           f"-I{ROOT / 'cext'}", str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_shim_builds_without_warnings(tmp_path: Path) -> None:
    done = subprocess.run(["make", "-C", str(ROOT / "protocols" / "shim"), f"OUT={tmp_path}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr  # -Werror
    assert "warning" not in (done.stdout + done.stderr).lower()
    assert (tmp_path / "efird-shim.elf").exists()
