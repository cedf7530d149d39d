"""A fixed-size C structure described once with construct.

construct is the schema; `struct` is the fast codec derived from it. Only the field
kinds that C structs in efird.h use are supported: little-endian integers, byte arrays
(GUIDs, EFI_TIME) and explicit padding. A structure may end in a flexible array
(`tail`), which C declares as `Name[]`: it has an offset but no size; `tail_align`
is the alignment of its elements (2 for CHAR16).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import construct as cs


def _field_format(sub: Any) -> tuple[str, int, int]:
    """(struct format, size, C alignment) of one construct field."""
    if isinstance(sub, cs.FormatField):
        fmt = sub.fmtstr.lstrip("<>=!")
        size = struct.calcsize("<" + fmt)
        return fmt, size, size
    if isinstance(sub, cs.Bytes):
        n = sub.sizeof()
        # 16-byte fields are EFI_GUID and EFI_TIME, both 4-byte aligned in C.
        return f"{n}s", n, 4 if n == 16 else 1
    if isinstance(sub, cs.Padded):
        n = sub.sizeof()
        return f"{n}x", n, 1
    raise TypeError(f"unsupported construct field {sub!r}")


class Layout:
    """One ABI structure: its C name, construct schema, struct codec and offsets."""

    def __init__(self, c_name: str, *fields: Any, tail: str | None = None,
                 tail_align: int = 1, packed: bool = False) -> None:
        self.c_name = c_name
        self.construct = cs.Struct(*fields)
        self.tail = tail
        self.packed = packed
        fmt = "<"
        offsets: dict[str, int] = {}
        names: list[str] = []
        offset = 0
        align = 1
        for f in fields:
            sub = f.subcon if isinstance(f, cs.Renamed) else f
            piece, size, field_align = _field_format(sub)
            if packed:
                field_align = 1
            if offset % field_align:
                raise ValueError(f"{c_name}: field {f.name} at {offset} is not naturally aligned")
            if f.name and not f.name.startswith("_"):
                offsets[f.name] = offset
                names.append(f.name)
            fmt += piece
            offset += size
            align = max(align, field_align)
        self.struct = struct.Struct(fmt)
        self.size = offset  # bytes of the fixed part
        if tail:
            if offset % tail_align:
                raise ValueError(f"{c_name}: tail {tail} at {offset} is not aligned")
            offsets[tail] = offset
        self.offsets: Mapping[str, int] = offsets
        self.field_names: tuple[str, ...] = tuple(names)
        # What a C compiler reports as sizeof: the fixed part rounded up to the alignment.
        self.c_sizeof = -(-offset // align) * align
        assert self.struct.size == self.construct.sizeof() == offset

    def parse(self, raw: bytes, offset: int = 0) -> Any:
        """Slow, self-describing parse (construct Container): for tools and tests."""
        return self.construct.parse(bytes(raw[offset : offset + self.size]))

    def build(self, **values: Any) -> bytes:
        """Build the fixed part from named values; unnamed padding is zero."""
        return bytes(self.construct.build(values))

    def __repr__(self) -> str:
        return f"Layout({self.c_name}, size={self.size})"
