"""Variable attributes (UEFI 2.10 §8.2.1)."""

from __future__ import annotations

from enum import IntFlag
from functools import lru_cache


class Attr(IntFlag):
    NON_VOLATILE = 0x01
    BOOTSERVICE_ACCESS = 0x02
    RUNTIME_ACCESS = 0x04
    HARDWARE_ERROR_RECORD = 0x08
    AUTHENTICATED_WRITE_ACCESS = 0x10
    TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x20
    APPEND_WRITE = 0x40
    ENHANCED_AUTHENTICATED_ACCESS = 0x80


# Plain ints, not flags: `~` on an IntFlag only flips its defined bits, and the checks
# below are about the bits that are *not* defined.
NV = int(Attr.NON_VOLATILE)
BS = int(Attr.BOOTSERVICE_ACCESS)
RT = int(Attr.RUNTIME_ACCESS)
HR = int(Attr.HARDWARE_ERROR_RECORD)
AW = int(Attr.AUTHENTICATED_WRITE_ACCESS)
AT = int(Attr.TIME_BASED_AUTHENTICATED_WRITE_ACCESS)
AP = int(Attr.APPEND_WRITE)
EA = int(Attr.ENHANCED_AUTHENTICATED_ACCESS)

# EDK2's EFI_VARIABLE_ATTRIBUTES_MASK (Variable.h): NV|BS|RT|HR|AT|APPEND = 0x6F. Neither the
# deprecated AW nor ENHANCED_AUTHENTICATED_ACCESS is in it.
ATTRIBUTES_MASK = NV | BS | RT | HR | AT | AP
# Bits that are stored with a variable (APPEND_WRITE only modifies a write).
STORED_MASK = NV | BS | RT | HR | AW | AT
NV_BS_RT = NV | BS | RT
BS_RT = BS | RT

SHORT_NAMES = {
    "nv": NV, "bs": BS, "rt": RT, "hr": HR, "aw": AW, "at": AT, "ap": AP, "ea": EA,
}


def parse_attributes(text: str) -> int:
    """'nv,bs,rt' (or a number) to an attribute mask."""
    text = text.strip()
    if not text:
        return 0
    try:
        return int(text, 0)
    except ValueError:
        pass
    mask = 0
    for part in text.split(","):
        key = part.strip().lower()
        if key not in SHORT_NAMES:
            raise ValueError(
                f"unknown attribute {part.strip()!r} (use {','.join(SHORT_NAMES)} or a number)"
            )
        mask |= SHORT_NAMES[key]
    return mask


@lru_cache(maxsize=256)
def format_attributes(mask: int) -> str:
    """An attribute mask as 'nv,bs,rt' (unknown bits in hex)."""
    parts = [name for name, bit in SHORT_NAMES.items() if mask & bit]
    rest = mask & ~sum(int(b) for b in SHORT_NAMES.values())
    if rest:
        parts.append(hex(rest))
    return ",".join(parts) or "-"
