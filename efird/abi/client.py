"""The guest side of the variable ABI in Python: builds request envelopes and reads
responses. Tests, the demo, the test vectors and the vhost-user test frontend use it;
it is what a firmware author's C code does, written with the same schemas."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from efird.abi import layouts as L
from efird.abi.layouts import VarFunction as F
from efird.efi import guid as g
from efird.efi.status import Status
from efird.efi.ucs2 import decode_units, encode_name

_ENV = L.MM_COMMUNICATE_HEADER
_HDR = L.SMM_VARIABLE_COMMUNICATE_HEADER
_ACCESS = L.SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE
_NEXT = L.SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME
_QUERY = L.SMM_VARIABLE_COMMUNICATE_QUERY_VARIABLE_INFO
VAR_DATA = _ENV.size + _HDR.size  # where function data starts in an envelope (40)


def envelope(guid: bytes, payload: bytes) -> bytes:
    return _ENV.struct.pack(guid, len(payload)) + payload


def variable_request(function: int, data: bytes = b"") -> bytes:
    return envelope(g.SMM_VARIABLE_PROTOCOL, _HDR.struct.pack(function, 0) + data)


def get_variable(guid: bytes, name: str, data_size: int) -> bytes:
    n = encode_name(name)
    return variable_request(F.GET_VARIABLE,
                            _ACCESS.struct.pack(guid, data_size, len(n), 0) + n + bytes(data_size))


def set_variable(guid: bytes, name: str, attributes: int, data: bytes) -> bytes:
    n = encode_name(name)
    return variable_request(F.SET_VARIABLE,
                            _ACCESS.struct.pack(guid, len(data), len(n), attributes) + n + data)


def get_next_variable_name(guid: bytes, name: str, name_size: int = 512) -> bytes:
    n = encode_name(name)
    buffer = n + bytes(max(name_size, len(n)) - len(n))
    return variable_request(F.GET_NEXT_VARIABLE_NAME,
                            _NEXT.struct.pack(guid, name_size) + buffer)


def query_variable_info(attributes: int) -> bytes:
    return variable_request(F.QUERY_VARIABLE_INFO, _QUERY.struct.pack(0, 0, 0, attributes)
                            + bytes(_QUERY.c_sizeof - _QUERY.size))


def return_status(response: bytes) -> Status:
    (value,) = struct.unpack_from("<Q", response, _ENV.size + _HDR.offsets["ReturnStatus"])
    return Status(value)


@dataclass(frozen=True)
class GetResult:
    status: Status
    attributes: int
    data_size: int
    data: bytes


def parse_get_variable(response: bytes) -> GetResult:
    _guid, data_size, name_size, attributes = _ACCESS.struct.unpack_from(response, VAR_DATA)
    status = return_status(response)
    data = b""
    if status is Status.SUCCESS:
        at = VAR_DATA + _ACCESS.size + name_size
        data = bytes(response[at : at + data_size])
    return GetResult(status, attributes, data_size, data)


def parse_get_next(response: bytes) -> tuple[Status, bytes, str, int]:
    guid, name_size = _NEXT.struct.unpack_from(response, VAR_DATA)
    status = return_status(response)
    name = ""
    if status is Status.SUCCESS:
        at = VAR_DATA + _NEXT.size
        name = decode_units(bytes(response[at : at + name_size - 2]))
    return status, bytes(guid), name, name_size


def parse_query(response: bytes) -> tuple[Status, int, int, int]:
    total, remaining, max_size = struct.unpack_from("<QQQ", response, VAR_DATA)
    return return_status(response), total, remaining, max_size


# --- the boot-memory service (EFIRD_BOOTMEM_SERVICE_GUID) ---------------------------------
BOOTMEM_DATA = _ENV.size + L.EFIRD_SERVICE_HEADER.size  # 40


def bootmem_request(function: int, data: bytes = b"") -> bytes:
    return envelope(g.EFIRD_BOOTMEM_SERVICE,
                    L.EFIRD_SERVICE_HEADER.struct.pack(function, 0) + data)


def get_memory_map(buffer_size: int, descriptor_size: int = 0) -> bytes:
    return bootmem_request(1, L.EFIRD_GET_MEMORY_MAP.struct.pack(buffer_size, 0,
                                                                 descriptor_size, 0, 0)
                           + bytes(buffer_size))


def parse_get_memory_map(response: bytes) -> tuple[Status, int, int, int, int, bytes]:
    """(status, map size, map key, descriptor size, version, the descriptors)."""
    size, key, desc_size, version, _ = L.EFIRD_GET_MEMORY_MAP.struct.unpack_from(
        response, BOOTMEM_DATA)
    at = BOOTMEM_DATA + L.EFIRD_GET_MEMORY_MAP.size
    status = return_status(response)
    data = bytes(response[at : at + size]) if status is Status.SUCCESS else b""
    return status, size, key, desc_size, version, data


def allocate_pages(alloc_type: int, memory_type: int, pages: int, memory: int = 0) -> bytes:
    return bootmem_request(2, L.EFIRD_ALLOCATE_PAGES.struct.pack(alloc_type, memory_type,
                                                                 pages, memory))


def parse_allocate_pages(response: bytes) -> tuple[Status, int]:
    *_, memory = L.EFIRD_ALLOCATE_PAGES.struct.unpack_from(response, BOOTMEM_DATA)
    return return_status(response), memory


def free_pages(memory: int, pages: int) -> bytes:
    return bootmem_request(3, L.EFIRD_FREE_PAGES.struct.pack(memory, pages))


def exit_boot_services(map_key: int) -> bytes:
    return bootmem_request(4, L.EFIRD_EXIT_BOOT_SERVICES.struct.pack(map_key))


def set_virtual_address_map(virtual_map: bytes, descriptor_size: int, version: int = 1) -> bytes:
    return bootmem_request(5, L.EFIRD_SET_VIRTUAL_ADDRESS_MAP.struct.pack(
        len(virtual_map), descriptor_size, version, 0) + virtual_map)


def convert_pointer(address: int, debug_disposition: int = 0) -> bytes:
    return bootmem_request(6, L.EFIRD_CONVERT_POINTER.struct.pack(debug_disposition, address))


def parse_convert_pointer(response: bytes) -> tuple[Status, int]:
    _, address = L.EFIRD_CONVERT_POINTER.struct.unpack_from(response, BOOTMEM_DATA)
    return return_status(response), address


def build_page_tables(base: int, size: int, levels: int = 4, flags: int = 0) -> bytes:
    return bootmem_request(7, L.EFIRD_BUILD_PAGE_TABLES.struct.pack(base, size, levels, flags,
                                                                    0, 0))


def parse_build_page_tables(response: bytes) -> tuple[Status, int, int]:
    *_, cr3, used = L.EFIRD_BUILD_PAGE_TABLES.struct.unpack_from(response, BOOTMEM_DATA)
    return return_status(response), cr3, used


def exit_image(exit_status: int, exit_data: bytes = b"") -> bytes:
    return bootmem_request(8, L.EFIRD_EXIT.struct.pack(exit_status, len(exit_data)) + exit_data)


def init_memory_map(entries: list[tuple[int, int, int]], flags: int = 0) -> bytes:
    body = b"".join(L.EFIRD_HVM_MEMMAP_ENTRY.struct.pack(a, s, t, 0) for a, s, t in entries)
    return bootmem_request(9, L.EFIRD_INIT_MEMORY_MAP.struct.pack(len(entries), flags) + body)
