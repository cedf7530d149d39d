"""A synchronous vhost-user *frontend* that plays QEMU's part against a backend under test.

Why it exists: efird's backend must be exercised fast (no VM), with deliberate faults
(malformed messages, hostile rings, memory-table churn, daemon restarts) and in
benchmarks. QEMU cannot do any of that on demand, so this module does what QEMU does on
the socket and what a guest driver does in the rings, and nothing more.

Written from QEMU's docs/interop/vhost-user.rst and the virtio 1.x split-virtqueue
layout. It deliberately shares no code with `efird.vhost`: a checker that reuses the
checked code cannot find that code's mistakes.

Shape of the thing:

* Guest memory is one or more memfd regions, each with a guest-physical base (GPA), an
  invented "userspace address" (UVA, what QEMU's own mapping would be) and an optional
  non-zero mmap_offset (the region's bytes start that far into the fd; the bytes before
  it are poison, so a backend that ignores mmap_offset reads garbage).
* Ring addresses are sent as UVAs, descriptor buffer addresses are GPAs, exactly like
  QEMU; a backend that mixes the two up fails.
* Everything blocks with a timeout; every wait names what it was waiting for.
* The frontend is also a checker: a used-ring entry for a head that is not in flight, a
  used.len larger than the writable space, a used idx that runs ahead by more than the
  queue size, or a used buffer published without the call eventfd being signalled all
  raise `DeviceError`.

Memory ordering (x86-64 only, which is TSO): stores become visible in program order and
loads are not reordered with older loads. So descriptors, buffers and avail-ring entries
written before the avail idx store are visible before it, and used elements read after
the used idx load are at least as new as that idx; no barrier instruction is needed for
those. The one reordering TSO allows (a later load passing an earlier store) matters
where the driver publishes something and then reads the device's suppression state
(avail idx -> avail_event/used.flags, used_event -> used idx); `full_fence()` covers
those two places.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

if sys.byteorder != "little":  # pragma: no cover - the rings are little-endian
    raise ImportError("the vhost-user test frontend assumes a little-endian host")


# --------------------------------------------------------------------------------------
# Protocol constants
# --------------------------------------------------------------------------------------

class Req(IntEnum):
    """Frontend -> backend request numbers (vhost-user.rst, "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(IntEnum):
    """VHOST_USER_PROTOCOL_F_* bit numbers."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


# header flags
VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
REPLY_FLAGS = VERSION | FLAG_REPLY  # a backend reply carries exactly this

# SET_VRING_KICK/CALL/ERR payload
VRING_IDX_MASK = 0xFF
VRING_NOFD = 0x100

# feature bits
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_PROTOCOL_FEATURES = 30
F_VERSION_1 = 32

# virtio device status bits
S_ACKNOWLEDGE = 1
S_DRIVER = 2
S_DRIVER_OK = 4
S_FEATURES_OK = 8

# split-ring flags
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

MAX_SET_MEM_TABLE_REGIONS = 8  # VHOST_MEMORY_BASELINE_NREGIONS
MAX_QUEUE_SIZE = 32768
MAX_FDS_PER_MESSAGE = 16
MAX_REPLY_PAYLOAD = 64 * 1024  # far above any real reply; guards against a garbage size

UVA_BASE = 0x7F00_0000_0000
UVA_STRIDE = 1 << 36  # each region gets its own 64 GiB window of invented UVAs
GPA_ALIGN = 2 << 20  # auto-placed regions start on a 2 MiB boundary
POISON_PREFIX = 0xA5  # fills the fd bytes before mmap_offset
POISON_WRITABLE = 0xCC  # fills device-writable buffers before they are offered

HEADER = struct.Struct("=III")  # request, flags, size (native order, per the spec)
U64 = struct.Struct("=Q")
VRING_STATE = struct.Struct("=II")  # index, num
VRING_ADDR = struct.Struct("=IIQQQQ")  # index, flags, desc, used, avail, log (this order)
MEM_TABLE_HEAD = struct.Struct("=II")  # nregions, padding
MEM_REGION = struct.Struct("=QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
MEM_REG_PAD = struct.Struct("=Q")  # ADD/REM_MEM_REG start with 64 bits of padding
DESC = struct.Struct("<QIHH")  # addr, len, flags, next (virtio rings are little-endian)
USED_ELEM = struct.Struct("<II")  # id, len


def request_name(request: int | None) -> str:
    """A readable name for error messages: 'GET_VRING_BASE (11)' or 'request 99'."""
    if request is None:
        return "any message"
    try:
        return f"{Req(request).name} ({request})"
    except ValueError:
        return f"request {request}"


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------

class VhostUserError(Exception):
    """Base class: something about the session with the backend went wrong."""


class VhostUserTimeout(VhostUserError, TimeoutError):
    """A wait ran out; the message says what was being waited for."""


class VhostUserDisconnected(VhostUserError, ConnectionError):
    """The backend closed the connection (or was never connected)."""


class VhostUserProtocolError(VhostUserError):
    """The backend sent something the protocol does not allow (bad flags, wrong reply)."""


class VhostUserNack(VhostUserError):
    """A REPLY_ACK came back non-zero: the backend refused the request."""

    def __init__(self, request: int, code: int) -> None:
        super().__init__(f"backend refused {request_name(request)}: reply-ack {code:#x}")
        self.request = request
        self.code = code


class DeviceError(VhostUserError):
    """The backend broke the virtqueue contract (bad used entry, vring error signal...)."""


class MissedNotification(DeviceError):
    """A used buffer was published but the call eventfd was never signalled."""


class RingFull(VhostUserError):
    """Not enough free descriptors (or guest memory) to build the chain."""


# --------------------------------------------------------------------------------------
# Message packing (pure)
# --------------------------------------------------------------------------------------

def pack_message(request: int, payload: bytes = b"", *, flags: int = VERSION,
                 size: int | None = None) -> bytes:
    """Header + payload. `size` lets a test lie about the payload length."""
    return HEADER.pack(request, flags, len(payload) if size is None else size) + payload


def unpack_header(data: bytes) -> tuple[int, int, int]:
    """(request, flags, size) from the first 12 bytes."""
    if len(data) < HEADER.size:
        raise ValueError(f"a vhost-user header is {HEADER.size} bytes, got {len(data)}")
    return HEADER.unpack_from(data)


def pack_u64(value: int) -> bytes:
    return U64.pack(value)


def pack_vring_state(index: int, num: int) -> bytes:
    return VRING_STATE.pack(index, num)


def pack_vring_addr(index: int, desc: int, used: int, avail: int, *, flags: int = 0,
                    log: int = 0) -> bytes:
    """struct vhost_vring_addr: note the wire order is desc, used, avail, log."""
    return VRING_ADDR.pack(index, flags, desc, used, avail, log)


@dataclass(frozen=True)
class MemRegionDesc:
    """One region as it travels in SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int = 0

    def pack(self) -> bytes:
        return MEM_REGION.pack(self.gpa, self.size, self.uaddr, self.mmap_offset)


def pack_mem_table(regions: Sequence[MemRegionDesc]) -> bytes:
    """SET_MEM_TABLE payload. Like QEMU, only the used regions are sent (8 + 32*n bytes),
    not the fixed 8-slot array the spec's table suggests."""
    if len(regions) > MAX_SET_MEM_TABLE_REGIONS:
        raise ValueError(f"SET_MEM_TABLE carries at most {MAX_SET_MEM_TABLE_REGIONS} regions")
    return MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(r.pack() for r in regions)


def pack_mem_reg(region: MemRegionDesc) -> bytes:
    """ADD_MEM_REG / REM_MEM_REG payload: 64-bit padding, then one region."""
    return MEM_REG_PAD.pack(0) + region.pack()


def pack_desc(addr: int, length: int, flags: int, next_: int) -> bytes:
    """One 16-byte split-ring descriptor (also usable inside an indirect table)."""
    return DESC.pack(addr, length, flags, next_)


@dataclass
class Message:
    """A message received from the backend; fds are owned by the receiver."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    def u64(self) -> int:
        if len(self.payload) != U64.size:
            raise VhostUserProtocolError(
                f"{request_name(self.request)} reply: expected an 8-byte u64 payload, "
                f"got {len(self.payload)} bytes")
        return U64.unpack(self.payload)[0]

    def state(self) -> tuple[int, int]:
        if len(self.payload) != VRING_STATE.size:
            raise VhostUserProtocolError(
                f"{request_name(self.request)} reply: expected an 8-byte vring state, "
                f"got {len(self.payload)} bytes")
        return VRING_STATE.unpack(self.payload)

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


# --------------------------------------------------------------------------------------
# Split virtqueue arithmetic (pure)
# --------------------------------------------------------------------------------------

def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """virtio's vring_need_event: has the index moved past `event_idx` going from old to
    new? All arithmetic is modulo 2**16, which is what makes it work across wrap-around."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass(frozen=True)
class VringLayout:
    """Where the three parts of one split ring live (guest-physical addresses).

    Sizes per virtio 1.x 2.7: descriptor table 16*N (align 16), avail ring 6+2*N (align 2,
    includes used_event), used ring 6+8*N (align 4, includes avail_event).
    """

    queue_size: int
    desc: int
    avail: int
    used: int

    @staticmethod
    def sizes(queue_size: int) -> tuple[int, int, int]:
        check_queue_size(queue_size)
        return 16 * queue_size, 6 + 2 * queue_size, 6 + 8 * queue_size

    @classmethod
    def compute(cls, queue_size: int, base: int, used_align: int = 4) -> VringLayout:
        """Descriptor table at `base`, avail right after it, used at the next
        `used_align` boundary (4 is the virtio 1.x minimum; 4096 mimics legacy layout)."""
        if base % 16:
            raise ValueError(f"descriptor table must be 16-byte aligned, base={base:#x}")
        if used_align < 4 or used_align & (used_align - 1):
            raise ValueError(f"used ring alignment must be a power of two >= 4: {used_align}")
        desc_size, avail_size, _ = cls.sizes(queue_size)
        avail = base + desc_size
        used = align_up(avail + avail_size, used_align)
        return cls(queue_size, base, avail, used)

    @property
    def desc_size(self) -> int:
        return 16 * self.queue_size

    @property
    def avail_size(self) -> int:
        return 6 + 2 * self.queue_size

    @property
    def used_size(self) -> int:
        return 6 + 8 * self.queue_size

    @property
    def end(self) -> int:
        return self.used + self.used_size

    def desc_addr(self, index: int) -> int:
        return self.desc + 16 * index

    def avail_ring_addr(self, slot: int) -> int:
        return self.avail + 4 + 2 * slot

    @property
    def avail_idx_addr(self) -> int:
        return self.avail + 2

    @property
    def used_event_addr(self) -> int:
        return self.avail + 4 + 2 * self.queue_size

    def used_ring_addr(self, slot: int) -> int:
        return self.used + 4 + 8 * slot

    @property
    def used_idx_addr(self) -> int:
        return self.used + 2

    @property
    def avail_event_addr(self) -> int:
        return self.used + 4 + 8 * self.queue_size


def check_queue_size(queue_size: int) -> None:
    """Split rings need a power-of-two size no larger than 32768."""
    if not 0 < queue_size <= MAX_QUEUE_SIZE or queue_size & (queue_size - 1):
        raise ValueError(f"queue size must be a power of two in 1..32768, got {queue_size}")


_FENCE = threading.Lock()


def full_fence() -> None:
    """A full memory barrier from pure Python: CPython's lock acquire/release are atomic
    read-modify-write operations (lock-prefixed on x86), which order an earlier store
    before a later load. Needed exactly where TSO would otherwise let them pass."""
    _FENCE.acquire()
    _FENCE.release()


# --------------------------------------------------------------------------------------
# Guest memory
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegionSpec:
    """What a test asks for: unset gpa/uaddr are chosen (consistently) for it."""

    size: int
    gpa: int | None = None
    mmap_offset: int = 0
    uaddr: int | None = None


class _Heap:
    """First-fit allocator over one region's guest-physical range. Frees coalesce, and a
    double or overlapping free raises, since that would be a frontend bug."""

    def __init__(self, start: int, end: int) -> None:
        self._free: list[tuple[int, int]] = [(start, end)] if end > start else []

    def alloc(self, size: int, align: int) -> int | None:
        size = max(size, 1)
        for i, (start, end) in enumerate(self._free):
            addr = align_up(start, align)
            if addr + size <= end:
                pieces = []
                if start < addr:
                    pieces.append((start, addr))
                if addr + size < end:
                    pieces.append((addr + size, end))
                self._free[i:i + 1] = pieces
                return addr
        return None

    def free(self, addr: int, size: int) -> None:
        start, end = addr, addr + max(size, 1)
        i = bisect.bisect_left(self._free, (start, end))
        if (i > 0 and self._free[i - 1][1] > start) or (
                i < len(self._free) and self._free[i][0] < end):
            raise RuntimeError(f"double or overlapping free of [{start:#x}, {end:#x})")
        if i > 0 and self._free[i - 1][1] == start:
            start = self._free[i - 1][0]
            del self._free[i - 1]
            i -= 1
        if i < len(self._free) and self._free[i][0] == end:
            end = self._free[i][1]
            del self._free[i]
        self._free.insert(i, (start, end))

    @property
    def free_bytes(self) -> int:
        return sum(end - start for start, end in self._free)


class GuestRegion:
    """One memfd-backed region. The fd holds mmap_offset bytes of poison followed by the
    region's `size` bytes; we map the whole fd, as the backend is expected to."""

    def __init__(self, index: int, gpa: int, size: int, uaddr: int, mmap_offset: int) -> None:
        if size <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        if mmap_offset < 0:
            raise ValueError(f"mmap_offset must not be negative, got {mmap_offset}")
        self.index = index
        self.gpa = gpa
        self.size = size
        self.uaddr = uaddr
        self.mmap_offset = mmap_offset
        self.attached = True  # whether the backend is supposed to have it mapped
        self.fd = os.memfd_create(f"efird-test-guest-{index}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, mmap_offset + size)
            self._mm = mmap.mmap(self.fd, mmap_offset + size)
        except BaseException:
            os.close(self.fd)
            raise
        if mmap_offset:
            self._mm[:mmap_offset] = bytes([POISON_PREFIX]) * mmap_offset
        self._base = memoryview(self._mm)
        self.view = self._base[mmap_offset:mmap_offset + size]
        self.heap = _Heap(gpa, gpa + size)

    @property
    def desc(self) -> MemRegionDesc:
        return MemRegionDesc(self.gpa, self.size, self.uaddr, self.mmap_offset)

    def contains_gpa(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.gpa + self.size

    def contains_uva(self, uva: int, length: int = 1) -> bool:
        return self.uaddr <= uva and uva + length <= self.uaddr + self.size

    def close(self) -> None:
        if self.fd < 0:
            return
        self.view.release()
        self._base.release()
        self._mm.close()
        os.close(self.fd)
        self.fd = -1


class GuestMemory:
    """All regions of the fake guest, addressable by GPA; translates GPA <-> UVA."""

    def __init__(self) -> None:
        self.regions: list[GuestRegion] = []

    def add(self, spec: RegionSpec) -> int:
        """Create a region; returns its index. GPA/UVA ranges must not overlap."""
        index = len(self.regions)
        gpa = spec.gpa
        if gpa is None:
            top = max((r.gpa + r.size for r in self.regions), default=0)
            gpa = align_up(top, GPA_ALIGN)
        uaddr = UVA_BASE + index * UVA_STRIDE if spec.uaddr is None else spec.uaddr
        for r in self.regions:
            if gpa < r.gpa + r.size and r.gpa < gpa + spec.size:
                raise ValueError(f"region at gpa {gpa:#x} overlaps region {r.index}")
            if uaddr < r.uaddr + r.size and r.uaddr < uaddr + spec.size:
                raise ValueError(f"region at uaddr {uaddr:#x} overlaps region {r.index}")
        self.regions.append(GuestRegion(index, gpa, spec.size, uaddr, spec.mmap_offset))
        return index

    def locate(self, gpa: int, length: int = 1) -> tuple[GuestRegion, int]:
        """(region, offset) for a GPA range that lies entirely inside one region."""
        for r in self.regions:
            if r.contains_gpa(gpa, length):
                return r, gpa - r.gpa
        raise ValueError(f"guest range [{gpa:#x}, +{length:#x}) is not inside one region")

    def gpa_to_uva(self, gpa: int) -> int:
        region, offset = self.locate(gpa)
        return region.uaddr + offset

    def uva_to_gpa(self, uva: int, length: int = 1) -> int:
        for r in self.regions:
            if r.contains_uva(uva, length):
                return r.gpa + (uva - r.uaddr)
        raise ValueError(f"userspace range [{uva:#x}, +{length:#x}) is not inside one region")

    def read(self, gpa: int, length: int) -> bytes:
        region, offset = self.locate(gpa, max(length, 1))
        return bytes(region.view[offset:offset + length])

    def write(self, gpa: int, data: bytes) -> None:
        region, offset = self.locate(gpa, max(len(data), 1))
        region.view[offset:offset + len(data)] = data

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        if length:
            self.write(gpa, bytes([byte]) * length)

    def read_u16(self, gpa: int) -> int:
        """One aligned 16-bit load (a cast memoryview element is a single native access),
        so a concurrently written ring index is never seen torn."""
        region, offset = self.locate(gpa, 2)
        return region.view[offset:offset + 2].cast("H")[0]

    def write_u16(self, gpa: int, value: int) -> None:
        """One aligned 16-bit store; see read_u16."""
        region, offset = self.locate(gpa, 2)
        region.view[offset:offset + 2].cast("H")[0] = value & 0xFFFF

    def alloc(self, size: int, align: int = 16, region: int | None = None) -> int:
        """Guest memory for a buffer, from `region` or from any attached region."""
        candidates = [self.regions[region]] if region is not None else [
            r for r in self.regions if r.attached]
        for r in candidates:
            addr = r.heap.alloc(size, align)
            if addr is not None:
                return addr
        where = f"region {region}" if region is not None else "attached regions"
        raise RingFull(f"no {size} bytes of guest memory left in {where}")

    def free(self, gpa: int, size: int) -> None:
        region, _ = self.locate(gpa)
        region.heap.free(gpa, size)

    def close(self) -> None:
        for r in self.regions:
            r.close()


# --------------------------------------------------------------------------------------
# Virtqueue driver state
# --------------------------------------------------------------------------------------

class UsedElem(NamedTuple):
    """One completion: head descriptor index, used.len, and the first used.len bytes of
    the writable buffers (b"" for chains built with the raw API)."""

    head: int
    length: int
    data: bytes


@dataclass
class _Chain:
    head: int
    descs: list[int]
    allocs: list[tuple[int, int]]  # (gpa, size) to free on completion
    writable: list[tuple[int, int]]  # (gpa, len) in chain order

    @property
    def capacity(self) -> int:
        return sum(length for _, length in self.writable)


class _Vring:
    """Driver-side state of one queue. Survives reconnects: this is the 'guest'."""

    def __init__(self, index: int, layout: VringLayout, block: tuple[int, int]) -> None:
        self.index = index
        self.layout = layout
        self.block = block  # (gpa, size) of the ring memory
        flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
        self.kick_fd = os.eventfd(0, flags)
        self.call_fd = os.eventfd(0, flags)
        self.err_fd = os.eventfd(0, flags)
        self.poller = select.poll()
        self.poller.register(self.call_fd, select.POLLIN)
        self.poller.register(self.err_fd, select.POLLIN)
        self.hangup_fd: int | None = None
        self.reset(0)

    def reset(self, start_index: int) -> None:
        n = self.layout.queue_size
        self.free: list[int] = list(range(n - 1, -1, -1))  # pop() hands out 0 first
        self.avail_idx = start_index & 0xFFFF  # shadow of avail.idx
        self.last_used = start_index & 0xFFFF  # next used idx we will consume
        self.notified_idx = start_index & 0xFFFF  # avail idx at the last kick decision
        self.inflight: dict[int, _Chain] = {}
        self.raw_inflight: dict[int, int] = {}
        self.stash: deque[tuple[UsedElem, list[int]]] = deque()
        self.saved_base: int | None = None
        self.enabled = False

    def close(self) -> None:
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class _Params:
    """The handshake arguments, kept so `start()` and `reconnect()` can repeat them."""

    queues: int
    queue_size: int
    event_idx: bool
    indirect: bool
    mem_slots: bool
    start_index: int
    status: bool
    protocol_features: int | None


def _drain_eventfd(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


# --------------------------------------------------------------------------------------
# The frontend
# --------------------------------------------------------------------------------------

class VhostUserFrontend:
    """QEMU's side of a vhost-user session plus a minimal guest virtio driver.

    Guest memory and ring state belong to the object, not to the connection, so a
    backend can be restarted and re-attached (`reconnect`) with in-flight requests intact.
    """

    def __init__(self, regions: Sequence[RegionSpec] | None = None, *, timeout: float = 5.0,
                 ring_region: int = 0, data_region: int | None = None,
                 used_align: int = 4) -> None:
        """`regions` default to one 4 MiB region at GPA 0. Rings are carved from
        `ring_region`; request buffers from `data_region` (None: any attached region)."""
        self.timeout = timeout
        self.ring_region = ring_region
        self.data_region = data_region
        self.used_align = used_align
        self.memory = GuestMemory()
        self.sock: socket.socket | None = None
        self.history: deque[tuple[str, int, int, int]] = deque(maxlen=256)
        self.backend_features = 0
        self.backend_protocol_features = 0
        self.features = 0  # acked with SET_FEATURES
        self.protocol_features = 0  # acked with SET_PROTOCOL_FEATURES
        self.max_queues: int | None = None
        self.max_mem_slots: int | None = None
        self._queues: dict[int, _Vring] = {}
        self._params: _Params | None = None
        self._backend_regions: set[int] = set()  # regions this connection was given
        try:
            for spec in regions or [RegionSpec(4 << 20)]:
                self.memory.add(spec)
        except BaseException:
            self.memory.close()
            raise

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> VhostUserFrontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, path: str | os.PathLike[str] | socket.socket,
                timeout: float | None = None) -> None:
        """Connect to a listening backend (QEMU's `-chardev socket,path=...`), retrying
        until `timeout` while the socket does not exist yet; or adopt a connected socket."""
        self.disconnect()
        if isinstance(path, socket.socket):
            self.sock = path
        else:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(os.fspath(path))
                    break
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    sock.close()
                    if time.monotonic() >= deadline:
                        raise VhostUserTimeout(
                            f"could not connect to backend socket {os.fspath(path)!r}: "
                            f"{exc}") from exc
                    time.sleep(0.02)
                except BaseException:
                    sock.close()
                    raise
            self.sock = sock
        self.sock.settimeout(self.timeout)
        self._backend_regions.clear()

    def accept(self, path: str | os.PathLike[str], timeout: float | None = None) -> None:
        """The other socket direction (QEMU's `server=on`): listen on `path` and take one
        connection from a backend that connects to us."""
        self.disconnect()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(path))
            listener.listen(1)
            listener.settimeout(self.timeout if timeout is None else timeout)
            try:
                conn, _ = listener.accept()
            except TimeoutError as exc:
                raise VhostUserTimeout(
                    f"no backend connected to {os.fspath(path)!r} in time") from exc
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.connect(conn)

    def disconnect(self) -> None:
        """Drop the connection only (guest memory and rings stay), like QEMU losing the
        chardev."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        """Drop the connection and free every fd and mapping."""
        self.disconnect()
        for q in self._queues.values():
            q.close()
        self._queues.clear()
        self.memory.close()

    # ---------------------------------------------------------------- raw messages

    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (),
             need_reply: bool = False, *, flags: int | None = None,
             size: int | None = None) -> None:
        """Send one message exactly as asked: any request number, payload, fds, flags or
        a lying header size, so tests can feed the backend malformed input."""
        if flags is None:
            flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        data = pack_message(request, payload, flags=flags, size=size)
        sock = self._require_sock(request)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.history.append(("send", request, flags, len(payload)))
        try:
            sent = sock.sendmsg([data], ancillary)
            if sent < len(data):
                sock.sendall(data[sent:])
        except TimeoutError as exc:
            raise VhostUserTimeout(
                f"timed out after {self.timeout}s sending {request_name(request)}") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise VhostUserDisconnected(
                f"backend closed the connection while sending {request_name(request)}"
            ) from exc

    def recv_reply(self, request: int | None, *, timeout: float | None = None,
                   strict: bool = True) -> Message:
        """Receive one message. With `strict`, its flags must be exactly 0x5 and (unless
        `request` is None) its request number must match; otherwise raise."""
        what = "a message" if request is None else f"the reply to {request_name(request)}"
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        header, fds = self._recv_exact(HEADER.size, deadline, wait, what)
        req, flags, size = HEADER.unpack(header)
        msg = Message(req, flags, b"", fds)
        if size > MAX_REPLY_PAYLOAD:
            msg.close_fds()
            raise VhostUserProtocolError(
                f"while waiting for {what}: header claims a {size}-byte payload")
        if size:
            payload, more = self._recv_exact(size, deadline, wait, what)
            msg.payload = payload
            msg.fds.extend(more)
        self.history.append(("recv", req, flags, size))
        if strict:
            problems = []
            if flags != REPLY_FLAGS:
                problems.append(f"flags {flags:#x} instead of {REPLY_FLAGS:#x}")
            if request is not None and req != request:
                problems.append(f"got {request_name(req)}")
            if problems:
                msg.close_fds()
                raise VhostUserProtocolError(f"while waiting for {what}: " + "; ".join(problems))
        return msg

    def ping(self, timeout: float | None = None) -> bool:
        """Is the backend still answering on this connection? (a GET_FEATURES round trip)"""
        try:
            self.send(Req.GET_FEATURES)
            self.recv_reply(Req.GET_FEATURES, timeout=timeout).u64()
        except VhostUserError:
            return False
        return True

    def _require_sock(self, request: int | None) -> socket.socket:
        if self.sock is None:
            raise VhostUserDisconnected(f"not connected (for {request_name(request)})")
        return self.sock

    def _recv_exact(self, n: int, deadline: float, wait: float,
                    what: str) -> tuple[bytes, list[int]]:
        sock = self._require_sock(None)
        chunks: list[bytes] = []
        fds: list[int] = []
        got = 0
        cmsg_space = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)
        try:
            while got < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                try:
                    data, ancdata, msg_flags, _ = sock.recvmsg(n - got, cmsg_space)
                finally:
                    sock.settimeout(self.timeout)
                for level, kind, blob in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(blob) - len(blob) % array.array("i").itemsize
                        fds.extend(array.array("i", blob[:usable]))
                if msg_flags & socket.MSG_CTRUNC:
                    raise VhostUserProtocolError(f"while waiting for {what}: too many fds")
                if not data:
                    raise VhostUserDisconnected(
                        f"backend closed the connection while we waited for {what}")
                chunks.append(data)
                got += len(data)
        except TimeoutError as exc:
            Message(0, 0, b"", fds).close_fds()
            raise VhostUserTimeout(f"timed out after {wait}s waiting for {what}") from exc
        except ConnectionResetError as exc:
            Message(0, 0, b"", fds).close_fds()
            raise VhostUserDisconnected(
                f"connection reset while we waited for {what}") from exc
        except BaseException:
            Message(0, 0, b"", fds).close_fds()
            raise
        return b"".join(chunks), fds

    # ---------------------------------------------------------------- typed messages

    @property
    def reply_ack(self) -> bool:
        """Whether REPLY_ACK was negotiated on this connection."""
        return bool(self.protocol_features >> ProtocolFeature.REPLY_ACK & 1)

    def _get_u64(self, request: int) -> int:
        self.send(request)
        msg = self.recv_reply(request)
        msg.close_fds()
        return msg.u64()

    def _set(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *,
             ack: bool = False) -> None:
        """Send a request that has no reply of its own; with `ack` (and REPLY_ACK
        negotiated) ask for and check the reply-ack, as QEMU does for that request."""
        need = ack and self.reply_ack
        self.send(request, payload, fds, need_reply=need)
        if need:
            msg = self.recv_reply(request)
            msg.close_fds()
            code = msg.u64()
            if code:
                raise VhostUserNack(request, code)

    def get_features(self) -> int:
        return self._get_u64(Req.GET_FEATURES)

    def get_protocol_features(self) -> int:
        return self._get_u64(Req.GET_PROTOCOL_FEATURES)

    def get_status(self) -> int:
        return self._get_u64(Req.GET_STATUS)

    def set_status(self, status: int) -> None:
        self._set(Req.SET_STATUS, pack_u64(status))

    def _add_status(self, bits: int) -> None:
        """QEMU's vhost_user_add_status: read, OR in, write only if something changes."""
        status = self.get_status()
        if status & bits != bits:
            self.set_status(status | bits)

    # ---------------------------------------------------------------- bring-up

    def handshake(self, queues: int = 1, queue_size: int = 256, event_idx: bool = True,
                  indirect: bool = True, mem_slots: bool = False, *, start_index: int = 0,
                  status: bool = True, protocol_features: int | None = None) -> None:
        """The whole bring-up QEMU does on a new connection.

        GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (if MQ),
        SET_OWNER, then `start()`. `start_index` sets avail.idx = used.idx = that value in
        fresh rings (as if the guest had been migrated mid-life) to test index wrap-around.
        `protocol_features` overrides the negotiated protocol feature mask verbatim.
        """
        self._params = _Params(queues, queue_size, event_idx, indirect, mem_slots,
                               start_index, status, protocol_features)
        self._negotiate(queues, mem_slots, protocol_features)
        self._set(Req.SET_OWNER)
        self.start()

    def _negotiate(self, queues: int, mem_slots: bool, protocol_features: int | None) -> None:
        self.protocol_features = 0
        self.backend_features = self.get_features()
        self.backend_protocol_features = 0
        self.max_queues = None
        if self.backend_features >> F_PROTOCOL_FEATURES & 1:
            self.backend_protocol_features = self.get_protocol_features()
            if protocol_features is None:
                wanted = sum(1 << f for f in (ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK,
                                              ProtocolFeature.RESET_DEVICE,
                                              ProtocolFeature.STATUS))
                if mem_slots:
                    wanted |= 1 << ProtocolFeature.CONFIGURE_MEM_SLOTS
                protocol_features = wanted & self.backend_protocol_features
            self._set(Req.SET_PROTOCOL_FEATURES, pack_u64(protocol_features))
            self.protocol_features = protocol_features
            if protocol_features >> ProtocolFeature.MQ & 1:
                self.max_queues = self._get_u64(Req.GET_QUEUE_NUM)
                if queues > self.max_queues:
                    raise VhostUserError(
                        f"backend supports {self.max_queues} queues, {queues} requested")
        if mem_slots and not self.protocol_features >> ProtocolFeature.CONFIGURE_MEM_SLOTS & 1:
            raise VhostUserError("mem_slots requested but CONFIGURE_MEM_SLOTS not negotiated")

    def start(self, *, bases: dict[int, int] | None = None) -> None:
        """Everything after SET_OWNER (QEMU's vhost_dev_start), with the parameters of the
        last `handshake`: SET_FEATURES (+ FEATURES_OK status), the memory table, each
        queue's setup, SET_VRING_ENABLE 1 for each, then DRIVER_OK status. Call it again
        after `reset_device()` to re-initialise on the same connection."""
        if self._params is None:
            raise VhostUserError("start() needs a handshake() first")
        p = self._params
        wanted = 1 << F_VERSION_1
        if self.backend_features >> F_PROTOCOL_FEATURES & 1:
            wanted |= 1 << F_PROTOCOL_FEATURES
        if p.event_idx:
            wanted |= 1 << F_EVENT_IDX
        if p.indirect:
            wanted |= 1 << F_INDIRECT_DESC
        missing = wanted & ~self.backend_features
        if missing:
            raise VhostUserError(f"backend does not offer feature bits {missing:#x}")
        self._set(Req.SET_FEATURES, pack_u64(wanted))
        self.features = wanted
        with_status = p.status and bool(self.protocol_features >> ProtocolFeature.STATUS & 1)
        if with_status:
            self._add_status(S_FEATURES_OK)
        self._send_memory(p.mem_slots)
        for index in range(p.queues):
            self._ensure_ring(index, p.queue_size, p.start_index)
            base = None if bases is None else bases.get(index)
            self.start_queue(index, base=base, enable=False)
        if self.features >> F_PROTOCOL_FEATURES & 1:
            for index in range(p.queues):
                self.set_vring_enable(index, True)
        else:
            for index in range(p.queues):  # without protocol features rings start enabled
                self._queues[index].enabled = True
        if with_status:
            self._add_status(S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK)

    def _send_memory(self, mem_slots: bool) -> None:
        if not mem_slots:
            self.set_mem_table()
            return
        self.max_mem_slots = self._get_u64(Req.GET_MAX_MEM_SLOTS)
        wanted = [r.index for r in self.memory.regions if r.attached]
        if len(wanted) > self.max_mem_slots:
            raise VhostUserError(
                f"{len(wanted)} regions but the backend has {self.max_mem_slots} slots")
        # QEMU only sends the difference from what this connection already has (after
        # RESET_DEVICE that is everything it had: the table is kept).
        for index in sorted(self._backend_regions - set(wanted)):
            self.remove_region(index)
        for index in wanted:
            if index not in self._backend_regions:
                self.add_region(index=index)

    def _ensure_ring(self, index: int, queue_size: int, start_index: int) -> _Vring:
        q = self._queues.get(index)
        if q is not None and q.layout.queue_size == queue_size:
            return q
        if q is not None:
            if q.inflight or q.raw_inflight:
                raise VhostUserError(f"cannot resize queue {index} with requests in flight")
            self.memory.free(*q.block)
            q.close()
        size = VringLayout.compute(queue_size, 0, self.used_align).end
        gpa = self.memory.alloc(size, align=4096, region=self.ring_region)
        layout = VringLayout.compute(queue_size, gpa, self.used_align)
        q = _Vring(index, layout, (gpa, size))
        if self.sock is not None:
            # a backend that dies closes the socket: waiting for a used buffer ends at once
            q.poller.register(self.sock.fileno(), select.POLLRDHUP)
            q.hangup_fd = self.sock.fileno()
        self._init_ring_memory(q, start_index)
        self._queues[index] = q
        return q

    def _init_ring_memory(self, q: _Vring, start_index: int) -> None:
        self.memory.fill(q.block[0], q.block[1], 0)
        q.reset(start_index)
        self.memory.write_u16(q.layout.avail_idx_addr, q.avail_idx)
        self.memory.write_u16(q.layout.used_idx_addr, q.last_used)
        self.memory.write_u16(q.layout.used_event_addr, q.last_used)
        # as a device that last ran at this index would have left it: kick me at the next
        self.memory.write_u16(q.layout.avail_event_addr, q.avail_idx)

    def start_queue(self, queue: int, *, base: int | None = None, enable: bool = True) -> None:
        """QEMU's per-queue start: SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR,
        SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR (then SET_VRING_ENABLE 1 if asked).

        `base` defaults to the index a GET_VRING_BASE returned since the ring last
        started, else to used.idx in ring memory (what QEMU falls back to when the old
        backend died without answering)."""
        q = self._queue(queue)
        if base is None:
            base = q.saved_base if q.saved_base is not None else self.used_idx(queue)
        mem, lay = self.memory, q.layout
        self._set(Req.SET_VRING_NUM, pack_vring_state(queue, lay.queue_size))
        self._set(Req.SET_VRING_BASE, pack_vring_state(queue, base))
        self._set(Req.SET_VRING_ADDR, pack_vring_addr(
            queue, mem.gpa_to_uva(lay.desc), mem.gpa_to_uva(lay.used),
            mem.gpa_to_uva(lay.avail)))
        self._set(Req.SET_VRING_KICK, pack_u64(queue & VRING_IDX_MASK), [q.kick_fd])
        self._set(Req.SET_VRING_CALL, pack_u64(queue & VRING_IDX_MASK), [q.call_fd])
        self._set(Req.SET_VRING_ERR, pack_u64(queue & VRING_IDX_MASK), [q.err_fd])
        q.saved_base = None
        if enable and self.features >> F_PROTOCOL_FEATURES & 1:
            self.set_vring_enable(queue, True)

    def set_vring_enable(self, queue: int, on: bool) -> None:
        """SET_VRING_ENABLE; QEMU waits for the reply-ack so no request can overtake it."""
        self._set(Req.SET_VRING_ENABLE, pack_vring_state(queue, int(on)), ack=True)
        if queue in self._queues:
            self._queues[queue].enabled = on

    def get_vring_base(self, queue: int) -> int:
        """GET_VRING_BASE: stops the ring; returns the backend's next avail index, which
        is remembered for the next `start_queue`/`reconnect`."""
        self.send(Req.GET_VRING_BASE, pack_vring_state(queue, 0))
        msg = self.recv_reply(Req.GET_VRING_BASE)
        msg.close_fds()
        index, num = msg.state()
        if index != queue:
            raise VhostUserProtocolError(
                f"GET_VRING_BASE for queue {queue} answered for queue {index}")
        if queue in self._queues:
            self._queues[queue].saved_base = num
        return num

    def reset_device(self) -> None:
        """RESET_DEVICE (no reply, as QEMU sends it). The device forgets its rings, so the
        driver side starts over too: every queue gets fresh, zeroed rings at index 0."""
        self._set(Req.RESET_DEVICE)
        for q in self._queues.values():
            for chain in q.inflight.values():
                self._free_allocs(chain)
            self._init_ring_memory(q, 0)

    def reconnect(self, path: str | os.PathLike[str] | socket.socket, *,
                  kick_inflight: bool = True) -> None:
        """Re-attach a (restarted) backend on a new connection, keeping guest memory and
        rings: the same handshake, with SET_VRING_BASE = the saved GET_VRING_BASE index
        or, if none, used.idx (QEMU's choice after a crash; requests that were available
        but not used are then processed again by the new backend).

        A real guest will not kick again for requests it already kicked for, so a backend
        that wants to recover them must look at the avail ring when it starts. With
        `kick_inflight` (default) we kick queues that have requests in flight anyway; pass
        False to check the backend recovers without it."""
        if self._params is None:
            raise VhostUserError("reconnect() needs an earlier handshake()")
        bases = {i: q.saved_base if q.saved_base is not None else self.used_idx(i)
                 for i, q in self._queues.items()}
        self.connect(path)
        p = self._params
        self._negotiate(p.queues, p.mem_slots, p.protocol_features)
        self._set(Req.SET_OWNER)
        self.start(bases=bases)
        if kick_inflight:
            for i, q in self._queues.items():
                if q.inflight or q.raw_inflight:
                    self.kick(i)

    # ---------------------------------------------------------------- memory table

    def set_mem_table(self, regions: Sequence[int] | None = None) -> None:
        """SET_MEM_TABLE with the given regions (default: every attached one), reply-ack'd
        as QEMU does; afterwards exactly those regions count as attached."""
        indices = [r.index for r in self.memory.regions if r.attached] if regions is None \
            else list(regions)
        chosen = [self.memory.regions[i] for i in indices]
        self._set(Req.SET_MEM_TABLE, pack_mem_table([r.desc for r in chosen]),
                  [r.fd for r in chosen], ack=True)
        for r in self.memory.regions:
            r.attached = r.index in indices
        self._backend_regions = set(indices)

    def add_region(self, size: int | None = None, *, gpa: int | None = None,
                   mmap_offset: int = 0, uaddr: int | None = None,
                   index: int | None = None) -> int:
        """ADD_MEM_REG for a new region of `size` bytes, or (with `index`) for an existing
        one that was removed. Returns the region index."""
        if index is None:
            if size is None:
                raise ValueError("add_region needs a size or an existing region index")
            index = self.memory.add(RegionSpec(size, gpa, mmap_offset, uaddr))
        region = self.memory.regions[index]
        self._set(Req.ADD_MEM_REG, pack_mem_reg(region.desc), [region.fd], ack=True)
        region.attached = True
        self._backend_regions.add(index)
        return index

    def remove_region(self, index: int) -> None:
        """REM_MEM_REG (no fd; mmap_offset sent as 0 like QEMU, the spec says it is
        ignored). Buffers are no longer allocated from the region; its memory stays
        mapped on our side so a test can still point descriptors into it."""
        region = self.memory.regions[index]
        desc = MemRegionDesc(region.gpa, region.size, region.uaddr, 0)
        self._set(Req.REM_MEM_REG, pack_mem_reg(desc), ack=True)
        region.attached = False
        self._backend_regions.discard(index)

    # ---------------------------------------------------------------- virtqueues

    def _queue(self, queue: int) -> _Vring:
        try:
            return self._queues[queue]
        except KeyError:
            raise ValueError(f"queue {queue} is not set up") from None

    def vring(self, queue: int) -> VringLayout:
        """The ring's guest-physical layout, for tests that poke at it directly."""
        return self._queue(queue).layout

    def eventfds(self, queue: int) -> tuple[int, int, int]:
        """(kick, call, err) eventfds of a queue, e.g. to resend them in raw messages."""
        q = self._queue(queue)
        return q.kick_fd, q.call_fd, q.err_fd

    def used_idx(self, queue: int) -> int:
        return self.memory.read_u16(self._queue(queue).layout.used_idx_addr)

    def avail_idx(self, queue: int) -> int:
        return self._queue(queue).avail_idx

    def inflight(self, queue: int) -> int:
        """Chains made available and not yet seen in the used ring."""
        q = self._queue(queue)
        return len(q.inflight) + sum(q.raw_inflight.values())

    def alloc(self, size: int, align: int = 16, region: int | None = None) -> int:
        """Guest memory for hand-built buffers or indirect tables (raw tests)."""
        return self.memory.alloc(size, align, region if region is not None else self.data_region)

    def submit(self, queue: int, readable: Sequence[bytes], writable_sizes: Sequence[int],
               indirect: bool = False) -> int:
        """Build one chain (readable buffers first, then writable ones), make it available
        and return its head. Does not kick: call `notify` or `kick`."""
        q = self._queue(queue)
        chain = self._build_chain(q, readable, writable_sizes, indirect)
        self._publish(q, [chain.head])
        return chain.head

    def submit_many(self, queue: int, items: Iterable[tuple[bytes, int]],
                    indirect: bool = False) -> list[int]:
        """One chain per (request, response_size) item, all published with a single avail
        idx update (a batch, as a guest does between kicks). Does not kick."""
        q = self._queue(queue)
        chains: list[_Chain] = []
        try:
            for payload, response_size in items:
                chains.append(self._build_chain(q, [payload], [response_size], indirect))
        except BaseException:
            for chain in chains:
                self._release(q, chain)
            raise
        self._publish(q, [c.head for c in chains])
        return [c.head for c in chains]

    def kick(self, queue: int) -> None:
        """Signal the kick eventfd unconditionally."""
        q = self._queue(queue)
        q.notified_idx = q.avail_idx
        os.eventfd_write(q.kick_fd, 1)

    def notify(self, queue: int) -> bool:
        """Kick only if the device asked for it, as a guest driver does: with EVENT_IDX by
        avail_event, otherwise by used.flags NO_NOTIFY. Returns whether it kicked."""
        q = self._queue(queue)
        full_fence()  # our avail idx store must be visible before we read avail_event
        new, old = q.avail_idx, q.notified_idx
        q.notified_idx = new
        if self.features >> F_EVENT_IDX & 1:
            needed = vring_need_event(self.memory.read_u16(q.layout.avail_event_addr), new, old)
        else:
            needed = not self.memory.read_u16(q.layout.used) & USED_F_NO_NOTIFY
        if needed:
            os.eventfd_write(q.kick_fd, 1)
        return needed

    def wait_used(self, queue: int, timeout: float | None = None) -> UsedElem:
        """The next completion in used-ring order, waiting on the call eventfd."""
        q = self._queue(queue)
        if q.stash:
            elem, descs = q.stash.popleft()
            q.free.extend(descs)
            return elem
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        elem, descs = self._next_used(q, deadline, timeout)
        q.free.extend(descs)
        return elem

    def request(self, queue: int, payload: bytes, response_size: int, *,
                indirect: bool = False, timeout: float | None = None) -> bytes:
        """submit + notify + wait: the bytes the device wrote (b"" if it refused)."""
        head = self.submit(queue, [payload], [response_size], indirect)
        self.notify(queue)
        return self._wait_heads(queue, [head], timeout)[head].data

    def request_many(self, queue: int, items: Sequence[tuple[bytes, int]], *,
                     indirect: bool = False, timeout: float | None = None) -> list[bytes]:
        """A batch with one notify; responses in submission order."""
        heads = self.submit_many(queue, items, indirect)
        self.notify(queue)
        done = self._wait_heads(queue, heads, timeout)
        return [done[h].data for h in heads]

    # raw access for hostile tests

    def alloc_descs(self, queue: int, count: int) -> list[int]:
        """Take descriptor indices out of the free list so raw writes to them cannot
        clash with chains `submit` builds."""
        q = self._queue(queue)
        if count > len(q.free):
            raise RingFull(f"queue {queue}: {count} descriptors wanted, {len(q.free)} free")
        return [q.free.pop() for _ in range(count)]

    def write_desc(self, queue: int, index: int, addr: int, length: int, flags: int,
                   next: int) -> None:  # `next` is the virtio field name
        """Write descriptor table entry `index` verbatim (any addr/len/flags/next)."""
        q = self._queue(queue)
        if not 0 <= index < q.layout.queue_size:
            raise ValueError(f"descriptor {index} is outside the table of queue {queue}")
        self.memory.write(q.layout.desc_addr(index), pack_desc(addr, length, flags, next))

    def read_desc(self, queue: int, index: int) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of descriptor `index`."""
        q = self._queue(queue)
        return DESC.unpack(self.memory.read(q.layout.desc_addr(index), DESC.size))

    def publish_avail(self, queue: int, heads: Sequence[int]) -> None:
        """Put arbitrary head values in the avail ring and advance avail.idx by that many
        (so a test can also push idx more than queue-size ahead). Does not kick.
        Completions for these heads come back from `wait_used` with data b""."""
        q = self._queue(queue)
        for head in heads:
            q.raw_inflight[head] = q.raw_inflight.get(head, 0) + 1
        self._publish(q, heads)

    # internals

    def _build_chain(self, q: _Vring, readable: Sequence[bytes],
                     writable_sizes: Sequence[int], indirect: bool) -> _Chain:
        n = len(readable) + len(writable_sizes)
        if n == 0:
            raise ValueError("a chain needs at least one buffer")
        if n > q.layout.queue_size:
            raise ValueError(f"chain of {n} is longer than queue size {q.layout.queue_size} "
                             "(build over-long chains with the raw API)")
        mem = self.memory
        allocs: list[tuple[int, int]] = []
        segments: list[tuple[int, int, int]] = []  # (gpa, len, flags)
        writable: list[tuple[int, int]] = []
        try:
            for data in readable:
                gpa = mem.alloc(len(data), 16, self.data_region)
                allocs.append((gpa, len(data)))
                if data:
                    mem.write(gpa, data)
                segments.append((gpa, len(data), 0))
            for size in writable_sizes:
                gpa = mem.alloc(size, 16, self.data_region)
                allocs.append((gpa, size))
                mem.fill(gpa, size, POISON_WRITABLE)
                segments.append((gpa, size, DESC_F_WRITE))
                writable.append((gpa, size))
            if indirect:
                if not q.free:
                    raise RingFull(f"queue {q.index}: no free descriptor")
                table = mem.alloc(16 * n, 16, self.data_region)
                allocs.append((table, 16 * n))
                mem.write(table, b"".join(
                    pack_desc(a, ln, f | (DESC_F_NEXT if i < n - 1 else 0),
                              i + 1 if i < n - 1 else 0)
                    for i, (a, ln, f) in enumerate(segments)))
                descs = [q.free.pop()]
                mem.write(q.layout.desc_addr(descs[0]),
                          pack_desc(table, 16 * n, DESC_F_INDIRECT, 0))
            else:
                if len(q.free) < n:
                    raise RingFull(f"queue {q.index}: {n} descriptors needed, "
                                   f"{len(q.free)} free")
                descs = [q.free.pop() for _ in range(n)]
                for i, (a, ln, f) in enumerate(segments):
                    last = i == n - 1
                    mem.write(q.layout.desc_addr(descs[i]), pack_desc(
                        a, ln, f | (0 if last else DESC_F_NEXT), 0 if last else descs[i + 1]))
        except BaseException:
            for gpa, size in allocs:
                mem.free(gpa, size)
            raise
        chain = _Chain(descs[0], descs, allocs, writable)
        q.inflight[chain.head] = chain
        return chain

    def _publish(self, q: _Vring, heads: Sequence[int]) -> None:
        n = q.layout.queue_size
        for head in heads:
            self.memory.write_u16(q.layout.avail_ring_addr(q.avail_idx % n), head)
            q.avail_idx = (q.avail_idx + 1) & 0xFFFF
        # x86-TSO: the descriptor, buffer and ring-entry stores above become visible
        # before this idx store; a weakly ordered CPU would need a write barrier here.
        self.memory.write_u16(q.layout.avail_idx_addr, q.avail_idx)

    def _free_allocs(self, chain: _Chain) -> None:
        for gpa, size in chain.allocs:
            self.memory.free(gpa, size)
        chain.allocs = []

    def _release(self, q: _Vring, chain: _Chain) -> None:
        """Undo an unpublished chain."""
        q.inflight.pop(chain.head, None)
        self._free_allocs(chain)
        q.free.extend(chain.descs)

    def _pop_used(self, q: _Vring) -> tuple[UsedElem, list[int]] | None:
        """Consume one used entry if there is one. Descriptor indices are handed back to
        the caller (not freed) so a stashed head number cannot be reused meanwhile."""
        lay, n = q.layout, q.layout.queue_size
        used_idx = self.memory.read_u16(lay.used_idx_addr)
        pending = (used_idx - q.last_used) & 0xFFFF
        if pending == 0:
            return None
        if pending > n:
            raise DeviceError(f"queue {q.index}: used idx {used_idx} is {pending} entries "
                              f"past the last one seen ({q.last_used}), queue size {n}")
        # x86-TSO: this load cannot be satisfied with data older than the used idx load
        # above; a weakly ordered CPU would need a read barrier here.
        head, length = USED_ELEM.unpack(self.memory.read(lay.used_ring_addr(q.last_used % n),
                                                         USED_ELEM.size))
        q.last_used = (q.last_used + 1) & 0xFFFF
        chain = q.inflight.pop(head, None)
        if chain is None:
            if q.raw_inflight.get(head):
                q.raw_inflight[head] -= 1
                if not q.raw_inflight[head]:
                    del q.raw_inflight[head]
                return UsedElem(head, length, b""), []
            raise DeviceError(f"queue {q.index}: device returned head {head}, "
                              "which is not in flight")
        try:
            if length > chain.capacity:
                q.free.extend(chain.descs)
                raise DeviceError(f"queue {q.index}: used.len {length} for head {head} exceeds "
                                  f"its {chain.capacity} writable bytes")
            parts, left = [], length
            for gpa, size in chain.writable:
                if not left:
                    break
                take = min(size, left)
                parts.append(self.memory.read(gpa, take))
                left -= take
            return UsedElem(head, length, b"".join(parts)), chain.descs
        finally:
            self._free_allocs(chain)

    def _next_used(self, q: _Vring, deadline: float,
                   timeout: float | None) -> tuple[UsedElem, list[int]]:
        while True:
            got = self._pop_used(q)
            if got is not None:
                return got
            # Ask for an interrupt at the next entry, then look again: a device that
            # published before it could see our used_event is caught by the re-check.
            if self.features >> F_EVENT_IDX & 1:
                self.memory.write_u16(q.layout.used_event_addr, q.last_used)
            full_fence()
            got = self._pop_used(q)
            if got is not None:
                return got
            remaining = deadline - time.monotonic()
            if remaining > 0:
                events = q.poller.poll(max(1, int(remaining * 1000 + 0.999)))
                fired = {fd for fd, _ in events}
                if q.hangup_fd is not None and q.hangup_fd in fired:
                    if self.sock is not None and self.sock.fileno() == q.hangup_fd:
                        raise VhostUserError(f"queue {q.index}: the backend closed the "
                                             "connection while a request was in flight")
                    q.poller.unregister(q.hangup_fd)  # a connection since replaced
                    q.hangup_fd = None
                    continue
                if q.err_fd in fired:
                    _drain_eventfd(q.err_fd)
                    raise DeviceError(f"backend signalled the error eventfd of queue {q.index}")
                if q.call_fd in fired:
                    _drain_eventfd(q.call_fd)
                    continue
            # no signal within the deadline
            got = self._pop_used(q)
            wait = self.timeout if timeout is None else timeout
            if got is not None:
                raise MissedNotification(
                    f"queue {q.index}: used entry for head {got[0].head} was published but "
                    f"the call eventfd was not signalled within {wait}s")
            raise VhostUserTimeout(
                f"timed out after {wait}s waiting for a used buffer on queue {q.index} "
                f"(avail idx {q.avail_idx}, used idx {self.used_idx(q.index)}, "
                f"{self.inflight(q.index)} in flight)")

    def _wait_heads(self, queue: int, heads: Sequence[int],
                    timeout: float | None) -> dict[int, UsedElem]:
        q = self._queue(queue)
        wanted = set(heads)
        done: dict[int, UsedElem] = {}
        keep: deque[tuple[UsedElem, list[int]]] = deque()
        for elem, descs in q.stash:
            if elem.head in wanted and elem.head not in done:
                done[elem.head] = elem
                q.free.extend(descs)
            else:
                keep.append((elem, descs))
        q.stash = keep
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(done) < len(wanted):
            elem, descs = self._next_used(q, deadline, timeout)
            if elem.head in wanted and elem.head not in done:
                done[elem.head] = elem
                q.free.extend(descs)
            else:
                q.stash.append((elem, descs))
        return done
