"""A blocking client for the control socket: for toolstacks, scripts, `efird ctl` and tests.

Synchronous on purpose: a toolstack is rarely written on trio, and a blocking socket
with timeouts is the easiest thing to embed. One ControlClient holds one connection
(opened on first use, reopened after a failure) and is not thread-safe; `events()`
opens a connection of its own, as a subscribed connection carries nothing else.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

from efird.control import protocol as p
from efird.control.protocol import ControlError

__all__ = ["ControlClient", "ControlConnectionError", "ControlError"]

#: Longest reply line accepted (a save-state reply carries the whole blob).
MAX_REPLY = 256 * 1024 * 1024


class ControlConnectionError(ConnectionError):
    """The daemon cannot be reached, went away, or did not answer; names the socket."""


class _LineSocket:
    """A connected unix socket read line by line."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self._buffer = bytearray()
        try:
            self.sock.connect(os.fspath(path))
        except OSError as exc:
            self.sock.close()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ControlConnectionError(
                f"cannot connect to efird control socket {path}: {reason}") from exc

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes | None:
        """The next line without its newline, or None when the daemon closed the stream."""
        scanned = 0
        while True:
            newline = self._buffer.find(b"\n", scanned)
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                return line
            if len(self._buffer) > MAX_REPLY:
                raise ValueError(f"reply longer than {MAX_REPLY} bytes")
            scanned = len(self._buffer)
            data = self.sock.recv(1024 * 1024)
            if not data:
                return None
            self._buffer += data

    def close(self) -> None:
        self.sock.close()


class ControlClient:
    """Requests to one daemon's control socket; ControlError when the daemon refuses.

    Every failure to talk to the daemon (no socket, connection closed, timeout, a reply
    that is not the protocol) is a ControlConnectionError whose message names the socket.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._conn: _LineSocket | None = None
        self._ids = itertools.count(1)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its result object; the generic form of the methods."""
        if self._conn is None:
            self._conn = _LineSocket(self.path, self.timeout)
        conn = self._conn
        request_id = next(self._ids)
        try:
            conn.send(p.encode_request(request_id, op, **args))
            reply = self._read_reply(conn, request_id)
        except ControlConnectionError:
            self.close()
            raise
        except (OSError, ValueError) as exc:
            self.close()
            raise self._broken(exc) from exc
        if reply["ok"] is not True:
            raise p.reply_error(reply)
        result: dict[str, Any] = reply["result"]
        return result

    def _read_reply(self, conn: _LineSocket, request_id: int) -> dict[str, Any]:
        while True:
            line = conn.read_line()
            if line is None:
                raise ControlConnectionError(
                    f"efird control socket {self.path}: the daemon closed the connection")
            if not line.strip():
                continue
            reply = p.parse_reply(line)
            if "event" in reply:
                continue
            if reply["id"] == request_id or (reply["id"] is None and reply["ok"] is not True):
                return reply
            raise ValueError(f"reply for id {reply['id']!r}, expected {request_id}")

    def _broken(self, exc: BaseException) -> ControlConnectionError:
        if isinstance(exc, TimeoutError):
            return ControlConnectionError(
                f"efird control socket {self.path}: no reply within {self.timeout} s")
        if isinstance(exc, ValueError):
            return ControlConnectionError(
                f"efird control socket {self.path}: not a control protocol reply: {exc}")
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ControlConnectionError(f"efird control socket {self.path}: {reason}")

    def status(self) -> dict[str, Any]:
        """The daemon's status object (its fields are the daemon's; see docs/control.md)."""
        return self.request(p.STATUS)

    def save_state(self) -> bytes:
        """The daemon's state blob, for restore_state on this or another daemon."""
        result = self.request(p.SAVE_STATE)
        state = result.get("state")
        if not isinstance(state, str):
            raise ControlConnectionError(
                f"efird control socket {self.path}: save-state reply has no state string")
        try:
            return p.decode_state(state)
        except ControlError as exc:
            raise ControlConnectionError(
                f"efird control socket {self.path}: {exc.message}") from None

    def restore_state(self, blob: bytes) -> None:
        """Hand a save_state blob to the daemon; ControlError if it refuses it."""
        self.request(p.RESTORE_STATE, state=p.encode_state(blob))

    def reload_store(self) -> dict[str, Any]:
        return self.request(p.RELOAD_STORE)

    def soft_reset(self) -> dict[str, Any]:
        """The toolstack's kexec / soft reset (Xen SHUTDOWN_soft_reset)."""
        return self.request(p.SOFT_RESET)

    def platform_reset(self) -> dict[str, Any]:
        """The VM was reset or restarted without ResetSystem: start the domain's volatile
        state and boot path afresh, as a cold reset would."""
        return self.request(p.PLATFORM_RESET)

    def take_ownership(self, wait: int = 0) -> dict[str, Any]:
        """Fleet store: make the daemon the domain's owner, waiting up to `wait` seconds
        for the current owner to let go (ControlError "owned" if it does not)."""
        return self.request(p.TAKE_OWNERSHIP, wait=wait)

    def release_ownership(self) -> dict[str, Any]:
        """Fleet store: hand the domain over; the daemon refuses writes from then on."""
        return self.request(p.RELEASE_OWNERSHIP)

    def stop(self) -> None:
        """Ask the daemon to stop; returns once it has begun (it then closes the socket)."""
        try:
            self.request(p.STOP)
        finally:
            self.close()

    def events(self, *, idle_timeout: float | None = None,
               ) -> Generator[dict[str, Any], None, None]:
        """Subscribe and yield event objects ({"event", "time", "data"}) as they come.

        Uses a connection of its own, opened on the first next(). Ends when the daemon
        closes the stream (it is stopping); with `idle_timeout`, raises TimeoutError when
        no event arrives for that long. An Iterator that is also a generator: close()
        it to unsubscribe.
        """
        conn = _LineSocket(self.path, self.timeout)
        request_id = next(self._ids)
        try:
            try:
                conn.send(p.encode_request(request_id, p.EVENTS))
                reply = self._read_reply(conn, request_id)
            except (OSError, ValueError) as exc:
                if isinstance(exc, ControlConnectionError):
                    raise
                raise self._broken(exc) from exc
            if reply["ok"] is not True:
                raise p.reply_error(reply)
            conn.sock.settimeout(idle_timeout)
            while True:
                try:
                    line = conn.read_line()
                except TimeoutError:
                    raise TimeoutError(f"efird control socket {self.path}: no event within "
                                       f"{idle_timeout} s") from None
                except (OSError, ValueError) as exc:
                    raise self._broken(exc) from exc
                if line is None:
                    return
                try:
                    message = p.parse_reply(line) if line.strip() else {}
                except ValueError as exc:
                    raise self._broken(exc) from exc
                if "event" in message:
                    yield message
        finally:
            conn.close()
