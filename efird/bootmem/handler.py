"""The boot-memory service's envelope handler (EFIRD_BOOTMEM_SERVICE_GUID,
protocols/PROTOCOL.md §5): decode, call BootMemoryService, encode."""

from __future__ import annotations

import struct
from collections.abc import Callable

from efird.abi import layouts as L
from efird.abi.layouts import BootMemFunction as F
from efird.abi.layouts import KexecFunction as K
from efird.bootmem.service import BootMemoryService
from efird.core.memmap_ref import MAX_DESCRIPTOR_SIZE
from efird.efi.status import Status
from efird.envelope import FunctionHandler

_Q = struct.Struct("<Q")
_GMM = L.EFIRD_GET_MEMORY_MAP
_ALLOC = L.EFIRD_ALLOCATE_PAGES
_FREE = L.EFIRD_FREE_PAGES
_EBS = L.EFIRD_EXIT_BOOT_SERVICES
_SVAM = L.EFIRD_SET_VIRTUAL_ADDRESS_MAP
_CONV = L.EFIRD_CONVERT_POINTER
_BPT = L.EFIRD_BUILD_PAGE_TABLES
_EXIT = L.EFIRD_EXIT
_INIT = L.EFIRD_INIT_MEMORY_MAP
_HVM = L.EFIRD_HVM_MEMMAP_ENTRY
MAX_INIT_ENTRIES = 4096


