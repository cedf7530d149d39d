"""EDK2's SMM variable protocol (gEfiSmmVariableProtocolGuid) on top of VariableService.

Buffer rules follow EDK2's SmmVariableHandler (VariableSmm.c), with one deliberate
difference: where EDK2 returns without writing ReturnStatus (a payload too short for
the function), efird writes EFI_BAD_BUFFER_SIZE, so a guest never mistakes a refused
call for success. protocols/PROTOCOL.md lists every case.
"""

from __future__ import annotations

import struct

from efird.abi import layouts as L
from efird.abi.layouts import VarFunction as F
from efird.efi.status import Status
from efird.efi.ucs2 import decode_units
from efird.envelope import FunctionHandler, StatusError
from efird.variables.service import VariableService

_HDR = L.SMM_VARIABLE_COMMUNICATE_HEADER
_ACCESS = L.SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE
_NEXT = L.SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME
_QUERY = L.SMM_VARIABLE_COMMUNICATE_QUERY_VARIABLE_INFO
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_QQQ = struct.Struct("<QQQ")
ACCESS_NAME = _ACCESS.size  # 36
NEXT_NAME = _NEXT.size  # 24
STATUS_OFFSET = _HDR.offsets["ReturnStatus"]


def _name_at(buf: bytearray, start: int, size: int) -> str:
    """The NUL-terminated name in `size` bytes: ACCESS_DENIED unless the last CHAR16 is
    NUL (EDK2); efird also refuses an odd size. Embedded NULs end the name (EDK2)."""
    if size < 2 or size % 2 or buf[start + size - 2] or buf[start + size - 1]:
        raise StatusError(Status.ACCESS_DENIED)
    raw = bytes(buf[start : start + size])
    end = raw.find(b"\0\0")
    while end % 2:  # a NUL pair straddling two characters is not a NUL character
        end = raw.find(b"\0\0", end + 1)
    return decode_units(raw[:end]) if end else ""


