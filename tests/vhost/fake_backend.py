"""A deliberately tiny vhost-user *backend* (an echo device), only to prove the test
frontend works before efird's real backend exists.

It is not the product and not a reference: it handles the happy path of the messages the
frontend sends, serves connections one after another on a unix socket (each new
connection is a "restarted daemon" with fresh state), and answers each descriptor chain
by writing the concatenated device-readable bytes, reversed, into the device-writable
buffers (used.len = bytes written, 0 if the chain is unusable).

It shares no code with the frontend on purpose (its own constants, parsing and ring
walking), so the two cannot agree on the same mistake.
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass, field

FEATURES = 1 << 32 | 1 << 28 | 1 << 29 | 1 << 30  # VERSION_1, INDIRECT, EVENT_IDX, PROTOCOL
PROTOCOL_FEATURES = 1 << 0 | 1 << 3 | 1 << 13 | 1 << 15 | 1 << 16  # MQ REPLY_ACK RESET SLOTS STATUS
HDR = struct.Struct("=III")


class _Bad(Exception):
    """An address or chain the fake cannot use: the chain is refused (used.len 0)."""


@dataclass
class _Region:
    gpa: int
    size: int
    uva: int
    offset: int
    mm: mmap.mmap


@dataclass
class _Vq:
    num: int = 0
    last_avail: int = 0
    used_idx: int = 0
    addrs: tuple[int, int, int] | None = None  # desc, avail, used as UVAs
    kick: int = -1
    call: int = -1
    err: int = -1
    started: bool = False
    enabled: bool = False


@dataclass
class _Conn:
    sock: socket.socket
    features: int = 0
    protocol: int = 0
    status: int = 0
    regions: list[_Region] = field(default_factory=list)
    vqs: dict[int, _Vq] = field(default_factory=dict)


class FakeEchoBackend:
    """Run with `start()`; `stop()` joins the thread. `error` holds any exception the
    thread died of (tests assert it is None). `paused` set = rings are not processed;
    `signal_calls` False = used buffers are published without kicking the call eventfd."""

    def __init__(self, path: str, *, max_queues: int = 4, max_mem_slots: int = 32) -> None:
        self.path = path
        self.max_queues = max_queues
        self.max_mem_slots = max_mem_slots
        self.paused = threading.Event()
        self.signal_calls = True
        self.messages: list[tuple[int, int]] = []  # (request, flags), all connections
        self.connections = 0
        self.calls = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._run, name="fake-vhost-backend",
                                        daemon=True)

    def start(self) -> FakeEchoBackend:
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close everything (as a killed daemon would); safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def requests(self) -> list[int]:
        return [r for r, _ in self.messages]

    # -------------------------------------------------------------- threads and I/O

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                listener = self._listener.fileno()
                ready, _, _ = select.select([listener, self._wake_r], [], [])
                if listener in ready and not self._stop.is_set():
                    sock, _ = self._listener.accept()
                    self.connections += 1
                    conn = _Conn(sock)
                    try:
                        self._serve(conn)
                    finally:
                        self._drop(conn)
        except BaseException as exc:  # surfaced to the test through .error
            self.error = exc

    def _serve(self, c: _Conn) -> None:
        while not self._stop.is_set():
            kicks = {} if self.paused.is_set() else {
                vq.kick: i for i, vq in c.vqs.items() if vq.started and vq.enabled and vq.kick >= 0}
            sock = c.sock.fileno()
            ready, _, _ = select.select([sock, self._wake_r, *kicks], [], [], 0.05)
            for fd in ready:
                # paused may have been set while we sat in select: check it again
                if fd in kicks and not self.paused.is_set():
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 8)
                    self._process(c, kicks[fd])
            if sock in ready and not self._message(c):
                return

    def _recv(self, sock: socket.socket, n: int, fds: list[int]) -> bytes | None:
        out = b""
        while len(out) < n:
            data, anc, _, _ = sock.recvmsg(n - len(out), socket.CMSG_SPACE(64 * 4))
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", blob[:len(blob) - len(blob) % 4]))
            if not data:
                return None
            out += data
        return out

    def _reply(self, c: _Conn, req: int, payload: bytes) -> None:
        c.sock.sendall(HDR.pack(req, 0x5, len(payload)) + payload)

    def _drop(self, c: _Conn) -> None:
        for vq in c.vqs.values():
            for fd in (vq.kick, vq.call, vq.err):
                if fd >= 0:
                    os.close(fd)
        for r in c.regions:
            r.mm.close()
        c.sock.close()

    # -------------------------------------------------------------- control plane

    def _message(self, c: _Conn) -> bool:
        fds: list[int] = []
        head = self._recv(c.sock, HDR.size, fds)
        if head is None:
            return False
        req, flags, size = HDR.unpack(head)
        body = self._recv(c.sock, size, fds) if size else b""
        if body is None:
            return False
        self.messages.append((req, flags))
        u64 = struct.unpack_from("=Q", body)[0] if len(body) >= 8 else 0
        state = struct.unpack_from("=II", body) if len(body) >= 8 else (0, 0)
        ok = True
        answer: bytes | None = None
        if req == 1:  # GET_FEATURES
            answer = struct.pack("=Q", FEATURES)
        elif req == 2:  # SET_FEATURES
            c.features = u64
        elif req == 15:  # GET_PROTOCOL_FEATURES
            answer = struct.pack("=Q", PROTOCOL_FEATURES)
        elif req == 16:  # SET_PROTOCOL_FEATURES
            c.protocol = u64
        elif req == 17:  # GET_QUEUE_NUM
            answer = struct.pack("=Q", self.max_queues)
        elif req == 36:  # GET_MAX_MEM_SLOTS
            answer = struct.pack("=Q", self.max_mem_slots)
        elif req == 40:  # GET_STATUS
            answer = struct.pack("=Q", c.status)
        elif req == 39:  # SET_STATUS
            c.status = u64
        elif req == 5:  # SET_MEM_TABLE
            for r in c.regions:
                r.mm.close()
            c.regions = []
            (count,) = struct.unpack_from("=I", body)
            for i in range(count):
                c.regions.append(self._map(fds[i], *struct.unpack_from("=QQQQ", body, 8 + 32 * i)))
        elif req == 37:  # ADD_MEM_REG
            c.regions.append(self._map(fds[0], *struct.unpack_from("=QQQQ", body, 8)))
        elif req == 38:  # REM_MEM_REG
            gpa, size, uva, _ = struct.unpack_from("=QQQQ", body, 8)
            keep = []
            for r in c.regions:
                if (r.gpa, r.size, r.uva) == (gpa, size, uva):
                    r.mm.close()
                else:
                    keep.append(r)
            ok = len(keep) < len(c.regions)
            c.regions = keep
        elif req == 8:  # SET_VRING_NUM
            c.vqs.setdefault(state[0], _Vq()).num = state[1]
        elif req == 10:  # SET_VRING_BASE
            c.vqs.setdefault(state[0], _Vq()).last_avail = state[1]
        elif req == 9:  # SET_VRING_ADDR: index, flags, desc, used, avail, log
            index, _, desc, used, avail, _ = struct.unpack_from("=IIQQQQ", body)
            vq = c.vqs.setdefault(index, _Vq())
            vq.addrs = (desc, avail, used)
            vq.used_idx = self._u16(c, self._uva(c, used) + 2)  # the ring's own used idx
        elif req == 11:  # GET_VRING_BASE: stops the ring
            vq = c.vqs.setdefault(state[0], _Vq())
            vq.started = False
            answer = struct.pack("=II", state[0], vq.last_avail)
        elif req in (12, 13, 14):  # SET_VRING_KICK / CALL / ERR
            vq = c.vqs.setdefault(u64 & 0xFF, _Vq())
            fd = -1 if u64 & 0x100 or not fds else fds.pop(0)
            attr = {12: "kick", 13: "call", 14: "err"}[req]
            if getattr(vq, attr) >= 0:
                os.close(getattr(vq, attr))
            setattr(vq, attr, fd)
            if req == 12:
                vq.started = True
                vq.enabled = vq.enabled or not c.features >> 30 & 1
        elif req == 18:  # SET_VRING_ENABLE
            c.vqs.setdefault(state[0], _Vq()).enabled = bool(state[1])
        elif req == 34:  # RESET_DEVICE: rings go, the memory table stays
            for vq in c.vqs.values():
                for fd in (vq.kick, vq.call, vq.err):
                    if fd >= 0:
                        os.close(fd)
            c.vqs.clear()
            c.status = 0
        elif req != 3:  # SET_OWNER needs nothing; anything else is refused
            ok = False
        for fd in fds:  # mmap keeps its own dup; only kick/call/err fds are adopted
            with contextlib.suppress(OSError):
                os.close(fd)
        if answer is not None:
            self._reply(c, req, answer)
        elif flags & 0x8:
            self._reply(c, req, struct.pack("=Q", 0 if ok else 1))
        return True

    @staticmethod
    def _map(fd: int, gpa: int, size: int, uva: int, offset: int) -> _Region:
        mm = mmap.mmap(fd, size + offset)
        return _Region(gpa, size, uva, offset, mm)

    # -------------------------------------------------------------- memory

    def _gpa(self, c: _Conn, addr: int, n: int = 1) -> tuple[mmap.mmap, int]:
        for r in c.regions:
            if r.gpa <= addr and addr + n <= r.gpa + r.size:
                return r.mm, r.offset + addr - r.gpa
        raise _Bad(f"gpa {addr:#x}+{n}")

    def _uva(self, c: _Conn, addr: int) -> int:
        """UVA -> GPA (rings are addressed by UVA)."""
        for r in c.regions:
            if r.uva <= addr < r.uva + r.size:
                return r.gpa + addr - r.uva
        raise _Bad(f"uva {addr:#x}")

    def _read(self, c: _Conn, gpa: int, n: int) -> bytes:
        mm, off = self._gpa(c, gpa, max(n, 1))
        return mm[off:off + n]

    def _write(self, c: _Conn, gpa: int, data: bytes) -> None:
        mm, off = self._gpa(c, gpa, max(len(data), 1))
        mm[off:off + len(data)] = data

    def _u16(self, c: _Conn, gpa: int) -> int:
        mm, off = self._gpa(c, gpa, 2)
        return struct.unpack_from("@H", mm, off)[0]  # native: one 16-bit load

    def _set_u16(self, c: _Conn, gpa: int, value: int) -> None:
        mm, off = self._gpa(c, gpa, 2)
        with memoryview(mm) as view:  # one 16-bit store: pack_into clears the field first
            view[off:off + 2].cast("H")[0] = value & 0xFFFF

    # -------------------------------------------------------------- data plane

    def _process(self, c: _Conn, index: int) -> None:
        vq = c.vqs[index]
        if vq.addrs is None:
            return
        desc, avail, used = (self._uva(c, a) for a in vq.addrs)
        event_idx = bool(c.features >> 29 & 1)
        old_used = vq.used_idx
        while True:
            avail_idx = self._u16(c, avail + 2)
            while vq.last_avail != avail_idx:
                head = self._u16(c, avail + 4 + 2 * (vq.last_avail % vq.num))
                vq.last_avail = (vq.last_avail + 1) & 0xFFFF
                try:
                    written = self._echo(c, desc, vq.num, head)
                except _Bad:
                    written = 0
                self._write(c, used + 4 + 8 * (vq.used_idx % vq.num),
                            struct.pack("<II", head, written))
                vq.used_idx = (vq.used_idx + 1) & 0xFFFF
                self._set_u16(c, used + 2, vq.used_idx)
            if not event_idx:
                break
            self._set_u16(c, used + 4 + 8 * vq.num, vq.last_avail)  # avail_event
            _fence()
            if self._u16(c, avail + 2) == vq.last_avail:
                break
        if vq.used_idx == old_used:
            return
        _fence()
        if event_idx:
            event = self._u16(c, avail + 4 + 2 * vq.num)  # used_event
            need = (vq.used_idx - event - 1) & 0xFFFF < (vq.used_idx - old_used) & 0xFFFF
        else:
            need = not self._u16(c, avail) & 1
        if need and self.signal_calls and vq.call >= 0:
            os.write(vq.call, (1).to_bytes(8, "little"))
            self.calls += 1

    def _echo(self, c: _Conn, table: int, num: int, head: int) -> int:
        readable: list[bytes] = []
        writable: list[tuple[int, int]] = []
        if head >= num:
            raise _Bad("head")
        i, seen, limit, nested = head, 0, num, False
        while True:
            addr, length, flags, nxt = struct.unpack("<QIHH", self._read(c, table + 16 * i, 16))
            seen += 1
            if seen > limit:
                raise _Bad("loop")
            if flags & 4:  # indirect: walk the table instead (no nesting)
                if nested or length % 16 or not length:
                    raise _Bad("indirect")
                table, i, seen, limit, nested = addr, 0, 0, length // 16, True
                continue
            if flags & 2:
                writable.append((addr, length))
            elif writable:
                raise _Bad("readable after writable")
            else:
                readable.append(self._read(c, addr, length))
            if not flags & 1:
                break
            i = nxt
            if i >= limit:
                raise _Bad("next")
        out = b"".join(readable)[::-1]
        written = 0
        for addr, length in writable:
            part = out[written:written + length]
            if not part:
                break
            self._write(c, addr, part)
            written += len(part)
        return written


_LOCK = threading.Lock()


def _fence() -> None:
    """Full barrier (a locked RMW) between the device's store and its following load."""
    _LOCK.acquire()
    _LOCK.release()