class BootMemoryHandler(FunctionHandler):
    header_name = "EFIRD_SERVICE_HEADER"

    def __init__(self, service: BootMemoryService) -> None:
        super().__init__()
        self.service = service
        self.functions = {
            F.GET_MEMORY_MAP: self._get_memory_map,
            F.ALLOCATE_PAGES: self._allocate_pages,
            F.FREE_PAGES: self._free_pages,
            F.EXIT_BOOT_SERVICES: self._exit_boot_services,
            F.SET_VIRTUAL_ADDRESS_MAP: self._set_virtual_address_map,
            F.CONVERT_POINTER: self._convert_pointer,
            F.BUILD_PAGE_TABLES: self._build_page_tables,
            F.EXIT: self._exit,
            F.INIT_MEMORY_MAP: self._init_memory_map,
        }

    @staticmethod
    def may_block(request: bytes) -> bool:
        """Building page tables for a large guest takes milliseconds."""
        return len(request) >= 32 and _Q.unpack_from(request, 24)[0] == F.BUILD_PAGE_TABLES

    def _get_memory_map(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _GMM.size:
            return Status.BAD_BUFFER_SIZE
        size, _key, desc_size, _version, _reserved = _GMM.struct.unpack_from(buf, p)
        room = min(size, avail - _GMM.size)
        view = memoryview(buf)[p + _GMM.size : p + _GMM.size + room]
        try:
            status, used, key, desc_size, version = self.service.get_memory_map(view, desc_size)
        finally:
            view.release()
        if status in (Status.SUCCESS, Status.BUFFER_TOO_SMALL, Status.INVALID_PARAMETER):
            _GMM.struct.pack_into(buf, p, used, key, desc_size, version, 0)
        return status

    def _allocate_pages(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _ALLOC.size:
            return Status.BAD_BUFFER_SIZE
        alloc_type, memory_type, pages, memory = _ALLOC.struct.unpack_from(buf, p)
        status, address = self.service.allocate_pages(alloc_type, memory_type, pages, memory)
        if status is Status.SUCCESS:
            _Q.pack_into(buf, p + _ALLOC.offsets["Memory"], address)
        return status

    def _free_pages(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _FREE.size:
            return Status.BAD_BUFFER_SIZE
        return self.service.free_pages(*_FREE.struct.unpack_from(buf, p))

    def _exit_boot_services(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _EBS.size:
            return Status.BAD_BUFFER_SIZE
        return self.service.exit_boot_services(*_EBS.struct.unpack_from(buf, p))

    def _set_virtual_address_map(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _SVAM.size:
            return Status.BAD_BUFFER_SIZE
        size, desc_size, version, _reserved = _SVAM.struct.unpack_from(buf, p)
        if size > avail - _SVAM.size:
            return Status.BAD_BUFFER_SIZE
        at = p + _SVAM.size
        return self.service.set_virtual_address_map(bytes(buf[at : at + size]), desc_size,
                                                    version)

    def _convert_pointer(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _CONV.size:
            return Status.BAD_BUFFER_SIZE
        disposition, address = _CONV.struct.unpack_from(buf, p)
        status, converted = self.service.convert_pointer(disposition, address)
        if status is Status.SUCCESS:
            _Q.pack_into(buf, p + _CONV.offsets["Address"], converted)
        return status

    def _build_page_tables(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _BPT.size:
            return Status.BAD_BUFFER_SIZE
        base, size, levels, flags, _cr3, _used = _BPT.struct.unpack_from(buf, p)
        status, cr3, used = self.service.build_page_tables(base, size, levels, flags)
        if status in (Status.SUCCESS, Status.BUFFER_TOO_SMALL):
            _BPT.struct.pack_into(buf, p, base, size, levels, flags, cr3, used)
        return status

    def _exit(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _EXIT.size:
            return Status.BAD_BUFFER_SIZE
        exit_status, data_size = _EXIT.struct.unpack_from(buf, p)
        if data_size > avail - _EXIT.size:
            return Status.BAD_BUFFER_SIZE
        at = p + _EXIT.size
        return self.service.exit(exit_status, bytes(buf[at : at + data_size]))

    def _init_memory_map(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _INIT.size:
            return Status.BAD_BUFFER_SIZE
        count, flags = _INIT.struct.unpack_from(buf, p)
        if flags or not 0 < count <= MAX_INIT_ENTRIES:
            return Status.INVALID_PARAMETER
        if count * _HVM.size > avail - _INIT.size:
            return Status.BAD_BUFFER_SIZE
        regions = [(addr, size, kind) for addr, size, kind, _r in
                   (_HVM.struct.unpack_from(buf, p + _INIT.size + i * _HVM.size)
                    for i in range(count))]
        return self.service.init_memory_map(regions)


_RMAP = L.EFIRD_RUNTIME_MAP
_SETUP = L.EFIRD_SETUP_DATA
_SOFT = L.EFIRD_SOFT_RESET
_TABLES = L.EFIRD_FIRMWARE_TABLES


class KexecHandler(FunctionHandler):
    """The kexec service (EFIRD_KEXEC_SERVICE_GUID): what a kexec'd kernel needs from the
    first one's firmware, and the soft reset that gives it a fresh boot path."""

    header_name = "EFIRD_SERVICE_HEADER"

    def __init__(self, service: BootMemoryService,
                 soft_reset: Callable[[str], Status]) -> None:
        super().__init__()
        self.service = service
        self.soft_reset = soft_reset
        self.functions = {
            K.GET_RUNTIME_MAP: self._get_runtime_map,
            K.GET_SETUP_DATA: self._get_setup_data,
            K.SOFT_RESET: self._soft_reset,
            K.SET_FIRMWARE_TABLES: self._set_firmware_tables,
        }

    def _get_runtime_map(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _RMAP.size:
            return Status.BAD_BUFFER_SIZE
        size, desc_size, _version, _reserved = _RMAP.struct.unpack_from(buf, p)
        desc_size = desc_size or 48
        # as GetMemoryMap: a multiple of 8 from 40 to 4096 (a guest-chosen size is padding
        # efird allocates per descriptor)
        if desc_size < 40 or desc_size % 8 or desc_size > MAX_DESCRIPTOR_SIZE:
            return Status.INVALID_PARAMETER
        if not self.service.has_map:
            return Status.NOT_READY
        data = self.service.runtime_map_bytes(desc_size)
        _RMAP.struct.pack_into(buf, p, len(data), desc_size, 1, 0)
        return _fill_tail(buf, p + _RMAP.size, min(size, avail - _RMAP.size), data)

    def _get_setup_data(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _SETUP.size:
            return Status.BAD_BUFFER_SIZE
        (size,) = _SETUP.struct.unpack_from(buf, p)
        data = self.service.setup_data()
        _SETUP.struct.pack_into(buf, p, len(data))
        return _fill_tail(buf, p + _SETUP.size, min(size, avail - _SETUP.size), data)

    def _soft_reset(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _SOFT.size:
            return Status.BAD_BUFFER_SIZE
        (flags,) = _SOFT.struct.unpack_from(buf, p)
        if flags:
            return Status.INVALID_PARAMETER
        return self.soft_reset("guest")

    def _set_firmware_tables(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _TABLES.size:
            return Status.BAD_BUFFER_SIZE
        fw_vendor, tables, smbios, reserved = _TABLES.struct.unpack_from(buf, p)
        if reserved:
            return Status.INVALID_PARAMETER
        return self.service.set_firmware_tables(fw_vendor, tables, smbios)


def _fill_tail(buf: bytearray, at: int, room: int, data: bytes) -> Status:
    """Copy `data` into the caller's buffer after its header, or report it too small (the
    header already says how much is needed)."""
    if len(data) > room:
        return Status.BUFFER_TOO_SMALL
    buf[at : at + len(data)] = data
    return Status.SUCCESS
