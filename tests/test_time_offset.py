"""The guest clock's offset from the host clock over the whole EFI_TIME range (years
1900-9999, protocols/PROTOCOL.md §5.2): SetTime -> GetTime round trips at both ends, the
offset's store record (an int64 while it fits, the only form older efird wrote, else an
int128), stores written in the old form, and migration of a large offset through
save-state/restore-state.

Regression for the fuzz finding settime-offset-overflows-int64
(tests/test_fuzz_regressions.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.control.domain_handler import DomainControl
from efird.control.protocol import ControlError
from efird.device import EnvelopeDevice
from efird.domain import Domain
from efird.efi import guid as g
from efird.efi.status import Status
from efird.efi.time import EfiTime
from efird.platform.time_service import MAX_OFFSET_NS, META_OFFSET
from efird.store.sqlite import SqliteStore

from .conftest import Guest

TIME = struct.Struct("<16sIIB7x")  # EFIRD_TIME_ACCESS
HOST_NOW = 1_795_600_000_123_456_789  # the host clock, frozen (late 2026)
NS = 1_000_000_000
LAST = EfiTime(9999, 12, 31, 23, 59, 59, nanosecond=NS - 1, timezone=1440, daylight=3)
FIRST = EfiTime(1900, 1, 1, 0, 0, 0, nanosecond=0, timezone=-1440, daylight=0)


def open_domain(path: Path, clock: int = HOST_NOW) -> tuple[Domain, Guest]:
    d = Domain(SqliteStore(path))
    d.time.clock = lambda: clock
    return d, Guest(d)


def set_time(guest: Guest, t: EfiTime) -> Status:
    request = c.envelope(g.EFIRD_TIME_SERVICE,
                         struct.pack("<QQ", 2, 0) + TIME.pack(t.pack(), 0, 0, 0))
    return c.return_status(guest.raw(request))


def get_time(guest: Guest) -> EfiTime:
    response = guest.raw(c.envelope(g.EFIRD_TIME_SERVICE,
                                    struct.pack("<QQ", 1, 0) + bytes(TIME.size)))
    assert c.return_status(response) is Status.SUCCESS
    return EfiTime.unpack(TIME.unpack_from(response, 40)[0])


def offset_record(path: Path) -> bytes | None:
    store = SqliteStore(path, exclusive=False)
    try:
        return store.get_meta(META_OFFSET)
    finally:
        store.close()


@pytest.mark.parametrize("t", [
    LAST, FIRST, EfiTime(9999, 6, 1, 12), EfiTime(4072, 2, 29, 23, 59, 58, nanosecond=7),
    EfiTime(2318, 1, 1), EfiTime(1900, 3, 1, nanosecond=999_999_999)],
    ids=["last-ns-of-9999", "first-ns-of-1900", "9999", "fuzz-4072", "2318", "1900"])
def test_set_time_get_time_round_trip_and_restart(tmp_path: Path, t: EfiTime) -> None:
    d, guest = open_domain(tmp_path / "vm.efivars")
    assert set_time(guest, t) is Status.SUCCESS
    assert get_time(guest) == t  # to the nanosecond, TimeZone and Daylight included
    d.close()
    d, guest = open_domain(tmp_path / "vm.efivars")  # a daemon restart keeps it
    assert get_time(guest) == t
    d.close()


def test_the_offset_record_is_an_int64_while_it_fits(tmp_path: Path) -> None:
    path = tmp_path / "vm.efivars"
    d, guest = open_domain(path)
    assert set_time(guest, EfiTime(2200, 1, 1)) is Status.SUCCESS
    d.close()
    near = offset_record(path)
    assert near is not None and len(near) == 8  # what every efird reads
    d, guest = open_domain(path)
    assert set_time(guest, EfiTime(9999, 1, 1)) is Status.SUCCESS
    d.close()
    far = offset_record(path)
    assert far is not None and len(far) == 16
    assert int.from_bytes(far, "little", signed=True) > 1 << 63
    d, guest = open_domain(path)
    assert set_time(guest, FIRST) is Status.SUCCESS  # ~126 years back: an int64 again
    d.close()
    back = offset_record(path)
    assert back is not None and len(back) == 8
    assert struct.unpack("<q", back)[0] < 0


def test_a_store_with_the_old_int64_offset_loads(tmp_path: Path) -> None:
    """A store as efird wrote it before: the offset an int64 of nanoseconds."""
    path = tmp_path / "vm.efivars"
    old_offset = -(86_400 * 365 * 50) * NS - 123  # fifty years back, to the nanosecond
    store = SqliteStore(path)
    store.commit(meta={META_OFFSET: struct.pack("<q", old_offset)})
    store.close()
    d, guest = open_domain(path)
    assert d.time.offset_ns == old_offset
    expected = dt.datetime(1970, 1, 1) + dt.timedelta(
        microseconds=(HOST_NOW + old_offset) // 1000)
    t = get_time(guest)
    assert (t.year, t.month, t.day, t.hour, t.minute, t.second) == (
        expected.year, expected.month, expected.day, expected.hour, expected.minute,
        expected.second)
    assert t.nanosecond == (HOST_NOW + old_offset) % NS
    # and it keeps working: a far SetTime writes the wide form over it
    assert set_time(guest, LAST) is Status.SUCCESS and get_time(guest) == LAST
    d.close()
    d, guest = open_domain(path)
    assert get_time(guest) == LAST
    d.close()


def test_the_clock_stops_at_the_ends_of_the_efi_range(tmp_path: Path) -> None:
    """Set to the last second of 9999, the guest clock does not run into year 10000 (which
    no EFI_TIME can hold); set to 1900 on a host whose clock then goes back, it does not
    fall before 1900."""
    d, guest = open_domain(tmp_path / "vm.efivars")
    assert set_time(guest, EfiTime(9999, 12, 31, 23, 59, 59)) is Status.SUCCESS
    d.time.clock = lambda: HOST_NOW + 3600 * NS
    t = get_time(guest)
    assert (t.year, t.month, t.day, t.hour, t.minute, t.second, t.nanosecond) == (
        9999, 12, 31, 23, 59, 59, NS - 1)
    assert t.is_valid()
    assert set_time(guest, FIRST) is Status.SUCCESS
    d.time.clock = lambda: HOST_NOW - 3600 * NS
    assert get_time(guest) == EfiTime(1900, 1, 1, timezone=FIRST.timezone)
    d.close()


async def test_migration_carries_a_large_offset(tmp_path: Path) -> None:
    source, guest = open_domain(tmp_path / "src.efivars")
    assert set_time(guest, LAST) is Status.SUCCESS
    blob = await DomainControl("vm1", source, EnvelopeDevice(source), lambda: None).save_state()
    assert json.loads(blob)["state"]["clock"]["offset_ns"] == source.time.offset_ns > 1 << 63
    source.close()
    target, guest = open_domain(tmp_path / "dst.efivars")
    await DomainControl("vm1", target, EnvelopeDevice(target), lambda: None).restore_state(blob)
    assert get_time(guest) == LAST
    target.close()
    record = offset_record(tmp_path / "dst.efivars")  # durable on the target
    assert record is not None and len(record) == 16
    target, guest = open_domain(tmp_path / "dst.efivars")
    assert get_time(guest) == LAST
    target.close()


@pytest.mark.parametrize("offset", [MAX_OFFSET_NS + 1, -MAX_OFFSET_NS - 1, 10**400,
                                    float("inf")],
                         ids=["max+1", "-max-1", "10**400", "Infinity"])
async def test_restore_refuses_an_offset_no_clock_can_have(tmp_path: Path,
                                                           offset: object) -> None:
    """Checked before anything changes; Infinity is a number to Python's json."""
    source, _ = open_domain(tmp_path / "src.efivars")
    outer = json.loads(await DomainControl("vm1", source, EnvelopeDevice(source),
                                           lambda: None).save_state())
    source.close()
    outer["state"]["clock"]["offset_ns"] = offset
    outer["sha256"] = hashlib.sha256(json.dumps(outer["state"], sort_keys=True).encode()
                                     ).hexdigest()
    target, guest = open_domain(tmp_path / "dst.efivars")
    before = get_time(guest)
    with pytest.raises(ControlError) as refused:
        await DomainControl("vm1", target, EnvelopeDevice(target), lambda: None
                            ).restore_state(json.dumps(outer).encode())
    assert refused.value.code == "bad-state"
    assert get_time(guest) == before
    target.close()
    assert offset_record(tmp_path / "dst.efivars") is None
