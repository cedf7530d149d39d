"""The boot-memory service: the guest's EFI memory map, its allocations, ExitBootServices
with a real MapKey, the runtime virtual map, and the page tables, written straight into
guest memory by the C core.

Transport-free like the variable service: the envelope handler (handler.py) decodes
requests; the daemon attaches guest memory (`attach_memory`) so BuildPageTables can
write tables where the guest asked.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from efird.core import pagetable
from efird.core.memmap import MemoryMap
from efird.core.memmap_ref import Attribute, MemoryType
from efird.efi.status import Status
from efird.log import get_logger
from efird.variables.service import VariableService

log = get_logger("efird.bootmem")

DEFAULT_CAPACITY = 4096  # descriptors; AllocatePages splits at most two per call
# BuildPageTables flags (protocols/efird.h EFIRD_PT_*)
FLAG_RUNTIME_MAPPINGS = 0x1  # also map runtime regions where Linux puts them (-4 GiB down)
FLAG_NO_1G = 0x2  # no 1 GiB leaves (CPUs without pdpe1gb, e.g. QEMU's qemu64)
FLAG_4K_ONLY = 0x4
FLAG_NO_NX = 0x8  # the loader leaves EFER.NXE clear
_BUILD_FLAGS = {FLAG_NO_1G: pagetable.BUILD_NO_1G, FLAG_4K_ONLY: pagetable.BUILD_4K_ONLY,
                FLAG_NO_NX: pagetable.BUILD_NO_NX}
KNOWN_FLAGS = FLAG_RUNTIME_MAPPINGS | FLAG_NO_1G | FLAG_4K_ONLY | FLAG_NO_NX

CODE_TYPES = {MemoryType.LOADER_CODE, MemoryType.BOOT_SERVICES_CODE,
              MemoryType.RUNTIME_SERVICES_CODE}
MMIO_TYPES = {MemoryType.MMIO, MemoryType.MMIO_PORT_SPACE}
UNMAPPED_TYPES = {MemoryType.UNUSABLE}
EFI_MEMORY_RO = 0x20000


@dataclass(frozen=True)
class ImportedState:
    exited: bool
    runtime_map: list[tuple[int, int, int, int, int]] | None
    firmware_tables: tuple[int, int, int]


class GuestMemoryView(Protocol):
    def view(self, addr: int, length: int) -> memoryview:
        """Bounds-checked guest-physical memory; raises ValueError when out of range."""


class BootMemoryService:
    def __init__(self, variables: VariableService,
                 regions: Sequence[tuple[int, int, int]] | None = None,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        self.variables = variables
        self.regions = list(regions) if regions else None
        self.map = MemoryMap(capacity)
        self.has_map = False
        self.exited = False
        self.exit_status: int | None = None
        #: called with (status, exit data as text) when the loaded image calls Exit
        self.on_image_exit: Callable[[int, str], None] | None = None
        self.guest_memory: GuestMemoryView | None = None
        # kexec: the runtime regions as (type, phys, virt, pages, attribute) once the virtual
        # map is set, kept across soft resets; the guest's firmware table pointers.
        self.runtime_map: list[tuple[int, int, int, int, int]] | None = None
        self.guest_regions: list[tuple[int, int, int]] | None = None  # from InitMemoryMap
        self.after_kexec = False
        self.firmware_tables = (0, 0, 0)
        if self.regions is not None:
            status = self.map.build(self.regions)
            if status is not Status.SUCCESS:
                raise ValueError(f"the toolstack's memory description is invalid: {status.name}")
            self.has_map = True

    def attach_memory(self, memory: GuestMemoryView | None) -> None:
        self.guest_memory = memory

    def reset(self) -> None:
        """Platform reset: the map starts again from the toolstack's description."""
        self.exited = False
        self.exit_status = None
        self.runtime_map = None
        self.guest_regions = None
        self.after_kexec = False
        self.firmware_tables = (0, 0, 0)
        self.map = MemoryMap(self.map.capacity)
        self.has_map = False
        if self.regions is not None:
            self.map.build(self.regions)
            self.has_map = True

    # -- kexec -----------------------------------------------------------------------------
    def runtime_descriptors(self) -> list[tuple[int, int, int, int, int]]:
        """(type, phys, virt, pages, attribute) of every runtime region now."""
        return [(d.type, d.phys_start, d.virt_start, d.num_pages, d.attribute)
                for d in self.map.descriptors() if d.attribute & Attribute.RUNTIME]

    def soft_reset(self) -> Status:
        """kexec: the next kernel gets a fresh boot path (memory map, allocations, page
        tables) while the runtime regions, their virtual addresses and the variables stay
        as they are (UEFI firmware is not re-entered; Linux reuses the runtime map)."""
        if not self.has_map:
            return Status.NOT_READY
        keep = self.runtime_map if self.runtime_map is not None else None
        runtime = self.runtime_descriptors()
        fresh = MemoryMap(self.map.capacity)
        # the toolstack's description, or the hvm_memmap the guest gave InitMemoryMap
        source = self.regions if self.regions is not None else self.guest_regions
        if source is None:
            return Status.NOT_READY
        status = fresh.build(source)
        if status is not Status.SUCCESS:
            return status
        existing = {(d.phys_start, d.num_pages) for d in fresh.descriptors()
                    if d.attribute & Attribute.RUNTIME}
        for kind, phys, _virt, pages, _attr in runtime:
            if (phys, pages) in existing or kind in MMIO_TYPES:
                continue
            status, _ = fresh.allocate_pages(2, kind, pages, phys)  # AllocateAddress
            if status is not Status.SUCCESS:
                return Status.DEVICE_ERROR
        self.map = fresh
        self.exited = False
        self.after_kexec = True
        self.runtime_map = keep
        log.info("soft reset", runtime_regions=len(runtime),
                 virtual_map=self.runtime_map is not None)
        return Status.SUCCESS

    def export_state(self) -> dict[str, object]:
        """What migration moves of the boot-memory service: the phase, the runtime map
        with its virtual addresses and the firmware table pointers (the allocations of
        the boot path are not moved: a migrated guest is past ExitBootServices, or boots
        again)."""
        runtime = self.runtime_map
        return {"exited": self.exited,
                "runtime_map": None if runtime is None else [list(r) for r in runtime],
                "firmware_tables": list(self.firmware_tables)}

    @staticmethod
    def parse_state(state: dict[str, object]) -> ImportedState:
        """Check an exported state without applying it (ValueError/TypeError/KeyError)."""
        runtime = state["runtime_map"]
        tables = state["firmware_tables"]
        if not isinstance(tables, list) or len(tables) != 3:
            raise ValueError("firmware_tables must hold three addresses")
        parsed: list[tuple[int, int, int, int, int]] | None = None
        if runtime is not None:
            if not isinstance(runtime, list):
                raise ValueError("runtime_map must be a list")
            parsed = []
            for entry in runtime:
                kind, phys, virt, pages, attr = (int(x) for x in entry)
                parsed.append((kind, phys, virt, pages, attr))
        return ImportedState(bool(state["exited"]), parsed,
                             (int(tables[0]), int(tables[1]), int(tables[2])))

    def import_state(self, state: ImportedState) -> None:
        self.exited = state.exited
        self.runtime_map = state.runtime_map
        # like a kexec'd kernel, the migrated guest may only present the map it set
        self.after_kexec = state.runtime_map is not None
        self.firmware_tables = state.firmware_tables

    def set_firmware_tables(self, fw_vendor: int, tables: int, smbios: int) -> Status:
        self.firmware_tables = (fw_vendor, tables, smbios)
        return Status.SUCCESS

    def setup_data(self) -> bytes:
        """Linux's struct efi_setup_data for SETUP_EFI: fw_vendor, __unused, tables,
        smbios, reserved[8]."""
        fw_vendor, tables, smbios = self.firmware_tables
        return struct.pack("<QQQQ8Q", fw_vendor, 0, tables, smbios, *([0] * 8))

    def runtime_map_bytes(self, descriptor_size: int) -> bytes:
        """The runtime map for the next kernel: EFI_MEMORY_DESCRIPTORs with VirtualStart."""
        entries = self.runtime_map if self.runtime_map is not None else \
            self.runtime_descriptors()
        pad = bytes(descriptor_size - 40)
        return b"".join(struct.pack("<IIQQQQ", kind, 0, phys, virt, pages, attr) + pad
                        for kind, phys, virt, pages, attr in entries)

    # -- boot services -------------------------------------------------------------------
    def _boot_phase(self) -> Status | None:
        if self.exited:
            return Status.UNSUPPORTED  # boot services are gone after ExitBootServices
        if not self.has_map:
            return Status.NOT_READY
        return None

    def init_memory_map(self, regions: Sequence[tuple[int, int, int]]) -> Status:
        """Build the map from the guest's hvm_memmap when the toolstack gave none."""
        if self.exited:
            return Status.UNSUPPORTED
        if self.has_map:
            return Status.ALREADY_STARTED
        status = self.map.build(regions)
        if status is Status.SUCCESS:
            self.has_map = True
            self.guest_regions = list(regions)
        return status

    def get_memory_map(self, buffer: memoryview, descriptor_size: int
                       ) -> tuple[Status, int, int, int, int]:
        """(status, size written or needed, map key, descriptor size, version)."""
        refused = self._boot_phase()
        if refused is not None:
            return refused, 0, 0, descriptor_size, 0
        info = self.map.get_memory_map(buffer, descriptor_size)
        return (info.status, info.map_size, info.map_key, info.descriptor_size,
                info.descriptor_version)

    def allocate_pages(self, alloc_type: int, memory_type: int, pages: int,
                       memory: int) -> tuple[Status, int]:
        refused = self._boot_phase()
        if refused is not None:
            return refused, memory
        return self.map.allocate_pages(alloc_type, memory_type, pages, memory)

    def free_pages(self, memory: int, pages: int) -> Status:
        refused = self._boot_phase()
        if refused is not None:
            return refused
        return self.map.free_pages(memory, pages)

    def exit_boot_services(self, map_key: int) -> Status:
        """A stale key leaves everything as it was (Linux then fetches the map again)."""
        refused = self._boot_phase()
        if refused is not None:
            return refused
        if map_key != self.map.map_key:
            return Status.INVALID_PARAMETER
        self.exited = True
        self.variables.exit_boot_services()
        log.info("exit boot services", map_key=map_key)
        return Status.SUCCESS

    def exit(self, exit_status: int, exit_data: bytes) -> Status:
        """The loaded image gave up: recorded and reported to the toolstack."""
        self.exit_status = exit_status
        text = exit_data[:512].decode("utf-16-le", errors="replace").split("\0")[0]
        log.error("guest image exited", exit_status=f"{exit_status:#x}", exit_data=text)
        if self.on_image_exit is not None:
            self.on_image_exit(exit_status, text)
        return Status.SUCCESS

    # -- runtime ---------------------------------------------------------------------------
    def set_virtual_address_map(self, virtual_map: bytes, descriptor_size: int,
                                version: int) -> Status:
        if not self.exited:
            return Status.UNSUPPORTED  # only callable at runtime (UEFI 2.10 §8.4.1)
        # a kexec'd kernel may only present the map the first kernel set
        if (self.after_kexec and self.runtime_map is not None and not self.map.virtual_mode
                and not self._same_runtime_map(virtual_map, descriptor_size)):
            return Status.UNSUPPORTED
        status = self.map.set_virtual_address_map(virtual_map, descriptor_size, version)
        if status is Status.SUCCESS and self.runtime_map is None:
            self.runtime_map = self.runtime_descriptors()
        return status

    def _same_runtime_map(self, virtual_map: bytes, descriptor_size: int) -> bool:
        if descriptor_size < 40 or len(virtual_map) % descriptor_size:
            return False
        assert self.runtime_map is not None
        wanted = {(phys, pages): virt for _k, phys, virt, pages, _a in self.runtime_map}
        given: dict[tuple[int, int], int] = {}
        for at in range(0, len(virtual_map), descriptor_size):
            _kind, _pad, phys, virt, pages, attr = struct.unpack_from("<IIQQQQ", virtual_map, at)
            if attr & Attribute.RUNTIME:
                given[(phys, pages)] = virt
        return given == wanted

    def convert_pointer(self, debug_disposition: int, address: int) -> tuple[Status, int]:
        return self.map.convert_pointer(address, debug_disposition)

    # -- page tables -----------------------------------------------------------------------
    def build_page_tables(self, table_base: int, table_size: int, levels: int,
                          flags: int) -> tuple[Status, int, int]:
        """(status, CR3, bytes used): an identity map of the memory map, plus Linux's
        -4 GiB runtime mappings with FLAG_RUNTIME_MAPPINGS, written at table_base."""
        if not self.has_map:
            return Status.NOT_READY, 0, 0
        if flags & ~KNOWN_FLAGS or levels not in (4, 5):
            return Status.INVALID_PARAMETER, 0, 0
        if self.guest_memory is None:
            return Status.UNSUPPORTED, 0, 0  # no guest memory attached (efird call)
        try:
            target = self.guest_memory.view(table_base, table_size)
        except ValueError:
            return Status.INVALID_PARAMETER, 0, 0
        ranges, mappings = self._mappings(bool(flags & FLAG_RUNTIME_MAPPINGS))
        try:
            build_flags = sum(v for k, v in _BUILD_FLAGS.items() if flags & k)
            built = pagetable.build(target, table_base, levels, ranges, mappings, build_flags)
        except pagetable.PageTableError as exc:
            return exc.status, 0, exc.bytes_needed
        finally:
            target.release()
        return Status.SUCCESS, built.cr3, built.bytes_used

    def _mappings(self, runtime: bool) -> tuple[list[pagetable.Range], list[pagetable.Mapping]]:
        ranges = []
        regions = []
        for d in self.map.descriptors():
            if d.type in UNMAPPED_TYPES or not d.num_pages:
                continue
            flags = pagetable.CODE if d.type in CODE_TYPES else 0
            if d.attribute & EFI_MEMORY_RO:
                flags |= pagetable.READONLY
            if d.type in MMIO_TYPES:
                flags |= pagetable.CACHE_UC
            elif d.attribute & Attribute.WC and not d.attribute & Attribute.WB:
                flags |= pagetable.CACHE_WC  # write-combining only (a framebuffer)
            else:
                flags |= pagetable.CACHE_WB
            ranges.append(pagetable.Range(d.phys_start, d.num_pages << 12, flags))
            if d.attribute & Attribute.RUNTIME:
                regions.append(pagetable.EfiRegion(d.type, d.phys_start, d.num_pages,
                                                   d.attribute))
        mappings: list[pagetable.Mapping] = []
        if runtime and regions:
            encoded = pagetable.pack_memory_map(regions)
            virt = pagetable.linux_efi_virtual_addresses(encoded)
            mappings = pagetable.linux_runtime_mappings(regions, virt)
        return ranges, mappings
