"""EFI_STATUS values (UEFI 2.10 Appendix D)."""

from __future__ import annotations

from enum import IntEnum

ERROR_BIT = 1 << 63


class Status(IntEnum):
    SUCCESS = 0
    LOAD_ERROR = ERROR_BIT | 1
    INVALID_PARAMETER = ERROR_BIT | 2
    UNSUPPORTED = ERROR_BIT | 3
    BAD_BUFFER_SIZE = ERROR_BIT | 4
    BUFFER_TOO_SMALL = ERROR_BIT | 5
    NOT_READY = ERROR_BIT | 6
    DEVICE_ERROR = ERROR_BIT | 7
    WRITE_PROTECTED = ERROR_BIT | 8
    OUT_OF_RESOURCES = ERROR_BIT | 9
    VOLUME_CORRUPTED = ERROR_BIT | 10
    VOLUME_FULL = ERROR_BIT | 11
    NO_MEDIA = ERROR_BIT | 12
    MEDIA_CHANGED = ERROR_BIT | 13
    NOT_FOUND = ERROR_BIT | 14
    ACCESS_DENIED = ERROR_BIT | 15
    NO_RESPONSE = ERROR_BIT | 16
    NO_MAPPING = ERROR_BIT | 17
    TIMEOUT = ERROR_BIT | 18
    NOT_STARTED = ERROR_BIT | 19
    ALREADY_STARTED = ERROR_BIT | 20
    ABORTED = ERROR_BIT | 21
    PROTOCOL_ERROR = ERROR_BIT | 24
    INCOMPATIBLE_VERSION = ERROR_BIT | 25
    SECURITY_VIOLATION = ERROR_BIT | 26
    CRC_ERROR = ERROR_BIT | 27

    @property
    def is_error(self) -> bool:
        return bool(self.value & ERROR_BIT)


def status_name(value: int) -> str:
    """The spec name of a status value, or its hex form when it has none."""
    try:
        return Status(value).name
    except ValueError:
        return f"0x{value:016x}"


class EfiError(Exception):
    """A failure that the guest sees as an EFI status."""

    def __init__(self, status: Status, reason: str = "") -> None:
        super().__init__(f"{status.name}: {reason}" if reason else status.name)
        self.status = status
        self.reason = reason
