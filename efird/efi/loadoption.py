"""EFI_LOAD_OPTION, the contents of Boot#### / Driver#### / SysPrep#### (UEFI 2.10 §3.1.3).

Layout: Attributes (u32 LE), FilePathListLength (u16 LE), Description (NUL-terminated UCS-2),
FilePathList (FilePathListLength bytes of device paths, §10.3), OptionalData (the rest).
Boot option numbers and names follow §3.3 ("Boot" and four uppercase hex digits).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from efird.efi import devicepath
from efird.efi.ucs2 import decode_units

__all__ = [
    "LOAD_OPTION_ACTIVE",
    "LOAD_OPTION_CATEGORY",
    "LOAD_OPTION_CATEGORY_APP",
    "LOAD_OPTION_CATEGORY_BOOT",
    "LOAD_OPTION_FORCE_RECONNECT",
    "LOAD_OPTION_HIDDEN",
    "LoadOption",
    "LoadOptionError",
    "boot_name",
    "parse_boot_number",
]

LOAD_OPTION_ACTIVE = 0x00000001
LOAD_OPTION_FORCE_RECONNECT = 0x00000002
LOAD_OPTION_HIDDEN = 0x00000008
LOAD_OPTION_CATEGORY = 0x00001F00
LOAD_OPTION_CATEGORY_BOOT = 0x00000000
LOAD_OPTION_CATEGORY_APP = 0x00000100

_HEADER = struct.Struct("<IH")


class LoadOptionError(ValueError):
    """A malformed EFI_LOAD_OPTION, or fields that cannot be packed into one."""


def _encode_description(text: str) -> bytes:
    if "\0" in text:
        raise LoadOptionError("description contains NUL")
    if any(ord(ch) > 0xFFFF for ch in text):
        raise LoadOptionError(f"description {text!r} has characters outside UCS-2")
    return text.encode("utf-16-le", errors="surrogatepass") + b"\0\0"


def _find_nul(data: bytes, start: int) -> int:
    """Offset of the first CHAR16 NUL at or after start, stepping by CHAR16."""
    for i in range(start, len(data) - 1, 2):
        if data[i] == 0 and data[i + 1] == 0:
            return i
    tail = len(data) - start
    if tail % 2:
        raise LoadOptionError(
            f"description has an odd number of bytes ({tail}) and no NUL terminator"
        )
    raise LoadOptionError(f"description is not NUL-terminated ({tail} bytes, no CHAR16 NUL)")


@dataclass(frozen=True)
class LoadOption:
    """One load option; device_path is the raw FilePathList, optional_data the trailing bytes."""

    attributes: int
    description: str
    device_path: bytes
    optional_data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.attributes <= 0xFFFFFFFF:
            raise LoadOptionError(f"attributes {self.attributes:#x} do not fit in 32 bits")
        if len(self.device_path) > 0xFFFF:
            raise LoadOptionError(
                f"device path is {len(self.device_path)} bytes, FilePathListLength is 16-bit"
            )
        _encode_description(self.description)

    def pack(self) -> bytes:
        """The EFI_LOAD_OPTION bytes."""
        return (
            _HEADER.pack(self.attributes, len(self.device_path))
            + _encode_description(self.description)
            + bytes(self.device_path)
            + bytes(self.optional_data)
        )

    @classmethod
    def unpack(cls, data: bytes) -> LoadOption:
        """Parse EFI_LOAD_OPTION bytes; the device path is kept raw, not validated."""
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise LoadOptionError(
                f"load option is {len(data)} bytes, shorter than its 6-byte header"
            )
        attributes, path_length = _HEADER.unpack_from(data)
        nul = _find_nul(data, _HEADER.size)
        path_start = nul + 2
        available = len(data) - path_start
        if path_length > available:
            raise LoadOptionError(
                f"FilePathListLength {path_length} runs past the end of the data "
                f"({available} bytes after the description)"
            )
        return cls(
            attributes=attributes,
            description=decode_units(data[_HEADER.size : nul]),
            device_path=data[path_start : path_start + path_length],
            optional_data=data[path_start + path_length :],
        )

    @property
    def active(self) -> bool:
        return bool(self.attributes & LOAD_OPTION_ACTIVE)

    @property
    def hidden(self) -> bool:
        return bool(self.attributes & LOAD_OPTION_HIDDEN)

    @property
    def category(self) -> str:
        """"boot", "app", or the raw category bits in hex for reserved values."""
        bits = self.attributes & LOAD_OPTION_CATEGORY
        names = {LOAD_OPTION_CATEGORY_BOOT: "boot", LOAD_OPTION_CATEGORY_APP: "app"}
        return names.get(bits, f"{bits:#06x}")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary; the device path as text when it parses, else hex and error."""
        path: str | dict[str, str]
        try:
            path = devicepath.to_text(self.device_path)
        except devicepath.DevicePathError as e:
            path = {"hex": self.device_path.hex(), "error": str(e)}
        return {
            "attributes": self.attributes,
            "active": self.active,
            "hidden": self.hidden,
            "category": self.category,
            "description": self.description,
            "device_path": path,
            "device_path_hex": self.device_path.hex(),
            "optional_data": self.optional_data.hex(),
        }


_BOOT_NUMBER = re.compile(r"(?:boot([0-9a-f]{4})|(?:0x)?([0-9a-f]+))", re.IGNORECASE)


def parse_boot_number(text: str) -> int:
    """A boot option number from "0003", "Boot0003", "3" or "0x3"; always hex, as efibootmgr."""
    match = _BOOT_NUMBER.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a boot option number: {text!r} (want hex like 0003 or Boot0003)")
    value = int(match.group(1) or match.group(2), 16)
    if value > 0xFFFF:
        raise ValueError(f"boot option number {text!r} is above FFFF")
    return value


def boot_name(n: int) -> str:
    """The variable name for boot option n: "Boot000A"."""
    if not 0 <= n <= 0xFFFF:
        raise ValueError(f"boot option number {n} is outside 0..0xFFFF")
    return f"Boot{n:04X}"
