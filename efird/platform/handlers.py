"""Envelope handlers for the time and reset services (protocols/PROTOCOL.md §5.2)."""

from __future__ import annotations

import struct
from collections.abc import Callable

from efird.abi import layouts as L
from efird.abi.layouts import ResetFunction, TimeFunction
from efird.efi.status import Status
from efird.efi.time import EfiTime
from efird.envelope import FunctionHandler
from efird.platform.time_service import ACCURACY, RESOLUTION, SETS_TO_ZERO, TimeService

_Q = struct.Struct("<Q")
_TIME = L.EFIRD_TIME_ACCESS
_WAKE = L.EFIRD_WAKEUP_ACCESS
_MONO = L.EFIRD_MONOTONIC_COUNT
_RESET = L.EFIRD_RESET_SYSTEM

RESET_COLD, RESET_WARM, RESET_SHUTDOWN, RESET_PLATFORM_SPECIFIC = 0, 1, 2, 3
RESET_NAMES = {RESET_COLD: "cold", RESET_WARM: "warm", RESET_SHUTDOWN: "shutdown",
               RESET_PLATFORM_SPECIFIC: "platform-specific"}


class TimeHandler(FunctionHandler):
    header_name = "EFIRD_SERVICE_HEADER"

    def __init__(self, service: TimeService) -> None:
        super().__init__()
        self.service = service
        self.functions = {
            TimeFunction.GET_TIME: self._get_time,
            TimeFunction.SET_TIME: self._set_time,
            TimeFunction.GET_WAKEUP_TIME: self._get_wakeup,
            TimeFunction.SET_WAKEUP_TIME: self._set_wakeup,
            TimeFunction.GET_NEXT_HIGH_MONOTONIC_COUNT: self._monotonic,
        }

    @staticmethod
    def may_block(request: bytes) -> bool:
        """SetTime, SetWakeupTime and the monotonic count commit to the store."""
        return len(request) >= 32 and _Q.unpack_from(request, 24)[0] in (
            TimeFunction.SET_TIME, TimeFunction.SET_WAKEUP_TIME,
            TimeFunction.GET_NEXT_HIGH_MONOTONIC_COUNT)

    def _get_time(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _TIME.size:
            return Status.BAD_BUFFER_SIZE
        status, now = self.service.get_time()
        _TIME.struct.pack_into(buf, p, now.pack(), RESOLUTION, ACCURACY, SETS_TO_ZERO,
                               bytes(7))
        return status

    def _set_time(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _TIME.size:
            return Status.BAD_BUFFER_SIZE
        return self.service.set_time(EfiTime.unpack(bytes(buf[p : p + 16])))

    def _get_wakeup(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _WAKE.size:
            return Status.BAD_BUFFER_SIZE
        status, enabled, pending, raw = self.service.get_wakeup_time()
        _WAKE.struct.pack_into(buf, p, enabled, pending, bytes(6), raw)
        return status

    def _set_wakeup(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _WAKE.size:
            return Status.BAD_BUFFER_SIZE
        enabled, _pending, _reserved, raw = _WAKE.struct.unpack_from(buf, p)
        if enabled > 1:
            return Status.INVALID_PARAMETER
        return self.service.set_wakeup_time(bool(enabled), EfiTime.unpack(raw))

    def _monotonic(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _MONO.size:
            return Status.BAD_BUFFER_SIZE
        status, value = self.service.next_high_monotonic_count()
        if status is Status.SUCCESS:
            _MONO.struct.pack_into(buf, p, value, 0)
        return status


class ResetHandler(FunctionHandler):
    """ResetSystem becomes a reset of the domain's services and an event for the
    toolstack, which resets or stops the VM itself."""

    header_name = "EFIRD_SERVICE_HEADER"

    def __init__(self, on_reset: Callable[[int, int, str, bytes], None]) -> None:
        super().__init__()
        self.on_reset = on_reset
        self.functions = {ResetFunction.RESET_SYSTEM: self._reset_system}

    @staticmethod
    def may_block(request: bytes) -> bool:
        return len(request) >= 32 and _Q.unpack_from(request, 24)[0] == ResetFunction.RESET_SYSTEM

    def _reset_system(self, buf: bytearray, p: int, avail: int) -> Status:
        if avail < _RESET.size:
            return Status.BAD_BUFFER_SIZE
        kind, _reserved, reset_status, size = _RESET.struct.unpack_from(buf, p)
        if kind not in RESET_NAMES:
            return Status.INVALID_PARAMETER
        if size > avail - _RESET.size:
            return Status.BAD_BUFFER_SIZE
        data = bytes(buf[p + _RESET.size : p + _RESET.size + size])
        text, guid = _reset_data(data)
        if kind == RESET_PLATFORM_SPECIFIC and guid is None:
            return Status.INVALID_PARAMETER  # the data must carry the reset's GUID
        self.on_reset(kind, reset_status, text, guid or b"")
        return Status.SUCCESS


def _reset_data(data: bytes) -> tuple[str, bytes | None]:
    """ResetData: a NUL-terminated CHAR16 string, optionally followed by a GUID."""
    for i in range(0, len(data) - 1, 2):
        if data[i] == 0 and data[i + 1] == 0:
            text = data[:i].decode("utf-16-le", errors="replace")
            rest = data[i + 2 :]
            return text, rest[:16] if len(rest) >= 16 else None
    return "", None