class SmmVariableHandler(FunctionHandler):
    """Decodes one SMM variable request, calls the service, encodes the answer."""

    header_name = "SMM_VARIABLE_COMMUNICATE_HEADER"

    def __init__(self, service: VariableService) -> None:
        super().__init__()
        self.service = service
        self.functions = {
            F.GET_VARIABLE: self._get_variable,
            F.GET_NEXT_VARIABLE_NAME: self._get_next,
            F.SET_VARIABLE: self._set_variable,
            F.QUERY_VARIABLE_INFO: self._query,
            F.READY_TO_BOOT: self._ready_to_boot,
            F.EXIT_BOOT_SERVICE: self._exit_boot_services,
            F.LOCK_VARIABLE: self._lock_variable,
            F.GET_PAYLOAD_SIZE: self._payload_size,
        }

    @staticmethod
    def may_block(request: bytes) -> bool:
        """SetVariable writes the store and may verify signatures; the rest is memory."""
        return len(request) >= 32 and _Q.unpack_from(request, 24)[0] == F.SET_VARIABLE

    # GetVariable / SetVariable share SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE.
    def _access(self, buf: bytearray, p: int, avail: int) -> tuple[bytes, int, int, int, str]:
        if avail < ACCESS_NAME:
            raise StatusError(Status.BAD_BUFFER_SIZE)
        guid, data_size, name_size, attributes = _ACCESS.struct.unpack_from(buf, p)
        if ACCESS_NAME + name_size + data_size > avail:
            raise StatusError(Status.ACCESS_DENIED)
        name = _name_at(buf, p + ACCESS_NAME, name_size)
        return guid, data_size, name_size, attributes, name

    def _get_variable(self, buf: bytearray, p: int, avail: int) -> Status:
        guid, data_size, name_size, _attrs, name = self._access(buf, p, avail)
        status, attributes, size, data = self.service.get_variable(guid, name, data_size)
        if status in (Status.SUCCESS, Status.BUFFER_TOO_SMALL):
            _Q.pack_into(buf, p + _ACCESS.offsets["DataSize"], size)
            _I.pack_into(buf, p + _ACCESS.offsets["Attributes"], attributes)
        if status is Status.SUCCESS:
            at = p + ACCESS_NAME + name_size
            buf[at : at + len(data)] = data
        return status

    def _set_variable(self, buf: bytearray, p: int, avail: int) -> Status:
        guid, data_size, name_size, attributes, name = self._access(buf, p, avail)
        at = p + ACCESS_NAME + name_size
        return self.service.set_variable(guid, name, attributes, bytes(buf[at : at + data_size]))

    def _get_next(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < NEXT_NAME:
            raise StatusError(Status.BAD_BUFFER_SIZE)
        guid, name_size = _NEXT.struct.unpack_from(buf, p)
        if NEXT_NAME + name_size > avail:
            raise StatusError(Status.ACCESS_DENIED)
        # EDK2 checks the end of the whole name buffer (NameSize is the output capacity).
        buffer_size = avail - NEXT_NAME
        last = p + NEXT_NAME + (buffer_size // 2) * 2 - 2
        if buffer_size < 2 or buf[last] or buf[last + 1]:
            raise StatusError(Status.ACCESS_DENIED)
        # VariableServiceGetNextVariableName: a NUL within the first NameSize bytes.
        max_chars = name_size // 2
        raw = bytes(buf[p + NEXT_NAME : p + NEXT_NAME + max_chars * 2])
        end = next((i for i in range(0, len(raw), 2) if raw[i] == 0 and raw[i + 1] == 0), None)
        if max_chars == 0 or end is None:
            return Status.INVALID_PARAMETER
        name = decode_units(raw[:end])
        status, next_guid, next_name, size = self.service.get_next_variable_name(
            guid, name, name_size)
        if status is Status.SUCCESS:
            encoded = next_name.encode("utf-16-le", errors="surrogatepass") + b"\0\0"
            _NEXT.struct.pack_into(buf, p, next_guid, size)
            buf[p + NEXT_NAME : p + NEXT_NAME + len(encoded)] = encoded
        elif status is Status.BUFFER_TOO_SMALL:
            _Q.pack_into(buf, p + _NEXT.offsets["NameSize"], size)
        return status

    def _query(self, buf: bytearray, p: int, avail: int) -> Status:
        # EDK2 wants sizeof (32); QEMU and older guests send the packed 28 bytes.
        if avail < _QUERY.size:
            raise StatusError(Status.BAD_BUFFER_SIZE)
        (attributes,) = _I.unpack_from(buf, p + _QUERY.offsets["Attributes"])
        status, total, remaining, max_size = self.service.query_variable_info(attributes)
        if status is Status.SUCCESS:
            _QQQ.pack_into(buf, p, total, remaining, max_size)
        return status

    def _ready_to_boot(self, buf: bytearray, p: int, avail: int) -> Status:
        return self.service.ready_to_boot()

    def _exit_boot_services(self, buf: bytearray, p: int, avail: int) -> Status:
        self.service.exit_boot_services()
        return Status.SUCCESS

    def _lock_variable(self, buf: bytearray, p: int, avail: int) -> Status:
        if self.service.phase.end_of_dxe or self.service.phase.at_runtime:
            return Status.ACCESS_DENIED
        if avail < NEXT_NAME:
            raise StatusError(Status.BAD_BUFFER_SIZE)
        guid, name_size = _NEXT.struct.unpack_from(buf, p)
        if NEXT_NAME + name_size > avail:
            raise StatusError(Status.ACCESS_DENIED)
        name = _name_at(buf, p + NEXT_NAME, name_size)
        if not name:
            return Status.INVALID_PARAMETER
        return self.service.lock_variable(guid, name)

    def _payload_size(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < L.SMM_VARIABLE_COMMUNICATE_GET_PAYLOAD_SIZE.size:
            raise StatusError(Status.BAD_BUFFER_SIZE)
        _Q.pack_into(buf, p, self.service.limits.payload_size)
        return Status.SUCCESS
