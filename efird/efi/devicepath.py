"""UEFI device paths: binary nodes to text and back.

Binary layout is UEFI 2.10 §10.3 (EFI_DEVICE_PATH_PROTOCOL): each node is Type (u8), SubType
(u8) and Length (u16 LE, counting the 4-byte header), followed by Length - 4 bytes of node data.
A path ends with the End Entire node (0x7F/0xFF, length 4); an End Instance node (0x7F/0x01)
separates the instances of a multi-instance path.

Text is §10.6: nodes are joined with "/", instances with ",". The nodes this module knows
(§10.3.2 hardware, §10.3.3 ACPI, §10.3.4 messaging, §10.3.5 media) print in the §10.6.1 forms,
with numbers as EDK2 prints them (mostly 0x-prefixed hex); input numbers may be decimal or 0x
hex. Anything else, including a known node whose length does not match its layout, prints in
the generic form Path(Type,SubType,HexData) of §10.6.1.1, so from_text(to_text(b)) == b for
every well-formed binary path.
"""

from __future__ import annotations

import re
import string
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from efird.efi.guid import guid_bytes, guid_str
from efird.efi.ucs2 import decode_units

__all__ = ["DevicePathError", "from_text", "to_text"]

END_TYPE = 0x7F
END_INSTANCE = 0x01
END_ENTIRE = 0xFF
HEADER = 4
END_ENTIRE_NODE = bytes((END_TYPE, END_ENTIRE, HEADER, 0))
END_INSTANCE_NODE = bytes((END_TYPE, END_INSTANCE, HEADER, 0))
MAX_NODE = 0xFFFF

HARDWARE, ACPI, MESSAGING, MEDIA, BBS = 1, 2, 3, 4, 5

PCI_ROOT_HID = 0x0A0341D0  # EISA "PNP0A03"
PCIE_ROOT_HID = 0x0A0841D0  # EISA "PNP0A08"

MBR_FORMAT, GPT_FORMAT = 1, 2  # HD PartitionFormat (§10.3.5.1)
SIG_MBR, SIG_GUID = 1, 2  # HD SignatureType


class DevicePathError(ValueError):
    """A malformed binary device path or an unparseable text one."""


@dataclass(frozen=True)
class _Node:
    type: int
    subtype: int
    data: bytes


# ---------------------------------------------------------------------------------------------
# Binary side


def _iter_binary(data: bytes) -> Iterator[_Node]:
    """The nodes before End Entire, End Instance included; checks every length."""
    offset = 0
    index = 0
    while True:
        where = f"node {index} at offset {offset:#x}"
        left = len(data) - offset
        if left == 0:
            raise DevicePathError(f"missing End Entire node: data ends before {where}")
        if left < HEADER:
            raise DevicePathError(f"{where}: truncated header, only {left} byte(s) left")
        node_type, subtype, length = struct.unpack_from("<BBH", data, offset)
        if length < HEADER:
            raise DevicePathError(f"{where}: length {length} is less than the 4-byte header")
        if length > left:
            raise DevicePathError(
                f"{where}: length {length} runs past the end of data ({left} byte(s) left)"
            )
        if node_type == END_TYPE and subtype in (END_ENTIRE, END_INSTANCE) and length != HEADER:
            raise DevicePathError(f"{where}: end node has length {length}, expected 4")
        if node_type == END_TYPE and subtype == END_ENTIRE:
            if length != left:
                raise DevicePathError(
                    f"{where}: {left - length} trailing byte(s) after the End Entire node"
                )
            return
        yield _Node(node_type, subtype, data[offset + HEADER : offset + length])
        offset += length
        index += 1


def _encode_node(node: _Node) -> bytes:
    length = HEADER + len(node.data)
    if length > MAX_NODE:
        raise DevicePathError(
            f"node {node.type}/{node.subtype} is {length} bytes, more than the 16-bit length allows"
        )
    return struct.pack("<BBH", node.type, node.subtype, length) + node.data


# ---------------------------------------------------------------------------------------------
# Text argument helpers

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_EISA = re.compile(r"([A-Z]{3})([0-9A-F]{4})", re.IGNORECASE)
_TOKEN = re.compile(r"([A-Za-z][A-Za-z0-9]*)\((.*)\)", re.DOTALL)


