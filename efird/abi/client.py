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
