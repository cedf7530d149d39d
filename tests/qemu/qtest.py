"""A small synchronous client of QEMU's qtest protocol.

qtest is a line-based text protocol on a socket given to ``-qtest``: one request line, one
answer line starting with ``OK`` (or ``FAIL``/``ERR``), with asynchronous ``IRQ raise N`` /
``IRQ lower N`` lines possibly interleaved. The client is synchronous on purpose: tests
drive the guest side step by step, and every read carries a deadline so that a dead or
wedged QEMU turns into a clear exception instead of a hung test run.

Memory accesses go through QEMU's address space of the first CPU (guest-physical
addresses); port I/O goes through the CPU's I/O space. Both work whatever the vCPU does,
which is why the launcher boots a firmware that only halts.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["QTest", "QTestError", "QTestTimeout"]

#: Largest chunk moved by one ``b64read``/``b64write`` command. QEMU has no limit, but a
#: bounded line keeps memory use and per-command latency predictable.
_CHUNK = 256 * 1024


class QTestError(RuntimeError):
    """The qtest conversation failed: QEMU answered FAIL/ERR, or the connection broke."""


class QTestTimeout(QTestError, TimeoutError):
    """QEMU did not answer a command in time (wedged, or busy far longer than expected)."""


class QTest:
    """A qtest connection; one command in flight at a time (a lock enforces it).

    The calls block. When the vhost-user backend under test runs in the same process on
    an event loop (trio), call the driver from a worker thread (``trio.to_thread``):
    QEMU talks to the backend synchronously while it handles some qtest writes (e.g.
    DRIVER_OK starts the vhost device), so a blocked event loop would deadlock until the
    qtest timeout fires.

    ``diagnose`` is called when the conversation breaks and its text is appended to the
    exception message, so the launcher can say "QEMU exited with status 1: <stderr>"
    instead of a bare "connection closed".
    """

    def __init__(
        self,
        sock: socket.socket,
        timeout: float = 10.0,
        diagnose: Callable[[], str] | None = None,
    ) -> None:
        self._sock: socket.socket | None = sock
        self._buf = b""
        self.timeout = timeout
        self._diagnose = diagnose
        self._lock = threading.Lock()
        #: Asynchronous ``IRQ ...`` lines seen so far, kept for tests that care.
        self.irq_events: list[str] = []

    # -- transport -----------------------------------------------------------------------

    def _context(self) -> str:
        if self._diagnose is None:
            return ""
        try:
            text = self._diagnose()
        except Exception as exc:  # diagnostics must never hide the original failure
            text = f"(diagnostics failed: {exc!r})"
        return f"; {text}" if text else ""

    def _readline(self, deadline: float, request: str) -> str:
        sock = self._sock
        assert sock is not None
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # A late answer would be taken for the next command's: drop the connection.
                self.close()
                raise QTestTimeout(
                    f"qtest: no answer to {request!r} within {self.timeout:g}s{self._context()}"
                )
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                self.close()
                raise QTestError(
                    f"qtest: connection error while waiting for {request!r}: {exc}"
                    f"{self._context()}"
                ) from exc
            if not chunk:
                self.close()
                raise QTestError(
                    f"qtest: QEMU closed the connection while answering {request!r}"
                    f"{self._context()}"
                )
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("ascii", errors="replace")

    def command(self, line: str, timeout: float | None = None) -> str:
        """Send one request and return the answer's text after ``OK`` (maybe empty).

        Raises QTestError on FAIL/ERR answers and on a broken connection, QTestTimeout
        when no answer comes within ``timeout`` (default: the client's timeout).
        """
        if "\n" in line:
            raise ValueError("qtest requests are single lines")
        with self._lock:
            return self._command(line, self.timeout if timeout is None else timeout)

    def _command(self, line: str, limit: float) -> str:
        if self._sock is None:
            raise QTestError(f"qtest: connection is closed (request {line!r}){self._context()}")
        deadline = time.monotonic() + limit
        try:
            self._sock.settimeout(limit)
            self._sock.sendall(line.encode("ascii") + b"\n")
        except OSError as exc:
            self.close()
            raise QTestError(
                f"qtest: cannot send {_short(line)!r}: {exc}{self._context()}"
            ) from exc
        while True:
            answer = self._readline(deadline, _short(line))
            if answer.startswith("IRQ"):
                self.irq_events.append(answer)
                continue
            if answer == "OK" or answer.startswith("OK "):
                return answer[3:]
            raise QTestError(f"qtest: {_short(line)!r} -> {answer!r}")

    def close(self) -> None:
        """Close the socket; later commands raise QTestError. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by us or because QEMU went away)."""
        return self._sock is None

    # -- helpers -------------------------------------------------------------------------

    def _value(self, line: str) -> int:
        return int(self.command(line).split()[0], 16)

    @staticmethod
    def _check(value: int, bits: int, what: str) -> None:
        if not 0 <= value < (1 << bits):
            raise ValueError(f"{what} {value:#x} does not fit in {bits} bits")

    def _out(self, op: str, bits: int, port: int, value: int) -> None:
        self._check(port, 16, "port")
        self._check(value, bits, "value")
        self.command(f"{op} {port:#x} {value:#x}")

    def _in(self, op: str, port: int) -> int:
        self._check(port, 16, "port")
        return self._value(f"{op} {port:#x}")

    def _write(self, op: str, bits: int, addr: int, value: int) -> None:
        self._check(addr, 64, "address")
        self._check(value, bits, "value")
        self.command(f"{op} {addr:#x} {value:#x}")

    def _read(self, op: str, addr: int) -> int:
        self._check(addr, 64, "address")
        return self._value(f"{op} {addr:#x}")

    # -- port I/O ------------------------------------------------------------------------

    def outb(self, port: int, value: int) -> None:
        """Write a byte to an I/O port."""
        self._out("outb", 8, port, value)

    def outw(self, port: int, value: int) -> None:
        """Write a 16-bit word to an I/O port."""
        self._out("outw", 16, port, value)

    def outl(self, port: int, value: int) -> None:
        """Write a 32-bit dword to an I/O port."""
        self._out("outl", 32, port, value)

    def inb(self, port: int) -> int:
        """Read a byte from an I/O port."""
        return self._in("inb", port)

    def inw(self, port: int) -> int:
        """Read a 16-bit word from an I/O port."""
        return self._in("inw", port)

    def inl(self, port: int) -> int:
        """Read a 32-bit dword from an I/O port."""
        return self._in("inl", port)

    # -- guest-physical memory (little-endian target) ------------------------------------

    def writeb(self, addr: int, value: int) -> None:
        """Store a byte at a guest-physical address (RAM or MMIO)."""
        self._write("writeb", 8, addr, value)

    def writew(self, addr: int, value: int) -> None:
        """Store a 16-bit value; QEMU performs a single 2-byte access (matters for MMIO)."""
        self._write("writew", 16, addr, value)

    def writel(self, addr: int, value: int) -> None:
        """Store a 32-bit value as a single 4-byte access."""
        self._write("writel", 32, addr, value)

    def writeq(self, addr: int, value: int) -> None:
        """Store a 64-bit value as a single 8-byte access."""
        self._write("writeq", 64, addr, value)

    def readb(self, addr: int) -> int:
        """Load a byte from a guest-physical address."""
        return self._read("readb", addr)

    def readw(self, addr: int) -> int:
        """Load a 16-bit value as a single access."""
        return self._read("readw", addr)

    def readl(self, addr: int) -> int:
        """Load a 32-bit value as a single access."""
        return self._read("readl", addr)

    def readq(self, addr: int) -> int:
        """Load a 64-bit value as a single access."""
        return self._read("readq", addr)

    def memread(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes of guest memory (base64-encoded on the wire, chunked)."""
        self._check(addr, 64, "address")
        if size < 0:
            raise ValueError("size must be >= 0")
        out = bytearray()
        while len(out) < size:
            n = min(_CHUNK, size - len(out))
            text = self.command(f"b64read {addr + len(out):#x} {n:#x}")
            data = base64.b64decode(text.strip())
            if len(data) != n:
                raise QTestError(f"qtest: b64read returned {len(data)} bytes, expected {n}")
            out += data
        return bytes(out)

    def memwrite(self, addr: int, data: bytes) -> None:
        """Write ``data`` to guest memory (base64-encoded on the wire, chunked)."""
        self._check(addr, 64, "address")
        view = memoryview(bytes(data))
        for off in range(0, len(view), _CHUNK):
            chunk = view[off : off + _CHUNK]
            encoded = base64.b64encode(chunk).decode("ascii")
            self.command(f"b64write {addr + off:#x} {len(chunk):#x} {encoded}")

    def memset(self, addr: int, size: int, value: int = 0) -> None:
        """Fill ``size`` bytes of guest memory with one byte value (one command)."""
        self._check(addr, 64, "address")
        self._check(value, 8, "value")
        if size < 0:
            raise ValueError("size must be >= 0")
        if size:
            self.command(f"memset {addr:#x} {size:#x} {value:#x}")

    def endianness(self) -> str:
        """Return the target's byte order ("little" for x86); a cheap liveness probe."""
        return self.command("endianness").strip()


def _short(line: str, limit: int = 80) -> str:
    """Shorten long requests (b64write payloads) for error messages."""
    return line if len(line) <= limit else line[:limit] + "..."
