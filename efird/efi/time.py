"""EFI_TIME (UEFI 2.10 §8.3.1): 16 bytes, kept raw where it is stored."""

from __future__ import annotations

import calendar
import struct
from dataclasses import dataclass

_EFI_TIME = struct.Struct("<HBBBBBBIhBB")
SIZE = _EFI_TIME.size  # 16
UNSPECIFIED_TIMEZONE = 0x07FF
ZERO = bytes(SIZE)


@dataclass(frozen=True)
class EfiTime:
    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    pad1: int = 0
    nanosecond: int = 0
    timezone: int = UNSPECIFIED_TIMEZONE
    daylight: int = 0
    pad2: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> EfiTime:
        return cls(*_EFI_TIME.unpack_from(raw))

    def pack(self) -> bytes:
        return _EFI_TIME.pack(
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.pad1,
            self.nanosecond, self.timezone, self.daylight, self.pad2,
        )

    def is_valid(self) -> bool:
        """The field ranges SetTime checks (UEFI 2.10 §8.3.1, EDK2 TimeValidation)."""
        if not (1900 <= self.year <= 9999 and 1 <= self.month <= 12):
            return False
        if not 1 <= self.day <= calendar.monthrange(self.year, self.month)[1]:
            return False
        if self.hour > 23 or self.minute > 59 or self.second > 59:
            return False
        if self.nanosecond > 999_999_999:
            return False
        if not (-1440 <= self.timezone <= 1440 or self.timezone == UNSPECIFIED_TIMEZONE):
            return False
        return self.daylight & ~0x03 == 0

    def ordering_key(self) -> tuple[int, int, int, int, int, int]:
        """What EDK2's AuthServiceInternalCompareTimeStamp compares: Year to Second."""
        return (self.year, self.month, self.day, self.hour, self.minute, self.second)

    def __str__(self) -> str:
        return (f"{self.year:04d}-{self.month:02d}-{self.day:02d}T"
                f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}")
