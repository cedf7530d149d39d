"""The envelope: EDK2's EFI_MM_COMMUNICATE_HEADER, dispatched on its GUID.

A request is copied out of guest memory exactly once (by the caller, or here when handed
a view) and only that private copy is parsed; the response is the same buffer updated
in place, the same length as the request, as EDK2's MM communicate does. A request that
cannot carry a status (too short, a MessageLength past its end, an unknown GUID) is
refused: the transport reports that without writing anything.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from efird.abi import layouts as L
from efird.efi.guid import guid_str
from efird.efi.status import Status
from efird.log import get_logger

log = get_logger("efird.envelope")

HEADER = L.MM_COMMUNICATE_HEADER
HEADER_SIZE = HEADER.size
_LENGTH = struct.Struct("<Q")

# handler(buffer, payload offset, MessageLength): updates buffer in place.
Handler = Callable[[bytearray, int, int], None]


class Refusal(Exception):
    """The envelope cannot carry a status; the transport answers for it."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(f"{status.name}: {reason}")
        self.status = status
        self.reason = reason


class StatusError(Exception):
    """Raised inside a handler: answer this status and stop."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.name)
        self.status = status


FunctionImpl = Callable[[bytearray, int, int], Status]


class FunctionHandler:
    """Payloads shaped {Function u64, ReturnStatus u64, data}: EDK2's SMM variable
    protocol and efird's own services. Subclasses fill `functions`; an implementation
    gets (buffer, data offset, data length) and returns the status to write back."""

    header_name = "the function header"

    def __init__(self) -> None:
        self.functions: dict[int, FunctionImpl] = {}

    def __call__(self, buf: bytearray, start: int, length: int) -> None:
        if length < 16:
            raise Refusal(Status.BAD_BUFFER_SIZE, f"payload shorter than {self.header_name}")
        (function,) = _LENGTH.unpack_from(buf, start)
        impl = self.functions.get(function)
        try:
            status = Status.UNSUPPORTED if impl is None else impl(buf, start + 16, length - 16)
        except StatusError as error:
            status = error.status
        _LENGTH.pack_into(buf, start + 8, status)


@dataclass(frozen=True)
class Route:
    handler: Handler
    status_offset: int | None  # where the handler's status lives in its payload, if any
    name: str
    # may this request block (disk, crypto)? Given the request; None means never.
    may_block: Callable[[bytes], bool] | None = None


class Dispatcher:
    """GUID -> handler. Knows nothing about what the handlers do."""

    def __init__(self) -> None:
        self._routes: dict[bytes, Route] = {}

    def register(self, guid: bytes, handler: Handler, *, status_offset: int | None,
                 name: str, may_block: Callable[[bytes], bool] | None = None) -> None:
        self._routes[bytes(guid)] = Route(handler, status_offset, name, may_block)

    def may_block(self, request: bytes) -> bool:
        """Whether serving this request may block on disk or crypto (the transport then
        serves it off its event loop). Unknown or malformed requests never block."""
        route = self._routes.get(bytes(request[:16]))
        return route is not None and route.may_block is not None and route.may_block(request)

    def dispatch(self, request: bytes | bytearray | memoryview) -> bytearray:
        """Serve one request; returns the response (same length) or raises Refusal."""
        buf = bytearray(request)  # the one copy: nothing below reads the caller's memory
        if len(buf) < HEADER_SIZE:
            raise Refusal(Status.BAD_BUFFER_SIZE,
                          f"{len(buf)} bytes is shorter than EFI_MM_COMMUNICATE_HEADER")
        (length,) = _LENGTH.unpack_from(buf, 16)
        if length > len(buf) - HEADER_SIZE:
            raise Refusal(Status.BAD_BUFFER_SIZE,
                          f"MessageLength {length} exceeds the {len(buf) - HEADER_SIZE} "
                          "bytes given")
        route = self._routes.get(bytes(buf[:16]))
        if route is None:
            raise Refusal(Status.NOT_FOUND, f"no handler for GUID {guid_str(bytes(buf[:16]))}")
        original = bytes(buf)
        try:
            route.handler(buf, HEADER_SIZE, length)
        except Refusal:
            raise
        except Exception:
            # A bug in efird, not in the request: the guest gets DEVICE_ERROR and the
            # request as it sent it; the daemon keeps serving.
            log.exception("handler failed", handler=route.name)
            buf[:] = original
            off = route.status_offset
            if off is None or length < off + 8:
                raise Refusal(Status.DEVICE_ERROR, f"{route.name} handler failed") from None
            _LENGTH.pack_into(buf, HEADER_SIZE + off, Status.DEVICE_ERROR)
        return buf


def describe(request: bytes, response: bytes | bytearray) -> dict[str, object]:
    """What a per-request log line says about an envelope: handler, function, status."""
    from efird.efi import guid as g
    from efird.efi.status import status_name

    guid = bytes(request[:16])
    out: dict[str, object] = {"guid": g.guid_name(guid)}
    with_function = (g.SMM_VARIABLE_PROTOCOL, g.EFIRD_TIME_SERVICE, g.EFIRD_RESET_SERVICE,
                     g.EFIRD_BOOTMEM_SERVICE, g.EFIRD_KEXEC_SERVICE)
    if guid in with_function and len(response) >= HEADER_SIZE + 16:
        out["function"] = _LENGTH.unpack_from(request, HEADER_SIZE)[0]
        out["status"] = status_name(_LENGTH.unpack_from(response, HEADER_SIZE + 8)[0])
    return out
