"""Variables every store format must round-trip exactly (shared by the format tests)."""

from __future__ import annotations

from efird.efi import guid
from efird.variables.model import Variable

NV_BS_RT = 0x07
AUTH = 0x27  # NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS
TIME = bytes.fromhex("e9070102030405000000000000000000")  # 2025-01-02 03:04:05
IDENTITY = bytes(range(1, 33))

VARS = [
    Variable(guid.EFI_GLOBAL_VARIABLE, "BootOrder", NV_BS_RT, b"\x00\x00\x01\x00"),
    Variable(guid.EFI_GLOBAL_VARIABLE, "PK", AUTH, b"\x30\x82" * 10, TIME),
    Variable(guid.SHIM_LOCK, "Private", AUTH, b"secret", TIME, IDENTITY),
    Variable(guid.SHIM_LOCK, "Caf\u00e9\u4e2d", NV_BS_RT, b"\x01"),
    Variable(guid.SHIM_LOCK, "Pair\ud83d\ude00", NV_BS_RT, b"\x02"),
    Variable(guid.SHIM_LOCK, "Lone\udc00x\ud800", NV_BS_RT, b"\x03"),
]


def canon(vs: list[Variable]) -> list[Variable]:
    return sorted(vs, key=lambda v: (guid.guid_str(v.guid), v.name))
