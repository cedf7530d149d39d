"""The vhost-user message loop and the queue workers (trio).

Each message is validated (header, size, fd count, negotiated features) before its
handler runs; a malformed message is refused (a failed reply-ack where one was asked
for) and the connection carries on, unless its framing cannot be trusted, in which case
the connection is dropped. Queue workers wait on their kick eventfd, hand each chain to
the device and complete it; the memory table and ring state only change while no worker
is inside a batch (one lock), so a worker never uses a stale mapping.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from efird.log import Throttle, get_logger
from efird.vhost import protocol as P
from efird.vhost.memory import GuestMemory, GuestMemoryError, close_fds, map_region
from efird.vhost.virtqueue import ChainError, Virtqueue

log = get_logger("efird.vhost")

OFFERED_FEATURES = (1 << P.VIRTIO_F_VERSION_1 | 1 << P.VIRTIO_RING_F_INDIRECT_DESC
                    | 1 << P.VIRTIO_RING_F_EVENT_IDX | 1 << P.VHOST_USER_F_PROTOCOL_FEATURES)
OFFERED_PROTOCOL_FEATURES = sum(1 << f for f in (
    P.ProtocolFeature.MQ, P.ProtocolFeature.REPLY_ACK, P.ProtocolFeature.CONFIGURE_MEM_SLOTS,
    P.ProtocolFeature.RESET_DEVICE, P.ProtocolFeature.STATUS))
MAX_FDS = max(P.MAX_MEM_REGIONS, 8)


YIELD_EVERY = 256  # at ~15 us a chain: other queues wait at most a few ms


class FastLock:
    """A fair trio lock for the request path.

    trio.Lock checkpoints on every acquire and does deadlock bookkeeping on every
    acquire and release; per request that costs more than serving a GetVariable. Here an
    uncontended acquire or release is one attribute update and never yields; waiters
    park in FIFO order and release hands ownership straight to the first of them.
    """

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    async def acquire(self) -> None:
        if not self._held and not self._lot:
            self._held = True
            return
        await self._lot.park()  # woken by release(), which passes the lock over

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()  # ownership passes to the next waiter; _held stays set
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Device(Protocol):
    """What the backend needs from a device: an answer for each request."""

    #: the longest request (a chain's readable bytes) the device takes; longer chains are
    #: completed empty without being read
    max_request: int

    async def handle(self, request: bytes) -> bytes | None:
        """The response to write into the chain, or None to refuse it (used.len 0)."""

    def attach_memory(self, memory: GuestMemory | None) -> None:
        """The frontend's guest memory, for a device that writes into it (or None)."""


class Refused(Exception):
    """This message is refused; the connection continues."""


@dataclass
class Queue:
    vq: Virtqueue
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    started: bool = False
    broken: bool = False
    worker: trio.CancelScope | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "refused": 0,
                                                           "bad_chains": 0})


def _set_fd(old: int | None, new: int | None) -> int | None:
    if old is not None and old != new:
        close_fds([old])
    if new is not None:
        os.set_blocking(new, False)
    return new


