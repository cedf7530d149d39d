"""The time services (UEFI 2.10 §8.3, §8.5.2 GetNextHighMonotonicCount) and ResetSystem
(§8.5.1) through envelopes (protocols/PROTOCOL.md §5.2)."""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.bootmem.description import q35
from efird.domain import Domain
from efird.efi import guid as g
from efird.efi.status import Status
from efird.efi.time import EfiTime
from efird.store.sqlite import SqliteStore

from .conftest import BS_RT, NV_BS, Guest

S = Status
TIME = struct.Struct("<16sIIB7x")
WAKE = struct.Struct("<BB6x16s")


def open_domain(path: Path) -> tuple[Domain, Guest]:
    d = Domain(SqliteStore(path), memory_map=q35(1024))
    return d, Guest(d)


def time_call(guest: Guest, function: int, data: bytes) -> tuple[Status, bytes]:
    resp = guest.raw(c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", function, 0) + data))
    return c.return_status(resp), resp[40:]


def get_time(guest: Guest) -> tuple[EfiTime, int, int, int]:
    status, data = time_call(guest, 1, bytes(TIME.size))
    assert status is S.SUCCESS
    raw, resolution, accuracy, sets_to_zero = TIME.unpack_from(data)
    return EfiTime.unpack(raw), resolution, accuracy, sets_to_zero


def set_time(guest: Guest, t: EfiTime) -> Status:
    return time_call(guest, 2, TIME.pack(t.pack(), 0, 0, 0))[0]


def test_get_time_is_host_utc_with_capabilities(tmp_path: Path) -> None:
    d, guest = open_domain(tmp_path / "s")
    now, resolution, accuracy, sets_to_zero = get_time(guest)
    host = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    seen = dt.datetime(now.year, now.month, now.day, now.hour, now.minute, now.second)
    assert abs((seen - host).total_seconds()) < 5
    assert now.timezone == 0x07FF and (resolution, accuracy, sets_to_zero) == (10**9, 10**6, 0)
    d.close()


def test_set_time_moves_the_domains_clock_and_persists(tmp_path: Path) -> None:
    d, guest = open_domain(tmp_path / "s")
    assert set_time(guest, EfiTime(2031, 7, 4, 12, 30, 0, timezone=-300, daylight=1)) \
        is S.SUCCESS
    t = get_time(guest)[0]
    assert (t.year, t.month, t.day, t.hour, t.timezone, t.daylight) == (2031, 7, 4, 12, -300, 1)
    d.close()
    d, guest = open_domain(tmp_path / "s")  # a daemon restart keeps the offset
    t = get_time(guest)[0]
    assert (t.year, t.month, t.day, t.timezone) == (2031, 7, 4, -300)
    d.close()


@pytest.mark.parametrize("bad", [
    EfiTime(2026, 13, 1), EfiTime(2026, 2, 29), EfiTime(2026, 1, 32), EfiTime(1899, 1, 1),
    EfiTime(2026, 1, 1, 24), EfiTime(2026, 1, 1, 0, 60), EfiTime(2026, 1, 1, 0, 0, 60),
    EfiTime(2026, 1, 1, nanosecond=10**9), EfiTime(2026, 1, 1, timezone=1441),
    EfiTime(2026, 1, 1, daylight=4),
])
def test_invalid_times_are_invalid_parameter(tmp_path: Path, bad: EfiTime) -> None:
    """UEFI 2.10 §8.3.2 SetTime / §8.3.4 SetWakeupTime: every EFI_TIME field is checked."""
    d, guest = open_domain(tmp_path / "s")
    assert set_time(guest, bad) is S.INVALID_PARAMETER
    assert time_call(guest, 4, WAKE.pack(1, 0, bad.pack()))[0] is S.INVALID_PARAMETER
    d.close()


def test_wakeup_alarm(tmp_path: Path) -> None:
    d, guest = open_domain(tmp_path / "s")
    status, data = time_call(guest, 3, bytes(WAKE.size))
    assert status is S.SUCCESS and WAKE.unpack_from(data)[:2] == (0, 0)
    soon = d.time.now()
    assert time_call(guest, 4, WAKE.pack(1, 0, soon.pack()))[0] is S.SUCCESS
    enabled, pending, raw = WAKE.unpack_from(time_call(guest, 3, bytes(WAKE.size))[1])
    assert (enabled, pending, EfiTime.unpack(raw)) == (1, 0, soon)
    assert d.time.alarm_due() and not d.time.alarm_due()  # fires once, then pending
    assert WAKE.unpack_from(time_call(guest, 3, bytes(WAKE.size))[1])[1] == 1
    assert time_call(guest, 4, WAKE.pack(0, 0, bytes(16)))[0] is S.SUCCESS  # disable
    assert WAKE.unpack_from(time_call(guest, 3, bytes(WAKE.size))[1])[:2] == (0, 0)
    d.close()


def test_high_monotonic_count_increases_across_restarts(tmp_path: Path) -> None:
    seen = []
    for _ in range(3):
        d, guest = open_domain(tmp_path / "s")
        for _ in range(3):
            status, data = time_call(guest, 5, bytes(8))
            assert status is S.SUCCESS
            seen.append(struct.unpack_from("<I", data)[0])
        d.close()
    assert seen == sorted(set(seen)) and seen[0] == 1


def reset(guest: Guest, kind: int, data: bytes = b"") -> Status:
    return c.return_status(guest.raw(c.envelope(
        g.EFIRD_RESET_SERVICE, struct.pack("<QQ", 1, 0) + struct.pack("<IIQQ", kind, 0, 5,
                                                                      len(data)) + data)))


def test_cold_and_warm_reset_clear_volatile_state(tmp_path: Path) -> None:
    d, guest = open_domain(tmp_path / "s")
    events: list[tuple[str, dict[str, object]]] = []
    d.listeners.append(lambda kind, data: events.append((kind, data)))
    for kind in (0, 1):
        guest.set("Nv", b"kept", NV_BS)
        guest.set("Vol", b"gone", BS_RT)
        guest.raw(c.allocate_pages(0, 2, 1))
        guest.exit_boot_services()
        assert reset(guest, kind) is S.SUCCESS
        assert guest.get("Nv").data == b"kept"  # boot phase again: BS variables visible
        assert guest.get("Vol").status is S.NOT_FOUND
        assert c.parse_get_memory_map(guest.raw(c.get_memory_map(4096)))[0] is S.SUCCESS
    assert [e[0] for e in events] == ["reset", "reset"]
    assert events[0][1]["type"] == "cold" and events[1][1]["type"] == "warm"
    d.close()


def test_shutdown_and_platform_specific_reset(tmp_path: Path) -> None:
    d, guest = open_domain(tmp_path / "s")
    events: list[tuple[str, dict[str, object]]] = []
    d.listeners.append(lambda kind, data: events.append((kind, data)))
    assert reset(guest, 2) is S.SUCCESS
    reason = "firmware update".encode("utf-16-le") + b"\0\0"
    assert reset(guest, 3, reason) is S.INVALID_PARAMETER  # no GUID after the string
    vendor = g.guid_bytes("9a4e8e2d-4e3c-4f1a-8b0d-0c1e2f3a4b5c")
    assert reset(guest, 3, reason + vendor) is S.SUCCESS
    assert reset(guest, 7) is S.INVALID_PARAMETER
    assert [e[0] for e in events] == ["shutdown", "reset"]
    assert events[1][1]["guid"] == "9a4e8e2d-4e3c-4f1a-8b0d-0c1e2f3a4b5c"
    assert events[1][1]["data"] == "firmware update"
    d.close()
