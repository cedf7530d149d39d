"""A modern (virtio 1.x) virtio-pci driver that runs in the test process, over qtest.

The test plays the guest: no BIOS ran, so this module enumerates bus 0 through the
0xcf8/0xcfc config mechanism, assigns BARs itself, walks the vendor-specific
capabilities, performs the virtio 1.x initialisation sequence and drives split
virtqueues whose rings and buffers live in guest RAM. It is written to be strict and
observable rather than fast: every device answer is checked, every wait has a timeout
and errors describe the queue/device state, so a misbehaving vhost-user backend shows
up as a precise assertion instead of a hang.

Interrupts are not delivered anywhere (MSI-X stays disabled, the CPU is halted); the
driver polls the used ring, and tests can observe interrupt decisions through the ISR
register, which the device sets whenever it would raise INTx.
"""

from __future__ import annotations

import bisect
import struct
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .qtest import QTest

__all__ = [
    "DEFAULT_FEATURES",
    "Bar",
    "GuestAllocator",
    "PciAddress",
    "PciConfig",
    "UsedBuffer",
    "VirtioCap",
    "VirtioError",
    "VirtioPciDevice",
    "VirtioProtocolError",
    "Virtqueue",
    "VirtqueueTimeout",
    "find_virtio_pci",
    "pci_functions",
    "vring_need_event",
]

# --- PCI --------------------------------------------------------------------------------

PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_STATUS_CAP_LIST = 0x10
PCI_CAP_ID_VNDR = 0x09

VIRTIO_PCI_VENDOR = 0x1AF4
VIRTIO_PCI_MODERN_DEVICE_BASE = 0x1040
#: Transitional (legacy-capable) device ids; their subsystem id holds the virtio id.
VIRTIO_PCI_TRANSITIONAL_IDS = range(0x1000, 0x1040)

#: Where BARs go by default: q35's 32-bit PCI hole, above the ECAM window
#: (0xb0000000-0xbfffffff) and well below the IOAPIC (0xfec00000) and LAPIC (0xfee00000).
#: Each (slot, function) gets its own 2 MiB window so several devices never overlap.
MMIO_WINDOW_BASE = 0xC000_0000
MMIO_WINDOW_PER_FUNCTION = 2 * 1024 * 1024
IO_WINDOW_BASE = 0x1000
IO_WINDOW_PER_FUNCTION = 0x80

# --- virtio -----------------------------------------------------------------------------

VIRTIO_CONFIG_S_ACKNOWLEDGE = 0x01
VIRTIO_CONFIG_S_DRIVER = 0x02
VIRTIO_CONFIG_S_DRIVER_OK = 0x04
VIRTIO_CONFIG_S_FEATURES_OK = 0x08
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34


def bit(n: int) -> int:
    """Feature bit ``n`` as a mask."""
    return 1 << n


#: What the driver accepts unless told otherwise (intersected with the device's offer).
DEFAULT_FEATURES = (
    bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC)
)

VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5
VIRTIO_PCI_CAP_SHARED_MEMORY_CFG = 8

# struct virtio_pci_common_cfg
COMMON_DFSELECT = 0x00
COMMON_DF = 0x04
COMMON_GFSELECT = 0x08
COMMON_GF = 0x0C
COMMON_MSIX = 0x10
COMMON_NUMQ = 0x12
COMMON_STATUS = 0x14
COMMON_CFGGENERATION = 0x15
COMMON_Q_SELECT = 0x16
COMMON_Q_SIZE = 0x18
COMMON_Q_MSIX = 0x1A
COMMON_Q_ENABLE = 0x1C
COMMON_Q_NOFF = 0x1E
COMMON_Q_DESCLO = 0x20
COMMON_Q_DESCHI = 0x24
COMMON_Q_AVAILLO = 0x28
COMMON_Q_AVAILHI = 0x2C
COMMON_Q_USEDLO = 0x30
COMMON_Q_USEDHI = 0x34

VIRTIO_MSI_NO_VECTOR = 0xFFFF

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1
VIRTQUEUE_MAX_SIZE = 32768
#: QEMU refuses longer chains (VIRTQUEUE_MAX_SIZE in hw/virtio), also inside indirect tables.
QEMU_MAX_CHAIN = 1024

_DESC = struct.Struct("<QIHH")

#: Default guest RAM handed out to rings and buffers: above the legacy BIOS/VGA area and
#: below 128 MiB (QemuVM never starts with less RAM than that).
DEFAULT_RAM_START = 0x10_0000
DEFAULT_RAM_END = 0x800_0000


class VirtioError(RuntimeError):
    """The device refused something (features, queue setup) or the driver was misused."""


class VirtioProtocolError(VirtioError):
    """The device broke the virtio protocol (bad used id, impossible used index, ...)."""


