"""Variable names: NUL-terminated UCS-2 (UEFI 2.10 §2.3.1, CHAR16)."""

from __future__ import annotations


def encode_name(name: str) -> bytes:
    """A name as UCS-2 LE with its terminating NUL. Characters outside the BMP are refused."""
    if any(ord(c) > 0xFFFF for c in name):
        raise ValueError(f"variable name {name!r} has characters outside UCS-2")
    if "\0" in name:
        raise ValueError("variable name contains NUL")
    return name.encode("utf-16-le", errors="surrogatepass") + b"\0\0"


def decode_units(raw: bytes) -> str:
    """CHAR16 units to a str with one character per unit (surrogates kept apart), so that
    any name a guest can write round-trips exactly through encode_name. A trailing odd
    byte is not a unit and is ignored."""
    raw = raw[: len(raw) - len(raw) % 2]
    text = raw.decode("utf-16-le", errors="surrogatepass")
    if len(text) * 2 != len(raw):
        # a surrogate pair was joined into one character: split it back into its units
        text = "".join(chr(int.from_bytes(raw[i : i + 2], "little"))
                       for i in range(0, len(raw) - 1, 2))
    return text


def decode_name(raw: bytes) -> str | None:
    """The name in a NameSize-byte buffer, or None if it is not a valid CHAR16 string.

    Valid means: an even, non-zero size whose last CHAR16 is NUL, with no NUL before it.
    Lone surrogates are kept (UCS-2 is not UTF-16), so names round-trip exactly.
    """
    size = len(raw)
    if size < 2 or size % 2:
        return None
    if raw[-2:] != b"\0\0":
        return None
    text = decode_units(raw[:-2])
    if "\0" in text:
        return None
    return text


def first_string(raw: bytes) -> str | None:
    """The CHAR16 string at the start of raw, up to its first NUL; None if there is no NUL."""
    for i in range(0, len(raw) - 1, 2):
        if raw[i] == 0 and raw[i + 1] == 0:
            return decode_units(raw[:i])
    return None
