"""The time services (UEFI 2.10 §8.3, and GetNextHighMonotonicCount §8.5.2).

The guest's clock is the host's UTC clock plus a per-domain offset that SetTime moves;
TimeZone and Daylight are kept as the guest set them. The offset, the wakeup alarm and
the high monotonic count persist in the store, so they survive daemon restarts.

The offset is in nanoseconds and can be thousands of years (EFI years run from 1900 to
9999), beyond an int64. Its record is a signed little-endian integer: 8 bytes while the
offset fits an int64 (the only form efird wrote before, so older stores load as they
are and stores stay readable by an older efird in the common case), 16 bytes beyond.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from efird.efi.status import Status
from efird.efi.time import UNSPECIFIED_TIMEZONE, EfiTime
from efird.store.base import StoreError, VariableStore

META_OFFSET = "time.offset_ns"
META_ZONE = "time.zone"
META_WAKEUP = "time.wakeup"
META_MONOTONIC = "time.monotonic_high"
_ZONE = struct.Struct("<hB")
_WAKEUP = struct.Struct("<BB16s")  # enabled, pending, EFI_TIME
_U32 = struct.Struct("<I")

# EFI_TIME_CAPABILITIES: the host clock reports nanoseconds (Resolution in counts per
# second); an NTP-disciplined host clock is taken to be within 1 ppm (Accuracy is in
# units of 1e-6 ppm); setting the time does not clear what is below the resolution.
RESOLUTION = 1_000_000_000
ACCURACY = 1_000_000
SETS_TO_ZERO = 0
_EPOCH = dt.datetime(1970, 1, 1)
_NS = 1_000_000_000


def _to_ns(t: EfiTime) -> int:
    """Nanoseconds from the epoch to an EFI_TIME's wall-clock fields."""
    d = dt.datetime(t.year, t.month, t.day, t.hour, t.minute, t.second) - _EPOCH
    return (d.days * 86_400 + d.seconds) * _NS + t.nanosecond


#: The guest's clock stays within the times an EFI_TIME can hold (1900-01-01 to the last
#: nanosecond of 9999): a clock set near either end stops there rather than leave them.
EARLIEST_NS = _to_ns(EfiTime(1900, 1, 1))
LATEST_NS = _to_ns(EfiTime(9999, 12, 31, 23, 59, 59, nanosecond=_NS - 1))
#: The largest offset a migrated clock may bring (restore-state refuses more): from any
#: time a host clock can read to any EFI time (about 8,100 years), with room to spare.
MAX_OFFSET_NS = 2 * (LATEST_NS - EARLIEST_NS)
_OFFSET_SIZES = (8, 16)


def pack_offset(offset_ns: int) -> bytes:
    """The offset's store record: an int64 while it fits, else an int128."""
    size = 8 if -(1 << 63) <= offset_ns < 1 << 63 else 16
    return offset_ns.to_bytes(size, "little", signed=True)


def unpack_offset(raw: bytes | None) -> int:
    """The offset a store record holds; 0 (the host's clock) without a usable one."""
    if raw is None or len(raw) not in _OFFSET_SIZES:
        return 0
    return int.from_bytes(raw, "little", signed=True)