class VirtqueueTimeout(VirtioError, TimeoutError):
    """No used buffer appeared in time."""


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """The EVENT_IDX rule (virtio spec 2.7.10): has ``event_idx`` been crossed?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


# --- guest memory -----------------------------------------------------------------------


class GuestAllocator:
    """Hands out guest-physical RAM for rings and buffers: bump-style first fit, with free.

    Freed blocks are coalesced and reused, so long test runs do not exhaust the range.
    Nothing is zeroed here; the driver writes what it needs.
    """

    def __init__(self, start: int = DEFAULT_RAM_START, end: int = DEFAULT_RAM_END) -> None:
        if not 0 <= start < end:
            raise ValueError(f"bad guest RAM range {start:#x}..{end:#x}")
        self.start, self.end = start, end
        self._free: list[tuple[int, int]] = [(start, end)]  # sorted, disjoint [a, b)
        self._used: dict[int, int] = {}

    _shared: weakref.WeakKeyDictionary[QTest, GuestAllocator] = weakref.WeakKeyDictionary()

    @classmethod
    def for_qtest(cls, qt: QTest) -> GuestAllocator:
        """The allocator shared by all devices driven through ``qt`` (one per VM)."""
        alloc = cls._shared.get(qt)
        if alloc is None:
            alloc = cls._shared[qt] = cls()
        return alloc

    def alloc(self, size: int, align: int = 16) -> int:
        """Reserve ``size`` bytes aligned to ``align`` (a power of two); return the address."""
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment {align} is not a power of two")
        size = _align(max(size, 1), 16)
        for i, (lo, hi) in enumerate(self._free):
            addr = _align(lo, align)
            if addr + size <= hi:
                pieces = [(a, b) for a, b in ((lo, addr), (addr + size, hi)) if b > a]
                self._free[i : i + 1] = pieces
                self._used[addr] = size
                return addr
        raise MemoryError(
            f"guest RAM {self.start:#x}..{self.end:#x} exhausted: no {size} bytes "
            f"aligned to {align} ({self.bytes_free} bytes free in {len(self._free)} pieces)"
        )

    def free(self, addr: int) -> None:
        """Return a block from :meth:`alloc`; adjacent free blocks merge."""
        try:
            size = self._used.pop(addr)
        except KeyError:
            raise ValueError(f"free of {addr:#x}, which is not allocated") from None
        lo, hi = addr, addr + size
        i = bisect.bisect_left(self._free, (lo, hi))
        if i > 0 and self._free[i - 1][1] == lo:
            i -= 1
            lo = self._free.pop(i)[0]
        if i < len(self._free) and self._free[i][0] == hi:
            hi = self._free.pop(i)[1]
        self._free.insert(i, (lo, hi))

    @property
    def bytes_free(self) -> int:
        """Total free bytes (maybe fragmented)."""
        return sum(b - a for a, b in self._free)

    @property
    def allocations(self) -> int:
        """Number of live blocks (tests use it to check nothing leaks)."""
        return len(self._used)


# --- PCI config space -------------------------------------------------------------------


class PciAddress(NamedTuple):
    """Bus/device/function of a PCI function."""

    bus: int
    slot: int
    function: int

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.slot:02x}.{self.function}"


class PciConfig:
    """Configuration space of one function, through the legacy 0xcf8/0xcfc mechanism.

    q35 also has ECAM, but it is only decoded once firmware programs PCIEXBAR; the port
    mechanism works from reset.
    """

    def __init__(self, qt: QTest, address: PciAddress) -> None:
        self.qt = qt
        self.address = address

    def _select(self, offset: int) -> int:
        if not 0 <= offset < 256:
            raise ValueError(f"config offset {offset:#x} out of the 256-byte legacy space")
        bus, slot, fn = self.address
        self.qt.outl(
            PCI_CONFIG_ADDRESS, 0x8000_0000 | bus << 16 | slot << 11 | fn << 8 | (offset & 0xFC)
        )
        return PCI_CONFIG_DATA + (offset & 3)

    def read8(self, offset: int) -> int:
        """Read a config byte."""
        return self.qt.inb(self._select(offset))

    def read16(self, offset: int) -> int:
        """Read a config word (offset must be 2-aligned)."""
        return self.qt.inw(self._select(offset))

    def read32(self, offset: int) -> int:
        """Read a config dword (offset must be 4-aligned)."""
        return self.qt.inl(self._select(offset))

    def write8(self, offset: int, value: int) -> None:
        """Write a config byte."""
        self.qt.outb(self._select(offset), value)

    def write16(self, offset: int, value: int) -> None:
        """Write a config word."""
        self.qt.outw(self._select(offset), value)

    def write32(self, offset: int, value: int) -> None:
        """Write a config dword."""
        self.qt.outl(self._select(offset), value)

    @property
    def vendor_id(self) -> int:
        """PCI vendor id (0xffff when nothing answers)."""
        return self.read16(PCI_VENDOR_ID)

    @property
    def device_id(self) -> int:
        """PCI device id."""
        return self.read16(PCI_DEVICE_ID)


def pci_functions(qt: QTest, bus: int = 0) -> Iterator[PciConfig]:
    """Every present function on ``bus`` (multi-function devices included)."""
    for slot in range(32):
        cfg = PciConfig(qt, PciAddress(bus, slot, 0))
        if cfg.vendor_id == 0xFFFF:
            continue
        yield cfg
        if cfg.read8(PCI_HEADER_TYPE) & 0x80:
            for fn in range(1, 8):
                sub = PciConfig(qt, PciAddress(bus, slot, fn))
                if sub.vendor_id != 0xFFFF:
                    yield sub


def _virtio_id_of(cfg: PciConfig) -> int | None:
    if cfg.vendor_id != VIRTIO_PCI_VENDOR:
        return None
    dev = cfg.device_id
    if dev >= VIRTIO_PCI_MODERN_DEVICE_BASE:
        return dev - VIRTIO_PCI_MODERN_DEVICE_BASE
    if dev in VIRTIO_PCI_TRANSITIONAL_IDS:
        return cfg.read16(PCI_SUBSYSTEM_ID)
    return None


def find_virtio_pci(
    qt: QTest, virtio_id: int, *, bus: int = 0, slot: int | None = None, index: int = 0
) -> PciConfig:
    """Find the ``index``-th virtio device of type ``virtio_id`` (e.g. 4 = entropy) on ``bus``.

    Modern ids (0x1040 + id) and transitional ones (0x1000..0x103f, id in subsystem) both
    match; transitional devices also carry the modern capabilities this driver uses.
    """
    seen: list[str] = []
    matches = 0
    for cfg in pci_functions(qt, bus):
        seen.append(f"{cfg.address} {cfg.vendor_id:04x}:{cfg.device_id:04x}")
        if slot is not None and cfg.address.slot != slot:
            continue
        if _virtio_id_of(cfg) == virtio_id:
            if matches == index:
                return cfg
            matches += 1
    where = f"bus {bus}" + ("" if slot is None else f" slot {slot:#x}")
    raise VirtioError(
        f"no virtio device with id {virtio_id} (PCI {VIRTIO_PCI_VENDOR:04x}:"
        f"{VIRTIO_PCI_MODERN_DEVICE_BASE + virtio_id:04x}) #{index} on {where}; "
        f"found: {', '.join(seen) or 'nothing'}"
    )


@dataclass(frozen=True)
class Bar:
    """A BAR as this driver assigned it."""

    index: int
    base: int
    size: int
    is_io: bool
    is_64bit: bool = False
    prefetchable: bool = False


@dataclass(frozen=True)
class VirtioCap:
    """One struct virtio_pci_cap (plus notify_off_multiplier for the notify cap)."""

    cfg_type: int
    bar: int
    offset: int
    length: int
    cap_offset: int
    id: int = 0
    notify_off_multiplier: int = 0


# --- virtqueues -------------------------------------------------------------------------


class UsedBuffer(NamedTuple):
    """A completed request: the chain's head, the device's used length, what it wrote."""

    head: int
    used_len: int
    in_data: bytes


@dataclass
class _Request:
    descs: list[int]
    in_bufs: list[tuple[int, int]]  # (guest address, size) of device-writable buffers
    block: int | None  # allocation to free on completion
    submitted: float = field(default_factory=time.monotonic)


class Virtqueue:
    """A split virtqueue driven from the test; created by :meth:`VirtioPciDevice.setup_queue`.

    Layout in guest RAM (all zeroed at setup): descriptor table (16 bytes each), avail
    ring (flags, idx, ring[size], used_event), used ring (flags, idx, {id, len}[size],
    avail_event). Descriptors are recycled FIFO so that every slot gets exercised.
    """

    def __init__(
        self,
        device: VirtioPciDevice,
        index: int,
        size: int,
        desc: int,
        avail: int,
        used: int,
        notify_addr: int,
    ) -> None:
        self.device = device
        self.qt = device.qt
        self.index = index
        self.size = size
        self.desc_addr, self.avail_addr, self.used_addr = desc, avail, used
        self.notify_addr = notify_addr
        self.event_idx = device.has_feature(VIRTIO_RING_F_EVENT_IDX)
        self.indirect = device.has_feature(VIRTIO_RING_F_INDIRECT_DESC)
        #: Next avail index to publish (free-running, mod 2**16).
        self.avail_idx = 0
        #: Used index up to which completions were consumed.
        self.last_used_idx = 0
        self._kicked_idx = 0
        #: With EVENT_IDX, keep used_event = last_used_idx on every submit/completion
        #: (ask for an interrupt per buffer). Tests that steer used_event set this False.
        self.auto_used_event = True
        self.notifications = 0
        self._free: deque[int] = deque(range(size))
        self._inflight: dict[int, _Request] = {}
        self._dead: str | None = None

    # -- ring addresses ------------------------------------------------------------------

    @property
    def used_event_addr(self) -> int:
        """avail->ring[size]: the used index after which the driver wants an interrupt."""
        return self.avail_addr + 4 + 2 * self.size

    @property
    def avail_event_addr(self) -> int:
        """used->ring[size]: the avail index after which the device wants a notification."""
        return self.used_addr + 4 + 8 * self.size

    # -- state ---------------------------------------------------------------------------

    def _alive(self) -> None:
        if self._dead is not None:
            raise VirtioError(f"queue {self.index} is no longer usable: {self._dead}")

    def _kill(self, reason: str) -> None:
        """Forget the queue after a device reset; its memory goes back to the allocator."""
        if self._dead is not None:
            return
        self._dead = reason
        alloc = self.device.allocator
        for req in self._inflight.values():
            if req.block is not None:
                alloc.free(req.block)
        self._inflight.clear()
        for addr in (self.desc_addr, self.avail_addr, self.used_addr):
            alloc.free(addr)

    @property
    def num_free(self) -> int:
        """Descriptors available for new chains."""
        return len(self._free)

    @property
    def in_flight(self) -> list[int]:
        """Heads submitted and not yet returned by the device."""
        return list(self._inflight)

    def used_idx(self) -> int:
        """used->idx as the device last wrote it."""
        return self.qt.readw(self.used_addr + 2)

    def used_flags(self) -> int:
        """used->flags (VRING_USED_F_NO_NOTIFY when the device suppresses kicks)."""
        return self.qt.readw(self.used_addr)

    def avail_event(self) -> int:
        """used->avail_event (EVENT_IDX): where the device wants the next notification."""
        return self.qt.readw(self.avail_event_addr)

    def set_used_event(self, idx: int) -> None:
        """Write avail->used_event (EVENT_IDX): interrupt when used idx passes ``idx``."""
        self.qt.writew(self.used_event_addr, idx & 0xFFFF)

    def set_avail_flags(self, flags: int) -> None:
        """Write avail->flags (VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX)."""
        self.qt.writew(self.avail_addr, flags)

    # -- submission ----------------------------------------------------------------------

    def submit(
        self,
        out_bufs: Sequence[bytes],
        in_sizes: Sequence[int],
        *,
        kick: bool = True,
        in_fill: int = 0,
    ) -> int:
        """Post a chain: device-readable ``out_bufs`` then writable buffers of ``in_sizes``.

        Buffers are copied into one guest allocation (writable ones pre-filled with
        ``in_fill`` so tests can tell what the device wrote). Returns the head index.
        """
        self._alive()
        n = len(out_bufs) + len(in_sizes)
        if n == 0:
            raise ValueError("a descriptor chain needs at least one buffer")
        if n > self.size:
            raise ValueError(f"chain of {n} descriptors exceeds the queue size {self.size}")
        if n > len(self._free):
            raise VirtioError(
                f"queue {self.index}: {n} descriptors needed, {len(self._free)} free "
                f"({len(self._inflight)} requests in flight)"
            )
        block, bufs, in_bufs = self._stage(out_bufs, in_sizes, 0, in_fill)
        descs = [self._free.popleft() for _ in range(n)]
        self._write_chain(descs, bufs)
        return self._publish(descs[0], _Request(descs, in_bufs, block), kick)

    def submit_indirect(
        self,
        out_bufs: Sequence[bytes],
        in_sizes: Sequence[int],
        *,
        kick: bool = True,
        in_fill: int = 0,
    ) -> int:
        """Like :meth:`submit`, but the chain lives in an indirect descriptor table.

        Uses a single ring descriptor (VRING_DESC_F_INDIRECT); needs INDIRECT_DESC.
        """
        self._alive()
        if not self.indirect:
            raise VirtioError("VIRTIO_RING_F_INDIRECT_DESC was not negotiated")
        n = len(out_bufs) + len(in_sizes)
        if n == 0:
            raise ValueError("an indirect table needs at least one buffer")
        if n > QEMU_MAX_CHAIN:
            raise ValueError(f"indirect table of {n} entries is longer than {QEMU_MAX_CHAIN}")
        if not self._free:
            raise VirtioError(f"queue {self.index}: no free descriptor for the indirect head")
        table_size = 16 * n
        block, bufs, in_bufs = self._stage(out_bufs, in_sizes, table_size, in_fill)
        table = b"".join(
            _DESC.pack(addr, size, flags | (VRING_DESC_F_NEXT if i + 1 < n else 0),
                       i + 1 if i + 1 < n else 0)
            for i, (addr, size, flags) in enumerate(bufs)
        )  # fmt: skip
        self.qt.memwrite(block, table)
        head = self._free.popleft()
        self._write_chain([head], [(block, table_size, VRING_DESC_F_INDIRECT)])
        return self._publish(head, _Request([head], in_bufs, block), kick)

    def submit_descriptors(
        self, descs: Sequence[tuple[int, int, int]], *, kick: bool = True
    ) -> int:
        """Post a chain of raw ``(addr, len, flags)`` descriptors (NEXT/next set here).

        Nothing is allocated or copied: for tests that point the device at memory they
        manage themselves, including deliberately bad addresses. Writable descriptors
        are read back on completion (at most ``used_len`` bytes).
        """
        self._alive()
        n = len(descs)
        if n == 0 or n > len(self._free):
            raise VirtioError(f"queue {self.index}: cannot post {n} descriptors "
                              f"({len(self._free)} free)")  # fmt: skip
        idx = [self._free.popleft() for _ in range(n)]
        self._write_chain(idx, [(a, ln, f & ~VRING_DESC_F_NEXT) for a, ln, f in descs])
        in_bufs = [(a, ln) for a, ln, f in descs if f & VRING_DESC_F_WRITE]
        return self._publish(idx[0], _Request(idx, in_bufs, None), kick)

    def _stage(
        self, out_bufs: Sequence[bytes], in_sizes: Sequence[int], prefix: int, in_fill: int
    ) -> tuple[int, list[tuple[int, int, int]], list[tuple[int, int]]]:
        """Lay out [prefix][out...][in...] in one allocation and fill it (2 commands)."""
        if any(s < 0 for s in in_sizes):
            raise ValueError("in_sizes must be >= 0")
        off = _align(prefix, 16)
        placed: list[tuple[int, int, int]] = []  # (offset, size, flags)
        for data in out_bufs:
            placed.append((off, len(data), 0))
            off = _align(off + len(data), 16)
        out_end = off
        for size in in_sizes:
            placed.append((off, size, VRING_DESC_F_WRITE))
            off = _align(off + size, 16)
        block = self.device.allocator.alloc(off, 16)
        if out_bufs:
            image = bytearray(out_end - prefix)
            for (o, _, _), data in zip(placed, out_bufs, strict=False):
                image[o - prefix : o - prefix + len(data)] = data
            self.qt.memwrite(block + prefix, bytes(image))
        if in_sizes:
            self.qt.memset(block + out_end, off - out_end, in_fill)
        bufs = [(block + o, size, flags) for o, size, flags in placed]
        in_bufs = [(a, size) for a, size, flags in bufs if flags & VRING_DESC_F_WRITE]
        return block, bufs, in_bufs

    def _write_chain(self, idx: list[int], bufs: Sequence[tuple[int, int, int]]) -> None:
        """Write descriptors ``idx[i]`` <- ``bufs[i]`` linked with NEXT, batching runs."""
        run_start, run = -1, b""
        for i, (addr, size, flags) in enumerate(bufs):
            last = i + 1 == len(idx)
            entry = _DESC.pack(
                addr, size, flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else idx[i + 1]
            )
            if run and idx[i] == idx[i - 1] + 1:
                run += entry
            else:
                if run:
                    self.qt.memwrite(self.desc_addr + 16 * run_start, run)
                run_start, run = idx[i], entry
        if run:
            self.qt.memwrite(self.desc_addr + 16 * run_start, run)

    def _publish(self, head: int, req: _Request, kick: bool) -> int:
        self._inflight[head] = req
        slot = self.avail_idx % self.size
        self.qt.writew(self.avail_addr + 4 + 2 * slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if self.event_idx and self.auto_used_event:
            self.set_used_event(self.last_used_idx)
        self.qt.writew(self.avail_addr + 2, self.avail_idx)
        if kick:
            self.kick()
        return head

    def needs_kick(self) -> bool:
        """Whether the device asked to be notified about what was published since last kick."""
        new, old = self.avail_idx, self._kicked_idx
        if new == old:
            return False
        if self.event_idx:
            return vring_need_event(self.avail_event(), new, old)
        return not self.used_flags() & VRING_USED_F_NO_NOTIFY

    def kick(self, force: bool = False) -> bool:
        """Notify the device if it wants it (or always with ``force``); True if notified."""
        self._alive()
        notify = force or self.needs_kick()
        if notify:
            self.notify()
        self._kicked_idx = self.avail_idx
        return notify

    def notify(self) -> None:
        """Write the queue index to its notify address, unconditionally."""
        self.qt.writew(self.notify_addr, self.index)
        self.notifications += 1

    # -- completion ----------------------------------------------------------------------

    def poll_used(self, *, truncate: bool = True) -> UsedBuffer | None:
        """Consume one used element if the device published one, else return None.

        ``in_data`` is what the writable buffers hold, cut to ``used_len`` unless
        ``truncate`` is False (then all writable bytes, to inspect a lying used_len).
        """
        self._alive()
        used_idx = self.used_idx()
        pending = (used_idx - self.last_used_idx) & 0xFFFF
        if pending == 0:
            return None
        if pending > len(self._inflight):
            raise VirtioProtocolError(
                f"queue {self.index}: used idx {used_idx} is {pending} ahead of "
                f"{self.last_used_idx}, but only {len(self._inflight)} requests are in flight"
            )
        slot = self.last_used_idx % self.size
        head, used_len = struct.unpack("<II", self.qt.memread(self.used_addr + 4 + 8 * slot, 8))
        req = self._inflight.pop(head, None)
        if req is None:
            raise VirtioProtocolError(
                f"queue {self.index}: used ring slot {slot} returns id {head}, which is not "
                f"a head in flight ({sorted(self._inflight)})"
            )
        self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        total = sum(size for _, size in req.in_bufs)
        want = total if not truncate else min(used_len, total)
        data = bytearray()
        for addr, size in req.in_bufs:
            if len(data) >= want:
                break
            n = min(size, want - len(data))
            if n:
                data += self.qt.memread(addr, n)
        self._free.extend(req.descs)
        if req.block is not None:
            self.device.allocator.free(req.block)
        if self.event_idx and self.auto_used_event:
            self.set_used_event(self.last_used_idx)
        return UsedBuffer(head, used_len, bytes(data))

    def wait_used(self, timeout: float = 5.0, *, truncate: bool = True) -> UsedBuffer:
        """Poll until the device returns a buffer; raise VirtqueueTimeout with the state."""
        self._alive()
        if not self._inflight:
            raise VirtioError(f"queue {self.index}: wait_used with nothing in flight")
        deadline = time.monotonic() + timeout
        delay = 0.0
        while True:
            used = self.poll_used(truncate=truncate)
            if used is not None:
                return used
            if time.monotonic() >= deadline:
                raise VirtqueueTimeout(
                    f"queue {self.index}: no used buffer within {timeout:g}s; {self.describe()}"
                )
            if delay:
                time.sleep(delay)
            delay = min(max(delay * 2, 0.0005), 0.01)

    def describe(self) -> str:
        """Ring and device state in one line, for failure messages."""
        try:
            used_idx = self.used_idx()
            avail_event = self.avail_event() if self.event_idx else None
            status = self.device.status
        except Exception as exc:  # the QEMU may be gone; say so instead
            return f"state unavailable ({exc})"
        text = (
            f"avail.idx={self.avail_idx} used.idx={used_idx} last_used={self.last_used_idx} "
            f"in flight={sorted(self._inflight)} notifications={self.notifications} "
            f"device status={status:#04x}"
        )
        if avail_event is not None:
            text += f" avail_event={avail_event}"
        if status & VIRTIO_CONFIG_S_NEEDS_RESET:
            text += " (DEVICE_NEEDS_RESET)"
        return text


# --- the device -------------------------------------------------------------------------


class VirtioPciDevice:
    """A virtio 1.x PCI function, set up from bare reset state (no firmware ran).

    Construction finds the device, assigns its BARs, enables memory decoding and bus
    mastering, and parses the virtio capabilities; :meth:`init` then runs the device
    initialisation and returns the virtqueues. The individual steps are public so tests
    can stop anywhere (e.g. check FEATURES_OK before DRIVER_OK).
    """

    def __init__(
        self,
        qt: QTest,
        virtio_id: int,
        *,
        bus: int = 0,
        slot: int | None = None,
        allocator: GuestAllocator | None = None,
        mmio_base: int | None = None,
        mmio_size: int = MMIO_WINDOW_PER_FUNCTION,
        io_base: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.qt = qt
        self.virtio_id = virtio_id
        self.timeout = timeout
        self.cfg = find_virtio_pci(qt, virtio_id, bus=bus, slot=slot)
        self.address = self.cfg.address
        self.allocator = allocator or GuestAllocator.for_qtest(qt)
        unit = self.address.slot * 8 + self.address.function
        self.mmio_base = MMIO_WINDOW_BASE + unit * MMIO_WINDOW_PER_FUNCTION
        if mmio_base is not None:
            self.mmio_base = mmio_base
        self.mmio_size = mmio_size
        self.io_base = IO_WINDOW_BASE + unit * IO_WINDOW_PER_FUNCTION
        if io_base is not None:
            self.io_base = io_base
        self.bars: dict[int, Bar] = {}
        self.caps: dict[int, VirtioCap] = {}
        self.features = 0
        self.queues: list[Virtqueue] = []
        self._assign_bars()
        self._parse_caps()

    # -- PCI setup -----------------------------------------------------------------------

    def _assign_bars(self) -> None:
        """Size every BAR (write all-ones, read back), place it in our window, enable."""
        cfg = self.cfg
        command = cfg.read16(PCI_COMMAND)
        cfg.write16(PCI_COMMAND, command & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY))
        mmio_next, mmio_end = self.mmio_base, self.mmio_base + self.mmio_size
        io_next, io_end = self.io_base, self.io_base + IO_WINDOW_PER_FUNCTION
        index = 0
        while index < 6:
            off = PCI_BASE_ADDRESS_0 + 4 * index
            cfg.write32(off, 0xFFFF_FFFF)
            probe = cfg.read32(off)
            if probe in (0, 0xFFFF_FFFF):
                index += 1
                continue
            if probe & 1:
                mask = probe & 0xFFFF_FFFC
                size = mask & -mask
                base = _align(io_next, size)
                if base + size > io_end:
                    raise VirtioError(f"{self.address}: I/O BAR{index} of {size:#x} bytes "
                                      f"does not fit at {io_next:#x}..{io_end:#x}")  # fmt: skip
                cfg.write32(off, base)
                self.bars[index] = Bar(index, base, size, True)
                io_next = base + size
                index += 1
                continue
            is64 = (probe >> 1) & 3 == 2
            mask = probe & 0xFFFF_FFF0
            if is64:
                cfg.write32(off + 4, 0xFFFF_FFFF)
                mask |= cfg.read32(off + 4) << 32
            size = mask & -mask
            base = _align(mmio_next, size)
            if base + size > mmio_end:
                raise VirtioError(
                    f"{self.address}: BAR{index} of {size:#x} bytes does not fit in the MMIO "
                    f"window {self.mmio_base:#x}..{mmio_end:#x}; pass mmio_base/mmio_size"
                )
            cfg.write32(off, base & 0xFFFF_FFFF)
            if is64:
                cfg.write32(off + 4, base >> 32)
            readback = cfg.read32(off) & 0xFFFF_FFF0
            if is64:
                readback |= cfg.read32(off + 4) << 32
            if readback != base:
                raise VirtioError(f"{self.address}: BAR{index} reads back {readback:#x} "
                                  f"after writing {base:#x}")  # fmt: skip
            self.bars[index] = Bar(index, base, size, False, is64, bool(probe & 8))
            mmio_next = base + size
            index += 2 if is64 else 1
        enable = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
        if any(b.is_io for b in self.bars.values()):
            enable |= PCI_COMMAND_IO
        cfg.write16(PCI_COMMAND, command | enable)

    def _parse_caps(self) -> None:
        """Walk the capability list and keep the first virtio cap of each type."""
        cfg = self.cfg
        if not cfg.read16(PCI_STATUS) & PCI_STATUS_CAP_LIST:
            raise VirtioError(f"{self.address}: no PCI capability list (not a modern device)")
        ptr = cfg.read8(PCI_CAPABILITY_LIST) & 0xFC
        for _ in range(48):  # a config space holds at most 48 capabilities; stop loops
            if ptr == 0:
                break
            cap_id, next_ptr = cfg.read8(ptr), cfg.read8(ptr + 1) & 0xFC
            if cap_id == PCI_CAP_ID_VNDR:
                cfg_type, bar_index, cap_id_field = (
                    cfg.read8(ptr + 3), cfg.read8(ptr + 4), cfg.read8(ptr + 5)
                )  # fmt: skip
                offset, length = cfg.read32(ptr + 8), cfg.read32(ptr + 12)
                mult = cfg.read32(ptr + 16) if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG else 0
                if bar_index <= 5 and cfg_type not in self.caps:
                    self.caps[cfg_type] = VirtioCap(
                        cfg_type, bar_index, offset, length, ptr, cap_id_field, mult
                    )
            ptr = next_ptr
        for needed, name in (
            (VIRTIO_PCI_CAP_COMMON_CFG, "common"),
            (VIRTIO_PCI_CAP_NOTIFY_CFG, "notify"),
            (VIRTIO_PCI_CAP_ISR_CFG, "ISR"),
        ):
            if needed not in self.caps:
                raise VirtioError(f"{self.address}: no virtio {name} cfg capability")
            if self.caps[needed].bar not in self.bars:
                raise VirtioError(f"{self.address}: {name} cfg points at unassigned BAR"
                                  f"{self.caps[needed].bar}")  # fmt: skip

    def cap_address(self, cfg_type: int) -> int | None:
        """Guest-physical address of a capability's structure, or None if absent."""
        cap = self.caps.get(cfg_type)
        if cap is None:
            return None
        return self.bars[cap.bar].base + cap.offset

    @property
    def common(self) -> int:
        """Address of struct virtio_pci_common_cfg."""
        addr = self.cap_address(VIRTIO_PCI_CAP_COMMON_CFG)
        assert addr is not None
        return addr

    @property
    def notify_base(self) -> int:
        """Address of the notification area."""
        addr = self.cap_address(VIRTIO_PCI_CAP_NOTIFY_CFG)
        assert addr is not None
        return addr

    @property
    def notify_off_multiplier(self) -> int:
        """Bytes between consecutive queue_notify_off values."""
        return self.caps[VIRTIO_PCI_CAP_NOTIFY_CFG].notify_off_multiplier

    @property
    def isr_addr(self) -> int:
        """Address of the ISR status byte (reading it clears it)."""
        addr = self.cap_address(VIRTIO_PCI_CAP_ISR_CFG)
        assert addr is not None
        return addr

    @property
    def device_cfg(self) -> int | None:
        """Address of the device-specific config, or None (virtio-rng has none)."""
        return self.cap_address(VIRTIO_PCI_CAP_DEVICE_CFG)

    # -- common config -------------------------------------------------------------------

    @property
    def status(self) -> int:
        """device_status as the device reports it."""
        return self.qt.readb(self.common + COMMON_STATUS)

    def set_status(self, value: int) -> None:
        """Write device_status (0 resets the device)."""
        self.qt.writeb(self.common + COMMON_STATUS, value)

    def add_status(self, bits: int) -> int:
        """OR ``bits`` into device_status and return what the device then reports."""
        self.set_status(self.status | bits)
        return self.status

    @property
    def num_queues(self) -> int:
        """How many virtqueues the device has."""
        return self.qt.readw(self.common + COMMON_NUMQ)

    @property
    def config_generation(self) -> int:
        """Changes whenever the device config changes (for consistent multi-read)."""
        return self.qt.readb(self.common + COMMON_CFGGENERATION)

    def device_features(self) -> int:
        """The 64 feature bits the device offers."""
        bits = 0
        for word in (0, 1):
            self.qt.writel(self.common + COMMON_DFSELECT, word)
            bits |= self.qt.readl(self.common + COMMON_DF) << (32 * word)
        return bits

    def driver_features(self) -> int:
        """The feature bits the device recorded as accepted by the driver."""
        bits = 0
        for word in (0, 1):
            self.qt.writel(self.common + COMMON_GFSELECT, word)
            bits |= self.qt.readl(self.common + COMMON_GF) << (32 * word)
        return bits

    def write_driver_features(self, bits: int) -> None:
        """Write the accepted feature bits (both 32-bit halves)."""
        for word in (0, 1):
            self.qt.writel(self.common + COMMON_GFSELECT, word)
            self.qt.writel(self.common + COMMON_GF, (bits >> (32 * word)) & 0xFFFF_FFFF)

    def has_feature(self, n: int) -> bool:
        """Whether feature bit ``n`` was negotiated."""
        return bool(self.features & bit(n))

    def read_isr(self) -> int:
        """Read (and thereby clear) the ISR: bit 0 queue interrupt, bit 1 config change."""
        return self.qt.readb(self.isr_addr)

    def config_read(self, offset: int, size: int) -> bytes:
        """Read device-specific config consistently (retry while the generation moves)."""
        base = self.device_cfg
        if base is None:
            raise VirtioError(f"{self.address}: device has no device-specific config")
        for _ in range(100):
            before = self.config_generation
            data = bytes(self.qt.readb(base + offset + i) for i in range(size))
            if self.config_generation == before:
                return data
        raise VirtioProtocolError(f"{self.address}: config generation never settles")

    # -- initialisation ------------------------------------------------------------------

    def reset(self, timeout: float | None = None) -> None:
        """Write status 0 and wait until the device reads back 0 (spec 4.1.4.3.2).

        In QEMU this stops the device (for vhost-user: the backend's rings are stopped).
        Existing Virtqueue objects become unusable and their memory is reclaimed.
        """
        self.set_status(0)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while (status := self.status) != 0:
            if time.monotonic() > deadline:
                raise VirtioError(f"{self.address}: status still {status:#x} {limit:g}s "
                                  "after reset")  # fmt: skip
            time.sleep(0.001)
        for vq in self.queues:
            vq._kill("the device was reset")
        self.queues = []
        self.features = 0

    def negotiate(self, wanted: int = DEFAULT_FEATURES) -> int:
        """Accept ``wanted & offered``, set FEATURES_OK and check the device kept it."""
        if not wanted & bit(VIRTIO_F_VERSION_1):
            raise VirtioError("this is a virtio 1.x driver: VIRTIO_F_VERSION_1 must be wanted")
        offered = self.device_features()
        if not offered & bit(VIRTIO_F_VERSION_1):
            raise VirtioError(f"{self.address}: device does not offer VIRTIO_F_VERSION_1 "
                              f"(offered {offered:#x})")  # fmt: skip
        accepted = offered & wanted
        self.write_driver_features(accepted)
        status = self.add_status(VIRTIO_CONFIG_S_FEATURES_OK)
        if not status & VIRTIO_CONFIG_S_FEATURES_OK:
            self.add_status(VIRTIO_CONFIG_S_FAILED)
            raise VirtioError(
                f"{self.address}: device rejected features {accepted:#x} (status {status:#x})"
            )
        self.features = accepted
        return accepted

    def setup_queue(self, index: int, size: int | None = None) -> Virtqueue:
        """Allocate and program queue ``index`` (``size`` defaults to the device maximum)."""
        common = self.common
        self.qt.writew(common + COMMON_Q_SELECT, index)
        max_size = self.qt.readw(common + COMMON_Q_SIZE)
        if max_size == 0:
            raise VirtioError(f"{self.address}: queue {index} does not exist (size 0)")
        if size is None:
            size = max_size
        if size <= 0 or size > max_size or size & (size - 1):
            raise ValueError(f"queue size {size} must be a power of two <= {max_size}")
        if self.qt.readw(common + COMMON_Q_ENABLE):
            raise VirtioError(f"{self.address}: queue {index} is already enabled (no reset?)")
        self.qt.writew(common + COMMON_Q_SIZE, size)
        alloc, qt = self.allocator, self.qt
        desc = alloc.alloc(16 * size, 4096)
        avail = alloc.alloc(6 + 2 * size, 4096)
        used = alloc.alloc(6 + 8 * size, 4096)
        qt.memset(desc, 16 * size)
        qt.memset(avail, 6 + 2 * size)
        qt.memset(used, 6 + 8 * size)
        for reg, addr in ((COMMON_Q_DESCLO, desc), (COMMON_Q_AVAILLO, avail),
                          (COMMON_Q_USEDLO, used)):  # fmt: skip
            qt.writel(common + reg, addr & 0xFFFF_FFFF)
            qt.writel(common + reg + 4, addr >> 32)
        qt.writew(common + COMMON_Q_MSIX, VIRTIO_MSI_NO_VECTOR)
        notify_off = qt.readw(common + COMMON_Q_NOFF)
        notify = self.notify_base + notify_off * self.notify_off_multiplier
        qt.writew(common + COMMON_Q_ENABLE, 1)
        if qt.readw(common + COMMON_Q_ENABLE) != 1:
            raise VirtioError(f"{self.address}: queue {index} did not enable")
        vq = Virtqueue(self, index, size, desc, avail, used, notify)
        self.queues.append(vq)
        return vq

    def driver_ok(self) -> None:
        """Set DRIVER_OK (the device goes live; vhost-user backends get their rings)."""
        status = self.add_status(VIRTIO_CONFIG_S_DRIVER_OK)
        if status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) or not (
            status & VIRTIO_CONFIG_S_DRIVER_OK
        ):
            raise VirtioError(f"{self.address}: DRIVER_OK not accepted (status {status:#x})")

    def init(
        self,
        features: int = DEFAULT_FEATURES,
        *,
        queues: int | None = None,
        queue_size: int | None = None,
    ) -> list[Virtqueue]:
        """Full virtio 1.x init: reset, ACKNOWLEDGE, DRIVER, features, queues, DRIVER_OK.

        ``queues`` defaults to every queue the device has. Returns the Virtqueues.
        """
        self.reset()
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE)
        self.add_status(VIRTIO_CONFIG_S_DRIVER)
        self.negotiate(features)
        count = self.num_queues if queues is None else queues
        for index in range(count):
            self.setup_queue(index, queue_size)
        self.driver_ok()
        return list(self.queues)