def _number(text: str, bits: int, what: str) -> int:
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise DevicePathError(f"{what}: {text!r} is not a decimal or 0x-hex number")
    value = int(text[2:], 16) if text[:2].lower() == "0x" else int(text, 10)
    if value >= 1 << bits:
        raise DevicePathError(f"{what}: {text} does not fit in {bits} bits")
    return value


def _hexdata(text: str, what: str) -> bytes:
    text = text.strip()
    if not _HEX.fullmatch(text):
        raise DevicePathError(f"{what}: {text!r} is not an even-length hex string")
    return bytes.fromhex(text)


def _guid(text: str, what: str) -> bytes:
    try:
        return guid_bytes(text.strip())
    except ValueError:
        raise DevicePathError(f"{what}: {text!r} is not a GUID") from None


def _args(inner: str, name: str, low: int, high: int | None = None) -> list[str]:
    """Comma-separated arguments, between low and high (default: exactly low) of them."""
    high = low if high is None else high
    args = inner.split(",") if inner.strip() or low > 0 else []
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise DevicePathError(f"{name}() takes {want} argument(s), got {len(args)}")
    return args


# ---------------------------------------------------------------------------------------------
# Node kinds. A renderer returns the node's text, or None when it cannot express the data
# exactly; a parser takes the text between the parentheses and returns the node.

Renderer = Callable[[_Node], str | None]
Parser = Callable[[str], _Node]


@dataclass(frozen=True)
class _Fixed:
    """A node of fixed layout whose fields all print as 0x-hex numbers or GUIDs.

    fmt is the struct layout of the node data; shown lists, in text order, the indexes of the
    fields that appear in the text. Fields not shown must be zero.
    """

    type: int
    subtype: int
    name: str
    fmt: str
    shown: tuple[int, ...]

    def render(self, node: _Node) -> str | None:
        if len(node.data) != struct.calcsize(self.fmt):
            return None
        values = struct.unpack(self.fmt, node.data)
        hidden = [v for i, v in enumerate(values) if i not in self.shown]
        if any(hidden):
            return None
        texts = [_field_text(values[i]) for i in self.shown]
        return f"{self.name}({','.join(texts)})"

    def parse(self, inner: str) -> _Node:
        codes = _codes(self.fmt)
        args = _args(inner, self.name, len(self.shown))
        values: list[int | bytes] = [b"\0" * 16 if c == "16s" else 0 for c in codes]
        for position, (arg, i) in enumerate(zip(args, self.shown, strict=True), 1):
            what = f"{self.name}() argument {position}"
            code = codes[i]
            values[i] = _guid(arg, what) if code == "16s" else _number(arg, _BITS[code], what)
        return _Node(self.type, self.subtype, struct.pack(self.fmt, *values))


_BITS = {"B": 8, "H": 16, "I": 32, "Q": 64}


def _codes(fmt: str) -> list[str]:
    return re.findall(r"16s|[BHIQ]", fmt)


def _field_text(value: int | bytes) -> str:
    return guid_str(value) if isinstance(value, bytes) else f"{value:#x}"


_FIXED = (
    _Fixed(HARDWARE, 1, "Pci", "<BB", (1, 0)),  # Function, Device; text is Pci(Device,Function)
    _Fixed(HARDWARE, 3, "MemoryMapped", "<IQQ", (0, 1, 2)),
    _Fixed(HARDWARE, 5, "Ctrl", "<I", (0,)),
    _Fixed(MESSAGING, 2, "Scsi", "<HH", (0, 1)),
    _Fixed(MESSAGING, 5, "USB", "<BB", (0, 1)),
    _Fixed(MESSAGING, 18, "Sata", "<HHH", (0, 1, 2)),
    _Fixed(MEDIA, 2, "CDROM", "<IQQ", (0, 1, 2)),
    _Fixed(MEDIA, 6, "FvFile", "<16s", (0,)),
    _Fixed(MEDIA, 7, "Fv", "<16s", (0,)),
    _Fixed(MEDIA, 8, "Offset", "<IQQ", (1, 2)),  # Reserved, StartingOffset, EndingOffset
)


# ACPI (§10.3.3): _HID/_UID, with the PCI root bridge shortcuts.


def _eisa_text(hid: int) -> str | None:
    vendor, product = hid & 0xFFFF, hid >> 16
    letters = [(vendor >> shift) & 0x1F for shift in (10, 5, 0)]
    if vendor & 0x8000 or not all(1 <= v <= 26 for v in letters):
        return None
    return "".join(chr(0x40 + v) for v in letters) + f"{product:04X}"


