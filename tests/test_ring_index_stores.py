"""The ring indices efird writes while the driver reads them go from the old value to the
new one in one store (virtio 1.2 §2.7.8: used->idx only ever increases).

Regression for the 2,000-round crash-consistency run (tests/test_crash_consistency.py):
the test frontend now and then read used->idx 0 from a freshly started daemon ("used idx
0 is 65k entries past the last one seen") and re-reading a moment later gave the right
value. efird wrote used->idx and avail_event with struct.pack_into, which clears the
field before it fills it in; a driver polling the ring on another CPU saw the 0 in
between, more often the busier the machine (a preempted daemon widens the window).

The race is made deterministic here: the new index is an object whose __index__ runs
while efird is in the middle of writing it (struct and memoryview both call it to get
the C integer) and reads the field through a second mapping of the guest memory, as the
driver does.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterator

import pytest

from efird.vhost.memory import GuestMemory, map_region
from efird.vhost.virtqueue import Virtqueue

RAM = 1 << 16
UVA = 0x7F00_0000_0000
NUM = 8
DESC_AT, AVAIL_AT, USED_AT = 0x1000, 0x2000, 0x3000
USED_IDX_AT = USED_AT + 2
AVAIL_EVENT_AT = USED_AT + 4 + 8 * NUM


class DriverView:
    """The guest memory as the driver maps it: its own mapping of the same memfd."""

    def __init__(self, fd: int) -> None:
        self._mm = mmap.mmap(fd, RAM)

    def u16(self, gpa: int) -> int:
        return int(struct.unpack_from("<H", self._mm, gpa)[0])

    def used_elem(self, slot: int) -> tuple[int, int]:
        head, length = struct.unpack_from("<II", self._mm, USED_AT + 4 + 8 * slot)
        return head, length

    def set_u16(self, gpa: int, value: int) -> None:
        self._mm[gpa : gpa + 2] = struct.pack("<H", value)

    def close(self) -> None:
        self._mm.close()


class Watched:
    """A ring index that, when efird converts it to a C integer to store it, lets `look`
    record what the driver reads at that moment."""

    def __init__(self, value: int, look: Callable[[], None]) -> None:
        self.value, self.look = value, look

    def __index__(self) -> int:
        self.look()
        return self.value

    def __add__(self, other: int) -> Watched:
        return Watched(self.value + other, self.look)

    def __and__(self, other: int) -> Watched:
        return Watched(self.value & other, self.look)

    def __mod__(self, other: int) -> int:
        return self.value % other


@pytest.fixture
def ring() -> Iterator[tuple[Virtqueue, DriverView]]:
    fd = os.memfd_create("guest")
    os.ftruncate(fd, RAM)
    memory = GuestMemory()
    memory.add(map_region(fd, 0, RAM, UVA, 0))
    driver = DriverView(fd)
    os.close(fd)
    vq = Virtqueue(0, memory)
    vq.set_num(NUM)
    vq.set_addresses(UVA + DESC_AT, UVA + USED_AT, UVA + AVAIL_AT)
    yield vq, driver
    vq.drop_views()
    memory.clear()
    driver.close()


@pytest.mark.parametrize("before", [29, 0xFF, 0xFFFF])
def test_the_driver_never_sees_used_idx_cleared(ring: tuple[Virtqueue, DriverView],
                                                before: int) -> None:
    vq, driver = ring
    driver.set_u16(USED_IDX_AT, before)
    vq.sync_used_idx()
    seen: list[int] = []
    watched = Watched(before, lambda: seen.append(driver.u16(USED_IDX_AT)))
    vq.used_idx = watched  # type: ignore[assignment]
    vq.push_used(3, 16)
    after = (before + 1) & 0xFFFF
    assert seen and set(seen) <= {before, after}, (
        f"the driver read used->idx {seen} while efird moved it from {before} to {after}")
    assert driver.u16(USED_IDX_AT) == after
    assert driver.used_elem(before % NUM) == (3, 16)


@pytest.mark.parametrize("before", [4, 0xFF])
def test_the_driver_never_sees_avail_event_cleared(ring: tuple[Virtqueue, DriverView],
                                                   before: int) -> None:
    """A 0 there makes vring_need_event answer "no kick needed" for a kick that is: the
    request would wait until the next one came along."""
    vq, driver = ring
    vq.event_idx = True
    driver.set_u16(AVAIL_EVENT_AT, before)
    seen: list[int] = []
    watched = Watched(before + 1, lambda: seen.append(driver.u16(AVAIL_EVENT_AT)))
    vq.last_avail_idx = watched  # type: ignore[assignment]
    vq.set_avail_event()
    assert seen and set(seen) <= {before, before + 1}, (
        f"the driver read avail_event {seen} while efird moved it from {before}")
    assert driver.u16(AVAIL_EVENT_AT) == before + 1
