"""The control socket's server side: `serve_control`, `ControlHandler` and `EventBus`.

The daemon implements ControlHandler (what the operations do) and publishes what the
guest does on an EventBus; this module owns the socket, the JSON-lines framing, the
validation and the event streaming, so a misbehaving or slow toolstack can neither
crash nor stall the daemon: every bad line gets an error reply and the connection
carries on, and event subscribers that do not keep up lose their oldest events.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from efird import unixsock
from efird.control import protocol as p
from efird.control.protocol import ControlError
from efird.log import get_logger

log = get_logger("efird.control")

#: Events kept per subscriber before the oldest are dropped.
DEFAULT_EVENT_BUFFER = 1024
_RECEIVE_SIZE = 64 * 1024
#: How long a "stop" reply may take to reach the toolstack once the daemon is stopping.
_STOP_REPLY_GRACE = 2.0
_client_numbers = itertools.count(1)  # tells connections apart in the log


SocketInUseError = unixsock.SocketInUseError


class ControlHandler(Protocol):
    """What the daemon does for each operation. Raise ControlError(code, message) to refuse.

    Calls on one connection are made one at a time, in request order; calls from
    different connections may overlap, so an implementation that cannot allow that
    (restore-state during save-state, say) serialises them itself.
    """

    async def status(self) -> dict[str, Any]:
        """A JSON-able snapshot of the daemon (domain, phase, store, counters...)."""
        ...

    async def save_state(self) -> bytes:
        """The daemon's state as an opaque blob, for restore-state on another daemon."""
        ...

    async def restore_state(self, blob: bytes) -> None:
        """Replace the daemon's state with a save-state blob, or refuse it."""
        ...

    async def reload_store(self) -> dict[str, Any]:
        """Re-read the variable store from disk; the result says what changed."""
        ...

    async def stop(self) -> None:
        """Begin an orderly stop and return; the reply is sent before the daemon exits."""
        ...

    async def soft_reset(self) -> dict[str, Any]:
        """kexec / Xen soft reset: keep runtime state, give the next kernel a boot path."""
        ...

    async def platform_reset(self) -> dict[str, Any]:
        """A reset the guest did not announce: volatile state and the boot path afresh."""
        ...

    async def vars_request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """One of protocol.VARS_OPS: `efird vars` on the served store."""
        ...

    # Optional (the fleet store's handoff); without them the ops are "unsupported":
    # async def take_ownership(self, wait: int) -> dict[str, Any]
    # async def release_ownership(self) -> dict[str, Any]


class Subscription:
    """One subscriber's bounded buffer of events; `receive` waits for the next one.

    Filled by EventBus.publish from any thread without ever blocking it: when the buffer
    is full the oldest event goes, and the subscriber is told how many it lost with an
    "events-dropped" event ({"count": n}) placed where the gap is.
    """

    def __init__(self, bus: EventBus, capacity: int) -> None:
        self._bus = bus
        self._capacity = capacity
        self._buffer: deque[dict[str, Any]] = deque()
        self._dropped = 0
        self._lock = threading.Lock()
        self._token = trio.lowlevel.current_trio_token()
        self._wakeup = trio.Event()
        self.closed = False

    def _push(self, event: dict[str, Any]) -> None:
        with self._lock:
            if len(self._buffer) >= self._capacity:
                self._buffer.popleft()
                self._dropped += 1
            self._buffer.append(event)
            wakeup = self._wakeup
        try:
            in_our_run = trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:
            in_our_run = False
        if in_our_run:
            wakeup.set()
        else:
            with contextlib.suppress(trio.RunFinishedError):  # the daemon is gone
                self._token.run_sync_soon(wakeup.set)

    def receive_nowait(self) -> dict[str, Any] | None:
        """The next event (or the events-dropped notice), or None if there is none yet."""
        with self._lock:
            if self._dropped:
                count, self._dropped = self._dropped, 0
                return p.make_event(p.EVENTS_DROPPED, {"count": count})
            if self._buffer:
                return self._buffer.popleft()
            self._wakeup = trio.Event()
            return None

    async def receive(self) -> dict[str, Any]:
        """The next event, waiting for it."""
        while True:
            event = self.receive_nowait()
            if event is not None:
                return event
            await self._wakeup.wait()

    def close(self) -> None:
        self.closed = True
        self._bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of daemon events to subscribers; publishing never blocks.

    The daemon calls `publish` from wherever the event happens (sync code, async code,
    a worker thread); each subscriber gets every event published after it subscribed,
    in order, unless it fell more than `capacity` events behind (see Subscription).
    """

    def __init__(self, capacity: int = DEFAULT_EVENT_BUFFER) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []

    def publish(self, kind: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Stamp and deliver an event to every current subscriber; returns the event."""
        event = p.make_event(kind, data)
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription._push(event)
        return event

    def subscribe(self, capacity: int | None = None) -> Subscription:
        """A new subscription; call from inside the trio run that will receive from it."""
        subscription = Subscription(self, capacity or self.capacity)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)