def _eisa_parse(text: str, what: str) -> int:
    match = _EISA.fullmatch(text.strip())
    if not match:
        return _number(text, 32, what)
    letters, product = match.group(1).upper(), int(match.group(2), 16)
    vendor = 0
    for ch in letters:
        vendor = (vendor << 5) | (ord(ch) - 0x40)
    return (product << 16) | vendor


def _acpi_render(node: _Node) -> str | None:
    if len(node.data) != 8:
        return None
    hid, uid = struct.unpack("<II", node.data)
    if hid == PCI_ROOT_HID:
        return f"PciRoot({uid:#x})"
    if hid == PCIE_ROOT_HID:
        return f"PcieRoot({uid:#x})"
    return f"Acpi({_eisa_text(hid) or f'0x{hid:08x}'},{uid:#x})"


def _acpi_node(hid: int, uid: int) -> _Node:
    return _Node(ACPI, 1, struct.pack("<II", hid, uid))


def _pci_root_parse(inner: str) -> _Node:
    (uid,) = _args(inner, "PciRoot", 1)
    return _acpi_node(PCI_ROOT_HID, _number(uid, 32, "PciRoot() UID"))


def _pcie_root_parse(inner: str) -> _Node:
    (uid,) = _args(inner, "PcieRoot", 1)
    return _acpi_node(PCIE_ROOT_HID, _number(uid, 32, "PcieRoot() UID"))


def _acpi_parse(inner: str) -> _Node:
    hid, uid = _args(inner, "Acpi", 2)
    return _acpi_node(_eisa_parse(hid, "Acpi() HID"), _number(uid, 32, "Acpi() UID"))


# Vendor-defined nodes (§10.3.2.4, §10.3.4.16, §10.3.5.3): a GUID and free-form data.


def _vendor_render(name: str) -> Renderer:
    def render(node: _Node) -> str | None:
        if len(node.data) < 16:
            return None
        guid, extra = guid_str(node.data[:16]), node.data[16:]
        return f"{name}({guid},{extra.hex()})" if extra else f"{name}({guid})"

    return render


def _vendor_parse(node_type: int, name: str) -> Parser:
    def parse(inner: str) -> _Node:
        args = _args(inner, name, 1, 2)
        data = _guid(args[0], f"{name}() GUID")
        if len(args) == 2:
            data += _hexdata(args[1], f"{name}() data")
        return _Node(node_type, {HARDWARE: 4, MESSAGING: 10, MEDIA: 3}[node_type], data)

    return parse


# MAC address (§10.3.4.11): 32-byte address field, IfType u8.


def _mac_render(node: _Node) -> str | None:
    if len(node.data) != 33:
        return None
    addr, iftype = node.data[:32], node.data[32]
    if iftype in (0, 1) and not any(addr[6:]):
        addr = addr[:6]
    return f"MAC({addr.hex()},{iftype:#x})"


def _mac_parse(inner: str) -> _Node:
    addr_text, iftype_text = _args(inner, "MAC", 2)
    addr = _hexdata(addr_text, "MAC() address")
    if len(addr) > 32:
        raise DevicePathError(f"MAC() address is {len(addr)} bytes, at most 32 allowed")
    iftype = _number(iftype_text, 8, "MAC() interface type")
    return _Node(MESSAGING, 11, addr.ljust(32, b"\0") + bytes((iftype,)))


# NVMe namespace (§10.3.4.22): NamespaceId u32, EUI-64; the EUI prints most significant
# byte first from the little-endian u64, as EDK2 does.


def _nvme_render(node: _Node) -> str | None:
    if len(node.data) != 12:
        return None
    (nsid,) = struct.unpack_from("<I", node.data)
    eui = "-".join(f"{b:02X}" for b in reversed(node.data[4:]))
    return f"NVMe({nsid:#x},{eui})"


def _nvme_parse(inner: str) -> _Node:
    nsid_text, eui_text = _args(inner, "NVMe", 2)
    groups = eui_text.strip().split("-")
    if len(groups) != 8 or not all(re.fullmatch(r"[0-9a-fA-F]{1,2}", g) for g in groups):
        raise DevicePathError(f"NVMe() EUI-64 {eui_text!r} is not 8 hex bytes like 00-11-...-77")
    eui = bytes(int(g, 16) for g in reversed(groups))
    return _Node(MESSAGING, 23, struct.pack("<I", _number(nsid_text, 32, "NVMe() NSID")) + eui)