class Connection:
    """One frontend connection: its negotiated state, memory and queues."""

    def __init__(self, sock: trio.socket.SocketType, device: Device, queues: int,
                 nursery: trio.Nursery) -> None:
        self.sock = sock
        self.device = device
        self.nursery = nursery
        self.memory = GuestMemory()
        self.queues = [Queue(Virtqueue(i, self.memory, device.max_request))
                       for i in range(queues)]
        self.features = 0
        self.protocol_features = 0
        self.status = 0
        self.ring_lock = FastLock()  # held by a worker per chain, and by state changes
        device.attach_memory(self.memory)
        self.log = log.bind(peer="frontend")
        self._throttle = Throttle()
        self._handlers: dict[int, Callable[[bytes, list[int]], Awaitable[bytes | None]]] = {
            P.Request.GET_FEATURES: self._get_features,
            P.Request.SET_FEATURES: self._set_features,
            P.Request.SET_OWNER: self._noop,
            P.Request.RESET_OWNER: self._reset,
            P.Request.SET_MEM_TABLE: self._set_mem_table,
            P.Request.SET_VRING_NUM: self._set_vring_num,
            P.Request.SET_VRING_ADDR: self._set_vring_addr,
            P.Request.SET_VRING_BASE: self._set_vring_base,
            P.Request.GET_VRING_BASE: self._get_vring_base,
            P.Request.SET_VRING_KICK: self._set_vring_kick,
            P.Request.SET_VRING_CALL: self._set_vring_call,
            P.Request.SET_VRING_ERR: self._set_vring_err,
            P.Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            P.Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            P.Request.GET_QUEUE_NUM: self._get_queue_num,
            P.Request.SET_VRING_ENABLE: self._set_vring_enable,
            P.Request.RESET_DEVICE: self._reset,
            P.Request.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            P.Request.ADD_MEM_REG: self._add_mem_reg,
            P.Request.REM_MEM_REG: self._rem_mem_reg,
            P.Request.SET_STATUS: self._set_status,
            P.Request.GET_STATUS: self._get_status,
        }

    # -- framing ---------------------------------------------------------------------
    async def _recv_exact(self, n: int, fds: list[int] | None = None) -> bytes:
        data = b""
        while len(data) < n:
            if fds is not None and not data:
                chunk, anc, _flags, _addr = await self.sock.recvmsg(
                    n - len(data), socket.CMSG_SPACE(MAX_FDS * 4))
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        received = array.array("i")
                        received.frombytes(payload[: len(payload) - len(payload) % 4])
                        fds.extend(received)
            else:
                chunk = await self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    async def _send(self, request: int, payload: bytes) -> None:
        message = P.HEADER.pack(request, P.REPLY_FLAGS, len(payload)) + payload
        while message:
            sent = await self.sock.send(message)
            message = message[sent:]

    async def run(self) -> None:
        """Serve messages until the frontend disconnects."""
        try:
            while True:
                fds: list[int] = []
                try:
                    header = await self._recv_exact(P.HEADER.size, fds)
                    request, flags, size = P.HEADER.unpack(header)
                    if flags & 0x3 != P.VERSION or size > P.MAX_PAYLOAD:
                        raise P.ProtocolError(f"bad header: request={request} "
                                              f"flags={flags:#x} size={size}")
                    payload = await self._recv_exact(size) if size else b""
                except BaseException:
                    close_fds(fds)  # a message cut short leaks nothing it brought along
                    raise
                await self._dispatch(request, flags, payload, fds)
        except (EOFError, ConnectionResetError, BrokenPipeError):
            self.log.info("frontend disconnected")
        except P.ProtocolError as exc:
            self.log.warning("dropping frontend: protocol error", error=str(exc))
        finally:
            await self.shutdown()

    async def _dispatch(self, request: int, flags: int, payload: bytes, fds: list[int]) -> None:
        handler = self._handlers.get(request)
        name = P.Request(request).name if request in P.Request._value2member_map_ else str(request)
        self.log.debug("message", request=name, size=len(payload), fds=len(fds))
        ok = True
        try:
            if handler is None:
                raise Refused(f"unsupported request {name}")
            reply = await handler(payload, fds)
        except (Refused, GuestMemoryError, ChainError) as exc:
            close_fds(fds)
            held = self._throttle.admit(("refused", name))
            if held is not None:
                self.log.warning("request refused", request=name, reason=str(exc),
                                 suppressed_since_last=held)
            reply, ok = None, False
        if reply is not None:
            await self._send(request, reply)
        elif flags & P.FLAG_NEED_REPLY and self._has(P.ProtocolFeature.REPLY_ACK):
            await self._send(request, P.U64.pack(0 if ok else 1))
        elif not ok and request in (P.Request.GET_FEATURES, P.Request.GET_PROTOCOL_FEATURES,
                                    P.Request.GET_VRING_BASE, P.Request.GET_QUEUE_NUM,
                                    P.Request.GET_MAX_MEM_SLOTS, P.Request.GET_STATUS):
            # a frontend waits for these replies: without one the stream cannot go on
            raise P.ProtocolError(f"{name} refused")

    def _has(self, feature: P.ProtocolFeature) -> bool:
        return bool(self.protocol_features & (1 << feature))

    # -- validation helpers -----------------------------------------------------------
    @staticmethod
    def _expect(payload: bytes, fds: list[int], size: int, nfds: int = 0,
                at_least: bool = False) -> None:
        if len(payload) < size if at_least else len(payload) != size:
            raise Refused(f"payload of {len(payload)} bytes, expected {size}")
        if len(fds) != nfds:
            raise Refused(f"{len(fds)} file descriptors, expected {nfds}")

    def _queue(self, index: int) -> Queue:
        if not 0 <= index < len(self.queues):
            raise Refused(f"queue {index} does not exist ({len(self.queues)} queues)")
        return self.queues[index]

    # -- features ---------------------------------------------------------------------
    async def _noop(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, 0, at_least=True)

    async def _get_features(self, payload: bytes, fds: list[int]) -> bytes:
        self._expect(payload, fds, 0, at_least=True)
        return P.U64.pack(OFFERED_FEATURES)

    async def _set_features(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.U64.size)
        (features,) = P.U64.unpack(payload)
        if features & ~OFFERED_FEATURES:
            raise Refused(f"features {features:#x} were not offered")
        async with self.ring_lock:
            self.features = features
            for q in self.queues:
                q.vq.event_idx = bool(features & 1 << P.VIRTIO_RING_F_EVENT_IDX)
                q.vq.indirect = bool(features & 1 << P.VIRTIO_RING_F_INDIRECT_DESC)

    async def _get_protocol_features(self, payload: bytes, fds: list[int]) -> bytes:
        self._expect(payload, fds, 0, at_least=True)
        return P.U64.pack(OFFERED_PROTOCOL_FEATURES)

    async def _set_protocol_features(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.U64.size)
        (features,) = P.U64.unpack(payload)
        if features & ~OFFERED_PROTOCOL_FEATURES:
            raise Refused(f"protocol features {features:#x} were not offered")
        self.protocol_features = features

    async def _get_queue_num(self, payload: bytes, fds: list[int]) -> bytes:
        self._expect(payload, fds, 0, at_least=True)
        return P.U64.pack(len(self.queues))

    async def _get_max_mem_slots(self, payload: bytes, fds: list[int]) -> bytes:
        self._expect(payload, fds, 0, at_least=True)
        return P.U64.pack(P.MAX_MEM_SLOTS)

    async def _set_status(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.U64.size)
        self.status = P.U64.unpack(payload)[0] & 0xFF

    async def _get_status(self, payload: bytes, fds: list[int]) -> bytes:
        self._expect(payload, fds, 0, at_least=True)
        return P.U64.pack(self.status)

    async def _reset(self, payload: bytes, fds: list[int]) -> None:
        """RESET_DEVICE / RESET_OWNER: every ring stops and device state starts afresh.
        Protocol features belong to the connection and stay (QEMU does not send them
        again); the memory table stays too (with CONFIGURE_MEM_SLOTS QEMU only sends
        changes)."""
        close_fds(fds)
        async with self.ring_lock:
            for q in self.queues:
                self._stop(q)
                q.vq.drop_views()
                q.vq.last_avail_idx = q.vq.used_idx = 0
                q.vq.has_addresses = False
                q.enabled = False
            self.features = self.status = 0

    # -- memory ----------------------------------------------------------------------
    async def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        if len(payload) < P.MEM_TABLE_HEADER.size:
            raise Refused("SET_MEM_TABLE shorter than its header")
        nregions, _pad = P.MEM_TABLE_HEADER.unpack_from(payload)
        if not 0 < nregions <= P.MAX_MEM_REGIONS:
            raise Refused(f"{nregions} memory regions")
        self._expect(payload, fds, P.MEM_TABLE_HEADER.size + nregions * P.MEMORY_REGION.size,
                     nregions, at_least=True)
        regions = []
        try:
            for i in range(nregions):
                gpa, size, uva, offset = P.MEMORY_REGION.unpack_from(
                    payload, P.MEM_TABLE_HEADER.size + i * P.MEMORY_REGION.size)
                regions.append(map_region(fds[i], gpa, size, uva, offset))
        except GuestMemoryError:
            for r in regions:
                r.close()
            raise
        finally:
            close_fds(fds)
        async with self.ring_lock:
            for q in self.queues:
                q.vq.drop_views()
            self.memory.replace(regions)
        self._poke_started_queues()

    async def _add_mem_reg(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.SINGLE_REGION.size + P.MEMORY_REGION.size, 1)
        gpa, size, uva, offset = P.MEMORY_REGION.unpack_from(payload, P.SINGLE_REGION.size)
        try:
            region = map_region(fds[0], gpa, size, uva, offset)
        finally:
            close_fds(fds)
        if len(self.memory.regions) >= P.MAX_MEM_SLOTS:
            region.close()
            raise Refused("no free memory slot")
        async with self.ring_lock:
            for q in self.queues:
                q.vq.drop_views()
            self.memory.add(region)
        self._poke_started_queues()

    async def _rem_mem_reg(self, payload: bytes, fds: list[int]) -> None:
        close_fds(fds)  # QEMU may pass the region's fd along; it is not needed
        self._expect(payload, [], P.SINGLE_REGION.size + P.MEMORY_REGION.size)
        gpa, size, uva, _offset = P.MEMORY_REGION.unpack_from(payload, P.SINGLE_REGION.size)
        async with self.ring_lock:
            for q in self.queues:
                q.vq.drop_views()
            if not self.memory.remove(gpa, size, uva):
                raise Refused(f"no region at {gpa:#x}+{size:#x}")

    # -- rings -----------------------------------------------------------------------
    async def _set_vring_num(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.VRING_STATE.size)
        index, num = P.VRING_STATE.unpack(payload)
        q = self._queue(index)
        async with self.ring_lock:
            try:
                q.vq.set_num(num)
            except ChainError as exc:
                raise Refused(str(exc)) from None

    async def _set_vring_addr(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.VRING_ADDR.size)
        index, _flags, desc, used, avail, _log = P.VRING_ADDR.unpack(payload)
        q = self._queue(index)
        async with self.ring_lock:
            q.vq.set_addresses(desc, used, avail)

    async def _set_vring_base(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.VRING_STATE.size)
        index, num = P.VRING_STATE.unpack(payload)
        q = self._queue(index)
        async with self.ring_lock:
            q.vq.last_avail_idx = num & 0xFFFF
            q.vq.used_idx = num & 0xFFFF

    async def _get_vring_base(self, payload: bytes, fds: list[int]) -> bytes:
        """Stops the ring (after its current batch) and reports where it stopped."""
        self._expect(payload, fds, P.VRING_STATE.size)
        index, _num = P.VRING_STATE.unpack(payload)
        q = self._queue(index)
        async with self.ring_lock:
            self._stop(q)
            q.enabled = False
            q.vq.drop_views()
            q.call_fd = _set_fd(q.call_fd, None)
            return P.VRING_STATE.pack(index, q.vq.last_avail_idx)

    def _ring_fd(self, payload: bytes, fds: list[int]) -> tuple[Queue, int | None]:
        self._expect(payload, [], P.U64.size)
        (value,) = P.U64.unpack(payload)
        q = self._queue(value & P.VRING_KICK_INDEX_MASK)
        nofd = bool(value & P.VRING_NOFD_MASK)
        if len(fds) != (0 if nofd else 1):
            flag = "set" if nofd else "clear"
            raise Refused(f"{len(fds)} file descriptors with the no-fd flag {flag}")
        return q, None if nofd else fds[0]

    async def _set_vring_kick(self, payload: bytes, fds: list[int]) -> None:
        q, fd = self._ring_fd(payload, fds)
        if fd is None:
            raise Refused("polling mode (no kick fd) is not supported")
        async with self.ring_lock:
            self._stop(q)
            q.kick_fd = _set_fd(q.kick_fd, fd)
            if not self.features & 1 << P.VHOST_USER_F_PROTOCOL_FEATURES:
                q.enabled = True  # without protocol features a ring starts enabled
            with contextlib.suppress(GuestMemoryError):  # memory not there yet
                q.vq.sync_used_idx()
            self._start(q)
            # a restarted daemon looks at its ring at once: the guest will not kick again
            # for requests it already made available
            self._poke(q)

    async def _set_vring_call(self, payload: bytes, fds: list[int]) -> None:
        q, fd = self._ring_fd(payload, fds)
        async with self.ring_lock:
            q.call_fd = _set_fd(q.call_fd, fd)

    async def _set_vring_err(self, payload: bytes, fds: list[int]) -> None:
        q, fd = self._ring_fd(payload, fds)
        q.err_fd = _set_fd(q.err_fd, fd)

    async def _set_vring_enable(self, payload: bytes, fds: list[int]) -> None:
        self._expect(payload, fds, P.VRING_STATE.size)
        index, enable = P.VRING_STATE.unpack(payload)
        q = self._queue(index)
        q.enabled = bool(enable)
        if q.enabled:
            self._poke(q)

    # -- workers -----------------------------------------------------------------------
    def _start(self, q: Queue) -> None:
        q.started, q.broken = True, False
        scope = trio.CancelScope()
        q.worker = scope
        self.nursery.start_soon(self._worker, q, scope)

    def _stop(self, q: Queue) -> None:
        """Cancel q's worker; callers hold ring_lock, so it is not inside a batch."""
        if q.worker is not None:
            q.worker.cancel()
            q.worker = None
        q.started = False

    def _poke(self, q: Queue) -> None:
        """Make q look at its ring now (a kick that arrived while it could not)."""
        if q.started and q.kick_fd is not None:
            with contextlib.suppress(OSError):
                os.eventfd_write(q.kick_fd, 1)

    def _poke_started_queues(self) -> None:
        for q in self.queues:
            self._poke(q)

    async def _worker(self, q: Queue, scope: trio.CancelScope) -> None:
        with scope:
            fd = q.kick_fd
            assert fd is not None
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                await self._drain(q)

    async def _drain(self, q: Queue) -> None:
        """Serve q's ring until it is empty. The ring lock is taken per chain, so ring or
        memory changes happen only between chains; taking a free lock does not yield to
        the scheduler (a yield per request would cost more than the request), so the
        worker yields every YIELD_EVERY chains to let other queues and messages in."""
        vq = q.vq
        first_used: int | None = None
        served = 0
        try:
            while True:
                await self.ring_lock.acquire()
                try:
                    if not (q.enabled and q.started and not q.broken):
                        return
                    if first_used is None:
                        first_used = vq.used_idx
                    head = vq.pop_head()
                    if head is None:
                        self._notify(q, first_used)
                        first_used = None
                        vq.set_avail_event()
                        if vq.pending():  # the driver added more before seeing the event
                            continue
                        return
                    await self._serve_chain(q, head)
                finally:
                    self.ring_lock.release()
                served += 1
                if served % YIELD_EVERY == 0:
                    await trio.lowlevel.checkpoint()
        except GuestMemoryError as exc:
            # e.g. the ring's region is between REM_MEM_REG and ADD_MEM_REG: the next
            # memory message pokes the queue again.
            self.log.debug("ring not reachable", queue=vq.index, reason=str(exc))
        except ChainError as exc:
            self._break(q, str(exc))

    def _notify(self, q: Queue, since_used: int) -> None:
        if q.call_fd is not None and q.vq.should_notify(since_used):
            try:
                os.eventfd_write(q.call_fd, 1)
            except OSError as exc:
                self.log.warning("cannot signal call eventfd", queue=q.vq.index, error=str(exc))

    async def _serve_chain(self, q: Queue, head: int) -> None:
        vq = q.vq
        try:
            chain = vq.walk(head)
            request = vq.read_request(chain)
        except (ChainError, GuestMemoryError) as exc:
            if head >= vq.num:
                raise ChainError(f"head {head} out of range") from exc
            q.stats["bad_chains"] += 1
            held = self._throttle.admit(("bad chain", vq.index))
            if held is not None:
                self.log.warning("bad descriptor chain", queue=vq.index, head=head,
                                 reason=str(exc), suppressed_since_last=held)
            vq.push_used(head, 0)
            return
        q.stats["requests"] += 1
        response = await self.device.handle(request)
        written = 0
        if response is not None and len(response) <= chain.writable_len:
            written = vq.write_response(chain, response)
        else:
            q.stats["refused"] += 1
        vq.push_used(head, written)

    def _break(self, q: Queue, reason: str) -> None:
        """The ring itself is corrupt: stop it, tell the frontend through the error fd."""
        q.broken = True
        self.log.error("virtqueue broken; needs a device reset", queue=q.vq.index, reason=reason)
        if q.err_fd is not None:
            with contextlib.suppress(OSError):
                os.eventfd_write(q.err_fd, 1)

    async def shutdown(self) -> None:
        async with self.ring_lock:
            for q in self.queues:
                self._stop(q)
                q.vq.drop_views()
                for fd in (q.kick_fd, q.call_fd, q.err_fd):
                    if fd is not None:
                        close_fds([fd])
                q.kick_fd = q.call_fd = q.err_fd = None
            self.memory.clear()
        self.device.attach_memory(None)
        self.sock.close()