async def _listen(path: Path, mode: int) -> trio.socket.SocketType:
    return await unixsock.listen(path, mode=mode, backlog=16, what="control socket")


async def serve_control(path: Path, handler: ControlHandler, *,
                        bus: EventBus | None = None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                        mode: int = 0o600, max_line: int = p.MAX_LINE) -> None:
    """Serve the control protocol on a unix socket at `path` until cancelled.

    Started (task_status) once the socket accepts connections. Many clients may be
    connected at once; each one's requests are answered in order. "events" streams
    `bus` (without a bus it is refused as "unsupported"). The socket is removed on exit.
    """
    path = Path(path)
    listener = await _listen(path, mode)
    identity = os.stat(path)
    log.info("control socket listening", socket=str(path))
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                sock, _ = await listener.accept()
                conn = _Connection(trio.SocketStream(sock), handler, bus, max_line)
                nursery.start_soon(conn.run)
    finally:
        listener.close()
        try:
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (identity.st_dev, identity.st_ino):
                path.unlink()
        except FileNotFoundError:
            pass


class _LineReader:
    """Splits a stream into lines, refusing (not buffering) lines longer than max_line."""

    TOO_LONG = object()

    def __init__(self, stream: trio.SocketStream, max_line: int) -> None:
        self._stream = stream
        self._max = max_line
        self._buffer = bytearray()
        self._scanned = 0
        self._discarding = False
        self._eof = False

    async def next(self) -> bytes | object | None:
        """A line (newline stripped), TOO_LONG once per oversized line, or None at EOF."""
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                self._scanned = 0
                if self._discarding:
                    self._discarding = False
                    continue
                return self.TOO_LONG if len(line) > self._max else line
            if self._discarding:
                self._buffer.clear()
                self._scanned = 0
            elif len(self._buffer) > self._max:
                self._buffer.clear()
                self._scanned = 0
                self._discarding = True  # answer now, then skip to the end of the line
                return self.TOO_LONG
            else:
                self._scanned = len(self._buffer)
            if self._eof:
                if self._buffer and not self._discarding:
                    line = bytes(self._buffer)  # a last line without its newline
                    self._buffer.clear()
                    return line
                return None
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self._eof = True
            self._buffer += data