# URI (§10.3.4.23): the URI bytes, not NUL-terminated.

_URI_CHARS = frozenset(string.printable.encode("ascii")) - frozenset(b"\t\n\r\x0b\x0c")


def _uri_render(node: _Node) -> str | None:
    if not all(b in _URI_CHARS for b in node.data):
        return None
    return f"Uri({node.data.decode('ascii')})"


def _uri_parse(inner: str) -> _Node:
    try:
        data = inner.encode("ascii")
    except UnicodeEncodeError:
        raise DevicePathError(f"Uri() {inner!r} has non-ASCII characters") from None
    return _Node(MESSAGING, 24, data)


# Hard drive (§10.3.5.1): PartitionNumber u32, Start u64, Size u64, Signature[16],
# PartitionFormat u8, SignatureType u8.

_HD = "<IQQ16sBB"


def _hd_render(node: _Node) -> str | None:
    if len(node.data) != struct.calcsize(_HD):
        return None
    number, start, size, sig, fmt, sig_type = struct.unpack(_HD, node.data)
    if (fmt, sig_type) == (GPT_FORMAT, SIG_GUID):
        sig_text = f"GPT,{guid_str(sig)}"
    elif (fmt, sig_type) == (MBR_FORMAT, SIG_MBR) and not any(sig[4:]):
        sig_text = f"MBR,0x{int.from_bytes(sig[:4], 'little'):08x}"
    else:
        return None
    return f"HD({number},{sig_text},{start:#x},{size:#x})"


def _hd_parse(inner: str) -> _Node:
    number, kind, sig_text, start, size = _args(inner, "HD", 5)
    kind = kind.strip().upper()
    if kind == "GPT":
        sig, fmt, sig_type = _guid(sig_text, "HD() signature"), GPT_FORMAT, SIG_GUID
    elif kind == "MBR":
        mbr = _number(sig_text, 32, "HD() signature")
        sig, fmt, sig_type = mbr.to_bytes(4, "little").ljust(16, b"\0"), MBR_FORMAT, SIG_MBR
    else:
        raise DevicePathError(f"HD() partition format {kind!r} is not GPT or MBR")
    data = struct.pack(
        _HD,
        _number(number, 32, "HD() partition number"),
        _number(start, 64, "HD() start"),
        _number(size, 64, "HD() size"),
        sig,
        fmt,
        sig_type,
    )
    return _Node(MEDIA, 1, data)


# File path (§10.3.5.4): NUL-terminated UCS-2 path name.


def _file_render(node: _Node) -> str | None:
    data = node.data
    if len(data) % 2 or data[-2:] != b"\0\0":
        return None
    path = decode_units(data[:-2])
    if not all(ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF for ch in path):
        return None  # NULs, control characters or lone surrogates: keep them in hex
    return f"File({path})"


def _file_parse(inner: str) -> _Node:
    if "\0" in inner:
        raise DevicePathError("File() path contains NUL")
    if any(ord(ch) > 0xFFFF for ch in inner):
        raise DevicePathError(f"File() path {inner!r} has characters outside UCS-2")
    return _Node(MEDIA, 4, inner.encode("utf-16-le", errors="surrogatepass") + b"\0\0")


# Generic forms (§10.6.1.1).


def _generic_render(node: _Node) -> str:
    data = f",{node.data.hex()}" if node.data else ""
    return f"Path({node.type},{node.subtype}{data})"


def _generic_node(name: str, node_type: int, subtype_text: str, data_text: str | None) -> _Node:
    subtype = _number(subtype_text, 8, f"{name}() subtype")
    if node_type == END_TYPE and subtype in (END_ENTIRE, END_INSTANCE):
        raise DevicePathError(
            f"{name}() cannot make an end node: use ',' between instances; End Entire is implicit"
        )
    data = b"" if data_text is None else _hexdata(data_text, f"{name}() data")
    return _Node(node_type, subtype, data)


def _path_parse(inner: str) -> _Node:
    args = _args(inner, "Path", 2, 3)
    node_type = _number(args[0], 8, "Path() type")
    return _generic_node("Path", node_type, args[1], args[2] if len(args) == 3 else None)


def _typed_generic_parse(name: str, node_type: int) -> Parser:
    def parse(inner: str) -> _Node:
        args = _args(inner, name, 1, 2)
        return _generic_node(name, node_type, args[0], args[1] if len(args) == 2 else None)

    return parse


# ---------------------------------------------------------------------------------------------
# Tables

