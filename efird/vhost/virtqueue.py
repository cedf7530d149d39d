"""Split virtqueues (virtio 1.2 §2.7), device side.

Ring addresses are the frontend's userspace addresses and are re-translated whenever the
memory table changes (`GuestMemory.generation`); descriptor addresses are guest-physical.
Every descriptor chain is validated before anything is read: in-range addresses, no
loops, readable before writable, at most one level of indirection, bounded length.

Memory ordering: efird reads avail->idx before the ring entries and descriptors it
covers, and writes used ring entries before used->idx. On x86 (TSO) program order is
that order. The two indices efird writes while the driver may be reading them, used->idx
and avail_event, are each one 16-bit store (`_Index`): struct.pack_into clears a field
before it fills it in, so a driver polling used->idx would now and then see 0 there.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from efird.vhost.memory import GuestMemory, GuestMemoryError

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
DESC_SIZE = DESC.size
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
AVAIL_F_NO_INTERRUPT = 1
MAX_QUEUE_SIZE = 32768
MAX_INDIRECT = 1024
DEFAULT_MAX_REQUEST = 1 << 20  # bytes a request chain may carry (efird serve --max-request-size)


class ChainError(Exception):
    """A descriptor chain the device must not follow."""


@dataclass(frozen=True)
class Chain:
    head: int
    readable: tuple[tuple[int, int], ...]  # (gpa, length)
    writable: tuple[tuple[int, int], ...]

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


class _Index:
    """A little-endian 16-bit ring index in guest memory, written with one aligned store
    (a memoryview item assignment is a single native access), so that the other side
    only ever sees the old value or the new one."""

    __slots__ = ("_cell",)
    _SWAP = sys.byteorder != "little"

    def __init__(self, ring: memoryview, offset: int) -> None:
        self._cell = ring[offset : offset + 2].cast("H")

    def store(self, value: int) -> None:
        self._cell[0] = ((value & 0xFF) << 8 | value >> 8) if self._SWAP else value

    def release(self) -> None:
        self._cell.release()


def need_event(event: int, new: int, old: int) -> bool:
    """virtio's vring_need_event, in 16-bit arithmetic."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class Virtqueue:
    def __init__(self, index: int, memory: GuestMemory, max_request: int = DEFAULT_MAX_REQUEST
                 ) -> None:
        self.index = index
        self.memory = memory
        self.num = 0
        self.desc_uva = self.avail_uva = self.used_uva = 0
        self.has_addresses = False
        self.last_avail_idx = 0
        self.used_idx = 0
        self.signalled_used: int | None = None
        self.event_idx = False
        self.indirect = False
        self.max_request = max_request
        self._generation = -1
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        self._used_idx_field: _Index | None = None  # used->idx
        self._avail_event_field: _Index | None = None  # used ring's avail_event (EVENT_IDX)

    # -- set-up --------------------------------------------------------------------
    def set_num(self, num: int) -> None:
        if not 0 < num <= MAX_QUEUE_SIZE or num & (num - 1):
            raise ChainError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.num = num
        self._generation = -1

    def set_addresses(self, desc: int, used: int, avail: int) -> None:
        self.desc_uva, self.used_uva, self.avail_uva = desc, used, avail
        self.has_addresses = True
        self._generation = -1

    def drop_views(self) -> None:
        for index in (self._used_idx_field, self._avail_event_field):
            if index is not None:
                index.release()
        self._used_idx_field = self._avail_event_field = None
        for v in (self._desc, self._avail, self._used):
            if v is not None:
                v.release()
        self._desc = self._avail = self._used = None
        self._generation = -1

    def _views(self) -> tuple[memoryview, memoryview, memoryview]:
        if self._generation != self.memory.generation or self._desc is None:
            self.drop_views()
            if not self.has_addresses or not self.num:
                raise GuestMemoryError(f"queue {self.index} has no ring addresses")
            n = self.num
            self._check_layout(n)
            self._desc = self.memory.uva_view(self.desc_uva, DESC_SIZE * n)
            self._avail = self.memory.uva_view(self.avail_uva, 6 + 2 * n)
            self._used = self.memory.uva_view(self.used_uva, 6 + 8 * n)
            self._used_idx_field = _Index(self._used, 2)
            self._avail_event_field = _Index(self._used, 4 + 8 * n)
            self._generation = self.memory.generation
        assert self._avail is not None and self._used is not None
        return self._desc, self._avail, self._used

    def _check_layout(self, n: int) -> None:
        """The used ring, the only part efird writes, must not overlap what it reads (the
        descriptor table, the available ring): pushing a used entry would then rewrite the
        driver's side, e.g. avail->idx, and a used ring on top of the available ring makes
        every completion offer the chain again, so the ring would never drain."""
        used_end = self.used_uva + 6 + 8 * n
        for start, size, what in ((self.desc_uva, DESC_SIZE * n, "descriptor table"),
                                  (self.avail_uva, 6 + 2 * n, "available ring")):
            if self.used_uva < start + size and start < used_end:
                raise ChainError(f"queue {self.index}: the used ring overlaps the {what}")

    def sync_used_idx(self) -> None:
        """Take used->idx from guest memory (a ring (re)started after a reconnect)."""
        _, _, used = self._views()
        self.used_idx = U16.unpack_from(used, 2)[0]
        self.signalled_used = None

    # -- the ring ------------------------------------------------------------------
    def avail_idx(self) -> int:
        _, avail, _ = self._views()
        return int(U16.unpack_from(avail, 2)[0])

    def pending(self) -> int:
        return (self.avail_idx() - self.last_avail_idx) & 0xFFFF

    def pop_head(self) -> int | None:
        """The next head the driver made available, or None."""
        _, avail, _ = self._views()
        end = U16.unpack_from(avail, 2)[0]
        if end == self.last_avail_idx:
            return None
        if (end - self.last_avail_idx) & 0xFFFF > self.num:
            raise ChainError(f"queue {self.index}: avail idx {end} runs more than a ring ahead")
        head = int(U16.unpack_from(avail, 4 + 2 * (self.last_avail_idx % self.num))[0])
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        return head

    def walk(self, head: int) -> Chain:
        """Validate and describe one chain (never reads the buffers themselves)."""
        desc, _, _ = self._views()
        if head >= self.num:
            raise ChainError(f"head {head} outside a queue of {self.num}")
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        table, table_size, index, seen, indirect = desc, self.num, head, 0, False
        total = 0
        while True:
            seen += 1
            if seen > table_size:
                raise ChainError("descriptor chain loops or is longer than its table")
            addr, length, flags, nxt = DESC.unpack_from(table, DESC_SIZE * index)
            if flags & F_INDIRECT:
                if indirect:
                    raise ChainError("indirect descriptor inside an indirect table")
                if not self.indirect:
                    raise ChainError("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
                if flags & F_NEXT:
                    raise ChainError("indirect descriptor with NEXT set")
                if length % DESC_SIZE or not 0 < length // DESC_SIZE <= MAX_INDIRECT:
                    raise ChainError(f"indirect table of {length} bytes")
                table = self.memory.view(addr, length)
                table_size, index, seen, indirect = length // DESC_SIZE, 0, 0, True
                continue
            self.memory.view(addr, length)  # bounds check now, read later
            total += length
            if total > self.max_request:
                raise ChainError(f"chain longer than {self.max_request} bytes")
            if flags & F_WRITE:
                writable.append((addr, length))
            elif writable:
                raise ChainError("device-readable descriptor after a writable one")
            else:
                readable.append((addr, length))
            if not flags & F_NEXT:
                break
            if nxt >= table_size:
                raise ChainError(f"next {nxt} outside a table of {table_size}")
            index = nxt
        return Chain(head, tuple(readable), tuple(writable))

    def read_request(self, chain: Chain) -> bytes:
        """The device-readable bytes, copied out of guest memory once."""
        if len(chain.readable) == 1:
            return self.memory.read(*chain.readable[0])
        return b"".join(self.memory.read(a, n) for a, n in chain.readable)

    def write_response(self, chain: Chain, data: bytes | bytearray) -> int:
        """Scatter `data` over the writable descriptors; returns bytes written."""
        done = 0
        for addr, length in chain.writable:
            if done >= len(data):
                break
            piece = data[done : done + length]
            self.memory.write(addr, piece)
            done += len(piece)
        return done

    def push_used(self, head: int, length: int) -> None:
        _, _, used = self._views()
        # the element's slot is beyond used->idx: the driver does not read it yet
        USED_ELEM.pack_into(used, 4 + 8 * (self.used_idx % self.num), head, length)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        assert self._used_idx_field is not None
        self._used_idx_field.store(self.used_idx)

    def set_avail_event(self) -> None:
        """Ask for a kick when the driver adds past what efird has consumed (EVENT_IDX)."""
        if self.event_idx:
            self._views()
            assert self._avail_event_field is not None
            self._avail_event_field.store(self.last_avail_idx)

    def should_notify(self, old_used: int) -> bool:
        """Does the driver want an interrupt for used entries old_used..used_idx?"""
        if self.used_idx == old_used:
            return False
        _, avail, _ = self._views()
        if self.event_idx:
            event = U16.unpack_from(avail, 4 + 2 * self.num)[0]
            return need_event(event, self.used_idx, old_used)
        return not U16.unpack_from(avail, 0)[0] & AVAIL_F_NO_INTERRUPT