class _Connection:
    """One client: requests answered in order; after "events", an event stream."""

    def __init__(self, stream: trio.SocketStream, handler: ControlHandler,
                 bus: EventBus | None, max_line: int) -> None:
        self._stream = stream
        self._handler = handler
        self._bus = bus
        self._max_line = max_line
        self._send_lock = trio.Lock()
        self._subscription: Subscription | None = None
        self._log = log.bind(client=next(_client_numbers))

    async def run(self) -> None:
        self._log.debug("control client connected")
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._read_requests(nursery)
                finally:
                    nursery.cancel_scope.cancel()  # the client went away: end its stream
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client closed while we were answering it
        except* Exception:
            # One connection's failure must not take the control socket down.
            self._log.exception("control connection failed")
        finally:
            if self._subscription is not None:
                self._subscription.close()
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            self._log.debug("control client disconnected")

    async def _send(self, line: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(line)

    async def _read_requests(self, nursery: trio.Nursery) -> None:
        reader = _LineReader(self._stream, self._max_line)
        while True:
            line = await reader.next()
            if line is None:
                return
            if line is _LineReader.TOO_LONG:
                self._log.info("control request refused", code=p.LINE_TOO_LONG)
                await self._send(p.error_reply(
                    None, p.LINE_TOO_LONG, f"request line longer than {self._max_line} bytes"))
                continue
            assert isinstance(line, bytes)
            if line.strip():
                await self._answer(line, nursery)

    async def _answer(self, line: bytes, nursery: trio.Nursery) -> None:
        try:
            request = p.parse_request(line)
        except p.RequestError as exc:
            self._log.info("control request refused", code=exc.code, error=exc.message)
            await self._send(p.error_reply(exc.request_id, exc.code, exc.message))
            return
        if self._subscription is not None:
            await self._send(p.error_reply(
                request.id, p.SUBSCRIBED,
                "this connection streams events; open another one for requests"))
            return
        self._log.debug("control request", op=request.op, id=request.id)
        if request.op == p.EVENTS:
            await self._subscribe(request, nursery)
            return
        try:
            result = await self._dispatch(request)
        except ControlError as exc:
            self._log.info("control request refused", op=request.op, code=exc.code,
                           error=exc.message)
            reply = p.error_reply(request.id, exc.code, exc.message)
        except Exception as exc:
            self._log.exception("control request failed", op=request.op)
            reply = p.error_reply(request.id, p.INTERNAL,
                                  f"{request.op} failed: {type(exc).__name__}: {exc}")
        else:
            reply = p.ok_reply(request.id, result)
        if request.op == p.STOP:
            # The daemon may already be cancelling us: the toolstack still gets its answer.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _STOP_REPLY_GRACE
                await self._send(reply)
        else:
            await self._send(reply)

    async def _dispatch(self, request: p.Request) -> Mapping[str, Any]:
        handler = self._handler
        if request.op == p.STATUS:
            return await handler.status()
        if request.op == p.SAVE_STATE:
            blob = await handler.save_state()
            return {"state": p.encode_state(bytes(blob))}
        if request.op == p.RESTORE_STATE:
            await handler.restore_state(p.decode_state(request.args["state"]))
            return {}
        if request.op == p.RELOAD_STORE:
            return await handler.reload_store()
        if request.op == p.STOP:
            await handler.stop()
            return {}
        if request.op == p.SOFT_RESET:
            return await handler.soft_reset()
        if request.op == p.PLATFORM_RESET:
            return await handler.platform_reset()
        if request.op in p.VARS_OPS:
            return await handler.vars_request(request.op, request.args)
        if request.op in (p.TAKE_OWNERSHIP, p.RELEASE_OWNERSHIP):
            method = getattr(handler, request.op.replace("-", "_"), None)
            if method is None:
                raise ControlError(p.UNSUPPORTED, f"{request.op}: this daemon's store has no "
                                                  "ownership to hand over")
            result: Mapping[str, Any] = await method(**request.args)
            return result
        raise AssertionError(f"unhandled op {request.op}")  # parse_request knows OPS

    async def _subscribe(self, request: p.Request, nursery: trio.Nursery) -> None:
        if self._bus is None:
            await self._send(p.error_reply(request.id, p.UNSUPPORTED,
                                           "this daemon publishes no events"))
            return
        # Subscribe before replying: every event after the ok reply reaches the client.
        self._subscription = self._bus.subscribe()
        await self._send(p.ok_reply(request.id, {}))
        nursery.start_soon(self._stream_events, self._subscription)

    async def _stream_events(self, subscription: Subscription) -> None:
        while True:
            event = await subscription.receive()
            await self._send(p.encode_line(event))
