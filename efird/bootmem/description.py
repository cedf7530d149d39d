"""The toolstack's description of a guest's memory: `--memmap FILE`.

One region per line, `START SIZE KIND`, numbers in decimal or 0x-hex, `#` comments.
KIND is an E820 / hvm_memmap number (1 ram, 2 reserved, 3 acpi, 4 nvs, 5 unusable,
6 disabled, 7 pmem) or one of the names below, including efird's own kinds for MMIO and
firmware regions. Errors name the file and the line.
"""

from __future__ import annotations

from pathlib import Path

from efird.core.memmap_ref import Kind

NAMES = {
    "ram": Kind.RAM, "reserved": Kind.RESERVED, "acpi": Kind.ACPI, "nvs": Kind.NVS,
    "unusable": Kind.UNUSABLE, "disabled": Kind.DISABLED, "pmem": Kind.PERSISTENT,
    "mmio": Kind.MMIO, "mmio-port": Kind.MMIO_PORT, "runtime-code": Kind.RUNTIME_CODE,
    "runtime-data": Kind.RUNTIME_DATA, "boot-code": Kind.BOOT_CODE,
    "boot-data": Kind.BOOT_DATA, "loader-code": Kind.LOADER_CODE,
    "loader-data": Kind.LOADER_DATA,
}


class DescriptionError(ValueError):
    """The memory description file is not usable; the message names file and line."""


def parse(text: str, source: str = "<memmap>") -> list[tuple[int, int, int]]:
    regions = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            raise DescriptionError(f"{source}:{number}: expected 'START SIZE KIND', got {raw!r}")
        try:
            start, size = int(fields[0], 0), int(fields[1], 0)
        except ValueError:
            raise DescriptionError(f"{source}:{number}: START and SIZE must be numbers") from None
        kind_text = fields[2].lower()
        if kind_text in NAMES:
            kind = int(NAMES[kind_text])
        else:
            try:
                kind = int(kind_text, 0)
            except ValueError:
                raise DescriptionError(
                    f"{source}:{number}: unknown kind {fields[2]!r} "
                    f"(use a number or one of {', '.join(NAMES)})") from None
        if start < 0 or size <= 0:
            raise DescriptionError(f"{source}:{number}: empty or negative region")
        regions.append((start, size, kind))
    if not regions:
        raise DescriptionError(f"{source}: no regions")
    return regions


def load(path: Path) -> list[tuple[int, int, int]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DescriptionError(f"{path}: {exc.strerror or exc}") from None
    return parse(text, str(path))


def q35(ram_mib: int) -> list[tuple[int, int, int]]:
    """QEMU q35's guest-physical layout for `ram_mib` of RAM (hw/i386/pc_q35.c): low RAM
    up to 2 GiB when the guest has more than 2.75 GiB, the rest above 4 GiB; the legacy
    VGA/BIOS hole; the PCIe ECAM, PCI hole and firmware flash as MMIO."""
    ram = ram_mib << 20
    low = ram if ram <= 0xB0000000 else 0x80000000
    regions = [
        (0, 0xA0000, int(Kind.RAM)),
        (0xA0000, 0x60000, int(Kind.RESERVED)),
        (0x100000, low - 0x100000, int(Kind.RAM)),
        (0xB0000000, 0x10000000, int(Kind.MMIO)),  # PCIe ECAM
        (0xFEC00000, 0x1000, int(Kind.MMIO)),  # IOAPIC
        (0xFED00000, 0x1000, int(Kind.MMIO)),  # HPET
        (0xFEE00000, 0x100000, int(Kind.MMIO)),  # LAPIC
        (0xFFC00000, 0x400000, int(Kind.RESERVED)),  # firmware flash
    ]
    if ram > low:
        regions.append((0x100000000, ram - low, int(Kind.RAM)))
    return regions