def _from_ns(ns: int, zone: int, daylight: int) -> EfiTime:
    ns = min(max(ns, EARLIEST_NS), LATEST_NS)
    d = _EPOCH + dt.timedelta(microseconds=ns // 1000)
    return EfiTime(d.year, d.month, d.day, d.hour, d.minute, d.second, 0,
                   (ns % _NS), zone, daylight, 0)


@dataclass(frozen=True)
class ClockState:
    """What migration moves of the clock (see efird.control.domain_handler)."""

    offset_ns: int
    zone: int
    daylight: int
    monotonic_high: int
    wakeup_enabled: bool
    wakeup_pending: bool
    wakeup_time: bytes

    def __post_init__(self) -> None:
        if abs(self.offset_ns) > MAX_OFFSET_NS:
            raise ValueError(f"clock offset {self.offset_ns} ns is more than "
                             f"{MAX_OFFSET_NS} ns")


class TimeService:
    def __init__(self, store: VariableStore, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.clock = clock  # host UTC, in ns since the epoch
        self.offset_ns = unpack_offset(store.get_meta(META_OFFSET))
        self.zone, self.daylight = self._meta(META_ZONE, _ZONE, (UNSPECIFIED_TIMEZONE, 0))
        enabled, pending, raw = self._meta(META_WAKEUP, _WAKEUP, (0, 0, bytes(16)))
        self.wakeup_enabled, self.wakeup_pending = bool(enabled), bool(pending)
        self.wakeup_time = raw
        self.monotonic_high = self._meta(META_MONOTONIC, _U32, (0,))[0]

    def _meta(self, key: str, codec: struct.Struct,
              default: tuple[int | bytes, ...]) -> tuple[Any, ...]:
        raw = self.store.get_meta(key)
        return codec.unpack(raw) if raw is not None and len(raw) == codec.size else default

    def restore(self, state: ClockState) -> None:
        """Take over a migrated clock; the monotonic count never goes backwards."""
        high = max(state.monotonic_high, self.monotonic_high)
        self.store.commit(meta={
            META_OFFSET: pack_offset(state.offset_ns),
            META_ZONE: _ZONE.pack(state.zone, state.daylight),
            META_WAKEUP: _WAKEUP.pack(state.wakeup_enabled, state.wakeup_pending,
                                      state.wakeup_time),
            META_MONOTONIC: _U32.pack(high)})
        self.offset_ns, self.zone, self.daylight = state.offset_ns, state.zone, state.daylight
        self.wakeup_enabled, self.wakeup_pending = state.wakeup_enabled, state.wakeup_pending
        self.wakeup_time, self.monotonic_high = state.wakeup_time, high

    # -- GetTime / SetTime -------------------------------------------------------------
    def now(self) -> EfiTime:
        return _from_ns(self.clock() + self.offset_ns, self.zone, self.daylight)

    def get_time(self) -> tuple[Status, EfiTime]:
        return Status.SUCCESS, self.now()

    def set_time(self, t: EfiTime) -> Status:
        if not t.is_valid():
            return Status.INVALID_PARAMETER
        offset = _to_ns(t) - self.clock()
        try:
            self.store.commit(meta={META_OFFSET: pack_offset(offset),
                                    META_ZONE: _ZONE.pack(t.timezone, t.daylight)})
        except StoreError:
            return Status.DEVICE_ERROR
        self.offset_ns, self.zone, self.daylight = offset, t.timezone, t.daylight
        return Status.SUCCESS

    # -- the wakeup alarm ----------------------------------------------------------------
    def get_wakeup_time(self) -> tuple[Status, bool, bool, bytes]:
        return Status.SUCCESS, self.wakeup_enabled, self.wakeup_pending, self.wakeup_time

    def set_wakeup_time(self, enable: bool, t: EfiTime | None) -> Status:
        if enable and (t is None or not t.is_valid()):
            return Status.INVALID_PARAMETER
        raw = t.pack() if enable and t is not None else self.wakeup_time
        try:
            self.store.commit(meta={META_WAKEUP: _WAKEUP.pack(enable, False, raw)})
        except StoreError:
            return Status.DEVICE_ERROR
        self.wakeup_enabled, self.wakeup_pending, self.wakeup_time = enable, False, raw
        return Status.SUCCESS

    def alarm_due(self) -> bool:
        """True once when an enabled alarm's time has come (then it is pending)."""
        if not self.wakeup_enabled or self.wakeup_pending:
            return False
        alarm = EfiTime.unpack(self.wakeup_time)
        if not alarm.is_valid() or self.now().ordering_key() < alarm.ordering_key():
            return False
        self.wakeup_pending = True
        # the event fires even if this cannot be recorded; a restart would fire it again
        with contextlib.suppress(StoreError):
            self.store.commit(meta={META_WAKEUP: _WAKEUP.pack(True, True, self.wakeup_time)})
        return True

    # -- GetNextHighMonotonicCount ---------------------------------------------------------
    def next_high_monotonic_count(self) -> tuple[Status, int]:
        """Durable before it is returned: the count never repeats across restarts."""
        if self.monotonic_high >= 0xFFFFFFFF:
            return Status.DEVICE_ERROR, self.monotonic_high
        value = self.monotonic_high + 1
        try:
            self.store.commit(meta={META_MONOTONIC: _U32.pack(value)})
        except StoreError:
            return Status.DEVICE_ERROR, self.monotonic_high
        self.monotonic_high = value
        return Status.SUCCESS, value