_RENDERERS: dict[tuple[int, int], Renderer] = {
    (HARDWARE, 4): _vendor_render("VenHw"),
    (ACPI, 1): _acpi_render,
    (MESSAGING, 10): _vendor_render("VenMsg"),
    (MESSAGING, 11): _mac_render,
    (MESSAGING, 23): _nvme_render,
    (MESSAGING, 24): _uri_render,
    (MEDIA, 1): _hd_render,
    (MEDIA, 3): _vendor_render("VenMedia"),
    (MEDIA, 4): _file_render,
}
_RENDERERS.update({(f.type, f.subtype): f.render for f in _FIXED})

_PARSERS: dict[str, Parser] = {
    "PciRoot": _pci_root_parse,
    "PcieRoot": _pcie_root_parse,
    "Acpi": _acpi_parse,
    "VenHw": _vendor_parse(HARDWARE, "VenHw"),
    "VenMsg": _vendor_parse(MESSAGING, "VenMsg"),
    "VenMedia": _vendor_parse(MEDIA, "VenMedia"),
    "MAC": _mac_parse,
    "NVMe": _nvme_parse,
    "Uri": _uri_parse,
    "HD": _hd_parse,
    "File": _file_parse,
    "Path": _path_parse,
    "HardwarePath": _typed_generic_parse("HardwarePath", HARDWARE),
    "AcpiPath": _typed_generic_parse("AcpiPath", ACPI),
    "Msg": _typed_generic_parse("Msg", MESSAGING),
    "MediaPath": _typed_generic_parse("MediaPath", MEDIA),
    "BbsPath": _typed_generic_parse("BbsPath", BBS),
}
_PARSERS.update({f.name: f.parse for f in _FIXED})


# ---------------------------------------------------------------------------------------------
# Text side


def _split_top(text: str) -> list[tuple[str, str]]:
    """(separator before, token) pairs, splitting on "/" and "," outside parentheses."""
    parts: list[tuple[str, str]] = []
    depth = 0
    start = 0
    sep = ""
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise DevicePathError(f"unbalanced ')' at position {i} in {text!r}")
        elif ch in "/," and depth == 0:
            parts.append((sep, text[start:i]))
            sep, start = ch, i + 1
    if depth:
        raise DevicePathError(f"unbalanced '(': {depth} left open in {text!r}")
    parts.append((sep, text[start:]))
    return parts


def _parse_token(token: str) -> _Node:
    if token.startswith("\\"):
        return _file_parse(token)
    match = _TOKEN.fullmatch(token)
    if not match:
        raise DevicePathError(f"cannot parse device path node {token!r}: expected Name(args)")
    name, inner = match.groups()
    parser = _PARSERS.get(name)
    if parser is None:
        raise DevicePathError(f"unknown device path node name {name!r} in {token!r}")
    try:
        return parser(inner)
    except DevicePathError as e:
        raise DevicePathError(f"in node {token!r}: {e}") from None


def _render(node: _Node) -> str:
    """The node's text; generic unless its own form parses back to exactly the same node."""
    renderer = _RENDERERS.get((node.type, node.subtype))
    text = renderer(node) if renderer else None
    if text is not None:
        try:
            exact = _split_top(text) == [("", text)] and _parse_token(text) == node
        except DevicePathError:
            exact = False
        if exact:
            return text
    return _generic_render(node)


def to_text(data: bytes) -> str:
    """Text form (§10.6) of a binary device path ending in End Entire."""
    out: list[str] = []
    sep = ""
    for node in _iter_binary(bytes(data)):
        if node.type == END_TYPE and node.subtype == END_INSTANCE:
            out.append(",")
            sep = ""
            continue
        out.append(sep + _render(node))
        sep = "/"
    return "".join(out)


def from_text(text: str) -> bytes:
    """Binary device path, End Entire node appended, from its text form."""
    out: list[bytes] = []
    parts = _split_top(text.strip())
    for i, (sep, token) in enumerate(parts):
        if sep == ",":
            out.append(END_INSTANCE_NODE)
        if token:
            out.append(_encode_node(_parse_token(token)))
            continue
        # an empty instance ("" or either side of ",") is fine; an empty node next to "/" is not
        next_sep = parts[i + 1][0] if i + 1 < len(parts) else ""
        if "/" in (sep, next_sep):
            raise DevicePathError(f"empty node next to '/' in {text!r}")
    return b"".join(out) + END_ENTIRE_NODE
