"""Split-virtqueue handling over a fake guest memory: chains are validated before any
buffer is read (virtio 1.2 §2.7), and GuestMemory refuses every out-of-range access."""

from __future__ import annotations

import os
import struct

import pytest

from efird.vhost.memory import GuestMemory, GuestMemoryError, map_region
from efird.vhost.virtqueue import (
    DESC,
    F_INDIRECT,
    F_NEXT,
    F_WRITE,
    ChainError,
    Virtqueue,
    need_event,
)

RAM = 1 << 20
UVA = 0x7F00_0000_0000
NUM = 8
DESC_AT, AVAIL_AT, USED_AT, BUF_AT = 0x1000, 0x2000, 0x3000, 0x10000


@pytest.fixture
def vq() -> Virtqueue:
    fd = os.memfd_create("guest")
    os.ftruncate(fd, RAM + 0x1000)
    memory = GuestMemory()
    memory.add(map_region(fd, 0, RAM, UVA, 0x1000))  # mapped at a non-zero mmap_offset
    os.close(fd)
    q = Virtqueue(0, memory)
    q.set_num(NUM)
    q.set_addresses(UVA + DESC_AT, UVA + USED_AT, UVA + AVAIL_AT)
    q.indirect = True
    return q


def desc(q: Virtqueue, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
         table: int = DESC_AT) -> None:
    q.memory.write(table + 16 * i, DESC.pack(addr, length, flags, nxt))


def publish(q: Virtqueue, *heads: int) -> None:
    (idx,) = struct.unpack("<H", q.memory.read(AVAIL_AT + 2, 2))
    for h in heads:
        q.memory.write(AVAIL_AT + 4 + 2 * (idx % NUM), struct.pack("<H", h))
        idx += 1
    q.memory.write(AVAIL_AT + 2, struct.pack("<H", idx & 0xFFFF))


def test_request_and_response_round_trip(vq: Virtqueue) -> None:
    vq.memory.write(BUF_AT, b"request!")
    desc(vq, 0, BUF_AT, 8, F_NEXT, 1)
    desc(vq, 1, BUF_AT + 0x100, 4, F_WRITE | F_NEXT, 2)
    desc(vq, 2, BUF_AT + 0x200, 4, F_WRITE)
    publish(vq, 0)
    head = vq.pop_head()
    chain = vq.walk(head)
    assert vq.read_request(chain) == b"request!"
    assert vq.write_response(chain, b"ABCDEFG") == 7
    assert vq.memory.read(BUF_AT + 0x100, 4) == b"ABCD"
    assert vq.memory.read(BUF_AT + 0x200, 3) == b"EFG"
    vq.push_used(head, 7)
    assert struct.unpack("<HHII", vq.memory.read(USED_AT, 12)) == (0, 1, 0, 7)
    assert vq.pop_head() is None


def test_indirect_table(vq: Virtqueue) -> None:
    table = BUF_AT + 0x1000
    desc(vq, 0, BUF_AT, 4, table=table, flags=F_NEXT, nxt=1)
    desc(vq, 1, BUF_AT + 0x100, 4, table=table, flags=F_WRITE)
    desc(vq, 3, table, 32, F_INDIRECT)
    chain = vq.walk(3)
    assert chain.readable == ((BUF_AT, 4),) and chain.writable == ((BUF_AT + 0x100, 4),)


@pytest.mark.parametrize("case", ["loop", "out_of_range", "overflow", "read_after_write",
                                  "nested_indirect", "indirect_with_next", "bad_next",
                                  "huge_indirect", "too_long"])
def test_hostile_chains_are_refused(vq: Virtqueue, case: str) -> None:
    table = BUF_AT + 0x1000
    if case == "loop":
        desc(vq, 0, BUF_AT, 4, F_NEXT, 1)
        desc(vq, 1, BUF_AT, 4, F_NEXT, 0)
    elif case == "out_of_range":
        desc(vq, 0, RAM - 2, 4)
    elif case == "overflow":
        desc(vq, 0, 2**64 - 2, 4)
    elif case == "read_after_write":
        desc(vq, 0, BUF_AT, 4, F_WRITE | F_NEXT, 1)
        desc(vq, 1, BUF_AT, 4)
    elif case == "nested_indirect":
        desc(vq, 0, table + 0x100, 16, F_INDIRECT, table=table)
        desc(vq, 0, table, 16, F_INDIRECT)
    elif case == "indirect_with_next":
        desc(vq, 0, table, 16, F_INDIRECT | F_NEXT, 1)
    elif case == "bad_next":
        desc(vq, 0, BUF_AT, 4, F_NEXT, NUM)
    elif case == "huge_indirect":
        desc(vq, 0, table, 16 * 4096, F_INDIRECT)
    elif case == "too_long":
        vq.max_request = 64
        desc(vq, 0, BUF_AT, 65)
    with pytest.raises((ChainError, GuestMemoryError)):
        vq.walk(0)


def test_head_outside_the_queue(vq: Virtqueue) -> None:
    with pytest.raises(ChainError):
        vq.walk(NUM)


def test_indirect_needs_the_feature(vq: Virtqueue) -> None:
    vq.indirect = False
    desc(vq, 0, BUF_AT + 0x1000, 16, F_INDIRECT)
    with pytest.raises(ChainError, match="INDIRECT_DESC"):
        vq.walk(0)


def test_avail_index_running_ahead_is_refused(vq: Virtqueue) -> None:
    vq.memory.write(AVAIL_AT + 2, struct.pack("<H", NUM + 1))
    with pytest.raises(ChainError):
        vq.pop_head()


def test_rings_follow_memory_table_changes(vq: Virtqueue) -> None:
    """QEMU removes and re-adds the region holding the rings during bring-up."""
    publish(vq, 5)
    region = vq.memory.regions[0]
    assert vq.avail_idx() == 1
    vq.memory.remove(region.gpa, region.size, region.uva)
    with pytest.raises(GuestMemoryError):
        vq.avail_idx()
    fd = os.memfd_create("guest2")
    os.ftruncate(fd, RAM)
    vq.memory.add(map_region(fd, 0, RAM, UVA, 0))
    os.close(fd)
    assert vq.avail_idx() == 0  # the new mapping, not a stale one


def test_guest_memory_bounds() -> None:
    fd = os.memfd_create("g")
    os.ftruncate(fd, 0x2000)
    m = GuestMemory()
    m.add(map_region(fd, 0x1000, 0x1000, UVA, 0x1000))
    with pytest.raises(GuestMemoryError, match="overlaps"):
        m.add(map_region(fd, 0x1800, 0x100, UVA, 0))
    os.close(fd)
    for addr, n in ((0, 1), (0xFFF, 2), (0x1FFF, 2), (0x2000, 1), (2**64 - 1, 2)):
        with pytest.raises(GuestMemoryError):
            m.read(addr, n)
    m.write(0x1FFF, b"x")
    assert m.read(0x1FFF, 1) == b"x"
    assert m.uva_view(UVA + 0xFFF, 1).tobytes() == b"x"


def test_need_event_wraps() -> None:
    assert need_event(0, 1, 0)
    assert not need_event(5, 3, 0)
    assert need_event(0xFFFF, 0, 0xFFFE)
    assert not need_event(10, 9, 8)
