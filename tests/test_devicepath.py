"""Device paths (UEFI 2.10 §10.3 binary, §10.6 text): known nodes, generic fallback, errors."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from efird.efi import devicepath as dp
from efird.efi.devicepath import DevicePathError, from_text, to_text

END = bytes.fromhex("7fff0400")
END_INSTANCE = bytes.fromhex("7f010400")

GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"
# the same GUID in EFI byte order, written out by hand: Data1..3 little-endian, Data4 as is
GUID_LE = bytes.fromhex("af3dc60f" "8384" "7247" "8e793d69d8477de4")


def node(node_type: int, subtype: int, data: bytes = b"") -> bytes:
    """One node built from the §10.3.1 header layout."""
    return bytes((node_type, subtype)) + (4 + len(data)).to_bytes(2, "little") + data


def ucs2z(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\0\0"


# (canonical text, node bytes without the end node)
KNOWN = [
    # hardware (§10.3.2)
    ("Pci(0x2,0x0)", node(1, 1, bytes((0x00, 0x02)))),  # Function byte first, then Device
    ("Pci(0x1f,0x3)", node(1, 1, bytes((0x03, 0x1F)))),
    (
        "MemoryMapped(0xb,0xfed00000,0xfed003ff)",
        node(1, 3, struct.pack("<IQQ", 0xB, 0xFED00000, 0xFED003FF)),
    ),
    (f"VenHw({GUID})", node(1, 4, GUID_LE)),
    (f"VenHw({GUID},0102ff)", node(1, 4, GUID_LE + b"\x01\x02\xff")),
    ("Ctrl(0x1)", node(1, 5, b"\x01\0\0\0")),
    # ACPI (§10.3.3)
    ("PciRoot(0x0)", node(2, 1, bytes.fromhex("d041030a" "00000000"))),
    ("PcieRoot(0x1)", node(2, 1, bytes.fromhex("d041080a" "01000000"))),
    ("Acpi(PNP0501,0x0)", node(2, 1, bytes.fromhex("d0410105" "00000000"))),
    ("Acpi(0x1234f678,0x2)", node(2, 1, bytes.fromhex("78f63412" "02000000"))),
    # messaging (§10.3.4)
    ("Scsi(0x1,0x2)", node(3, 2, bytes.fromhex("0100" "0200"))),
    ("USB(0x1,0x0)", node(3, 5, bytes((1, 0)))),
    ("MAC(525400123456,0x1)", node(3, 11, bytes.fromhex("525400123456") + bytes(26) + b"\x01")),
    (
        "MAC(" + "ab" * 32 + ",0x6)",
        node(3, 11, b"\xab" * 32 + b"\x06"),
    ),
    (f"VenMsg({GUID})", node(3, 10, GUID_LE)),
    ("Sata(0x0,0xffff,0x0)", node(3, 18, bytes.fromhex("0000" "ffff" "0000"))),
    # EUI-64 prints most significant byte first from the little-endian field, as EDK2 does
    (
        "NVMe(0x1,00-11-22-33-44-55-66-77)",
        node(3, 23, b"\x01\0\0\0" + bytes.fromhex("7766554433221100")),
    ),
    ("Uri(http://example.com/boot.efi)", node(3, 24, b"http://example.com/boot.efi")),
    ("Uri()", node(3, 24)),
    # media (§10.3.5)
    (
        f"HD(1,GPT,{GUID},0x800,0x100000)",
        node(4, 1, struct.pack("<IQQ", 1, 0x800, 0x100000) + GUID_LE + b"\x02\x02"),
    ),
    (
        "HD(2,MBR,0x1234abcd,0x3f,0x3e8)",
        node(
            4, 1, struct.pack("<IQQ", 2, 63, 1000) + bytes.fromhex("cdab3412") + bytes(12) + b"\1\1"
        ),
    ),
    ("CDROM(0x0,0x100,0x200)", node(4, 2, struct.pack("<IQQ", 0, 0x100, 0x200))),
    (f"VenMedia({GUID},ff)", node(4, 3, GUID_LE + b"\xff")),
    (r"File(\EFI\BOOT\BOOTX64.EFI)", node(4, 4, ucs2z(r"\EFI\BOOT\BOOTX64.EFI"))),
    ("File()", node(4, 4, b"\0\0")),
    (r"File(\Program Files (x86)\a,b/c.efi)", node(4, 4, ucs2z(r"\Program Files (x86)\a,b/c.efi"))),
    (f"FvFile({GUID})", node(4, 6, GUID_LE)),
    (f"Fv({GUID})", node(4, 7, GUID_LE)),
    ("Offset(0x1000,0x1fff)", node(4, 8, struct.pack("<IQQ", 0, 0x1000, 0x1FFF))),
]


@pytest.mark.parametrize(("text", "raw"), KNOWN, ids=[t for t, _ in KNOWN])
def test_known_node_both_ways(text: str, raw: bytes) -> None:
    assert to_text(raw + END) == text
    assert from_text(text) == raw + END


def test_usb_boot_path_against_hand_built_bytes() -> None:
    text = (
        f"PciRoot(0x0)/Pci(0x2,0x0)/HD(1,GPT,{GUID},0x800,0x100000)"
        r"/File(\EFI\BOOT\BOOTX64.EFI)"
    )
    raw = bytes.fromhex(
        "02010c00" "d041030a" "00000000"  # ACPI, HID PNP0A03, UID 0
        "01010600" "00" "02"  # PCI, function 0, device 2
        "04012a00"  # HD, length 42
        "01000000"  # partition 1
        "0008000000000000"  # start 0x800
        "0000100000000000"  # size 0x100000
        "af3dc60f83847247" "8e793d69d8477de4"  # signature GUID
        "02" "02"  # GPT, GUID signature
        "04043000"  # file path, length 4 + 44
        + ucs2z(r"\EFI\BOOT\BOOTX64.EFI").hex()
        + "7fff0400"
    )
    assert to_text(raw) == text
    assert from_text(text) == raw
    # efibootmgr / EDK2 style: a bare path and decimal numbers
    loose = f"PciRoot(0)/Pci(2,0)/HD(1,GPT,{GUID.upper()},2048,1048576)" r"/\EFI\BOOT\BOOTX64.EFI"
    assert from_text(loose) == raw


def test_ovmf_boot_entries() -> None:
    """Device paths out of Debian's OVMF_VARS_4M.ms.fd (Boot0000, Boot0001, ConIn)."""
    ui_app = bytes.fromhex(
        "04071400c9bdb87cebf8344faaea3ee4af6516a1"
        "0406140021aa2c4614760345836e8ab6f4662331"
        "7fff0400"
    )
    assert to_text(ui_app) == (
        "Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)"
    )
    disk = bytes.fromhex("02010c00d041030a0000000001010600021f03120a000000ffff00007fff0400")
    assert to_text(disk) == "PciRoot(0x0)/Pci(0x1f,0x2)/Sata(0x0,0xffff,0x0)"
    con_in = bytes.fromhex(
        "02010c00d041030a0000000001010600001f02010c00d0410303000000007f010400"
        "030f0b00ffffffff0301017fff0400"
    )
    assert to_text(con_in) == (
        "PciRoot(0x0)/Pci(0x1f,0x0)/Acpi(PNP0303,0x0),Path(3,15,ffffffff030101)"
    )
    for raw in (ui_app, disk, con_in):
        assert from_text(to_text(raw)) == raw


# --- alternative input spellings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Pci(2,0)", "Pci(0x2,0x0)"),
        ("Pci(0X1F, 3)", "Pci(0x1f,0x3)"),
        ("Acpi(PNP0A03,0)", "PciRoot(0x0)"),
        ("Acpi(pnp0a08,0x1)", "PcieRoot(0x1)"),
        ("Acpi(0x0a0341d0,7)", "PciRoot(0x7)"),
        ("NVMe(1,0-11-22-33-44-55-66-77)", "NVMe(0x1,00-11-22-33-44-55-66-77)"),
        ("MAC(525400123456,1)", "MAC(525400123456,0x1)"),
        ("MAC(5254,0x6)", "MAC(5254" + "00" * 30 + ",0x6)"),
        ("HD(0x1,gpt,{" + GUID.upper() + "},2048,1048576)", f"HD(1,GPT,{GUID},0x800,0x100000)"),
        ("HD(2,mbr,305441741,63,1000)", "HD(2,MBR,0x1234abcd,0x3f,0x3e8)"),
        ("\\EFI\\BOOT\\BOOTX64.EFI", r"File(\EFI\BOOT\BOOTX64.EFI)"),
        ("  PciRoot(0x0)\n", "PciRoot(0x0)"),
        ("HardwarePath(1,0002)", "Pci(0x2,0x0)"),
        ("Path(1,1,0002)", "Pci(0x2,0x0)"),
        ("Path(0x1,0x99,)", "Path(1,153)"),
        ("AcpiPath(3,aa)", "Path(2,3,aa)"),
        ("Msg(99)", "Path(3,99)"),
        ("MediaPath(0x20,0011)", "Path(4,32,0011)"),
        ("BbsPath(1,00)", "Path(5,1,00)"),
    ],
)
def test_alternative_input(text: str, canonical: str) -> None:
    assert from_text(text) == from_text(canonical)
    assert to_text(from_text(text)) == canonical


def test_instances() -> None:
    raw = node(1, 1, b"\0\1") + END_INSTANCE + node(1, 1, b"\0\2") + END
    assert to_text(raw) == "Pci(0x1,0x0),Pci(0x2,0x0)"
    assert from_text("Pci(0x1,0x0),Pci(0x2,0x0)") == raw


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("", END),
        (",", END_INSTANCE + END),
        (",Pci(0x1,0x0)", END_INSTANCE + node(1, 1, b"\0\1") + END),
        ("Pci(0x1,0x0),", node(1, 1, b"\0\1") + END_INSTANCE + END),
    ],
)
def test_empty_paths_and_instances(text: str, raw: bytes) -> None:
    assert to_text(raw) == text
    assert from_text(text) == raw


def test_uri_may_hold_slashes_and_parentheses() -> None:
    uri = "http://host/a(b)/c,d"
    raw = node(3, 24, uri.encode()) + node(4, 4, ucs2z("x")) + END
    assert to_text(raw) == f"Uri({uri})/File(x)"
    assert from_text(f"Uri({uri})/File(x)") == raw


# --- generic fallback ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (node(1, 0x99, b"\xab"), "Path(1,153,ab)"),
        (node(0x20, 1), "Path(32,1)"),
        (node(0, 0, b"\0"), "Path(0,0,00)"),
        (node(0x7F, 0x02, b"\1"), "Path(127,2,01)"),  # an end subtype the spec does not define
        (node(5, 1, bytes(8)), "Path(5,1,0000000000000000)"),  # BIOS boot specification
        (node(3, 12, bytes(23)), "Path(3,12," + "00" * 23 + ")"),  # IPv4: not decoded
        # known nodes whose length does not match their layout
        (node(1, 1, b"\0\1\2"), "Path(1,1,000102)"),
        (node(1, 1), "Path(1,1)"),
        (node(2, 1, bytes(12)), "Path(2,1," + "00" * 12 + ")"),  # expanded-size ACPI
        (node(1, 4, GUID_LE[:15]), "Path(1,4," + GUID_LE[:15].hex() + ")"),
        (node(3, 11, bytes(32)), "Path(3,11," + "00" * 32 + ")"),
        (node(4, 1, bytes(41)), "Path(4,1," + "00" * 41 + ")"),
    ],
)
def test_generic_fallback(raw: bytes, text: str) -> None:
    assert to_text(raw + END) == text
    assert from_text(text) == raw + END


@pytest.mark.parametrize(
    "raw",
    [
        # HD with a signature type other than MBR/GUID, or mismatched format and type
        node(4, 1, struct.pack("<IQQ", 1, 2, 3) + bytes(16) + b"\x00\x00"),
        node(4, 1, struct.pack("<IQQ", 1, 2, 3) + GUID_LE + b"\x01\x02"),
        # MBR signature with bytes beyond the 32-bit signature
        node(4, 1, struct.pack("<IQQ", 1, 2, 3) + b"\1\2\3\4\5" + bytes(11) + b"\x01\x01"),
        # File paths: no NUL, odd length, embedded NUL, control character, lone surrogate,
        # unbalanced parenthesis, character outside printable text
        node(4, 4, "abc".encode("utf-16-le")),
        node(4, 4, b"a\0b\0\0"),
        node(4, 4, ucs2z("a") + ucs2z("b")),
        node(4, 4, ucs2z("a\tb")),
        node(4, 4, b"\x00\xd8\0\0"),
        node(4, 4, ucs2z("a(b")),
        node(4, 4, ucs2z("a)b")),
        node(4, 4, ucs2z("a\u00a0b")),
        # Uri: non-ASCII, control characters, unbalanced parentheses
        node(3, 24, "http://ü".encode()),
        node(3, 24, b"http://a\n"),
        node(3, 24, b"http://a)"),
        # Offset with a non-zero reserved field
        node(4, 8, struct.pack("<IQQ", 1, 2, 3)),
    ],
)
def test_unrepresentable_known_nodes_fall_back_exactly(raw: bytes) -> None:
    text = to_text(raw + END)
    assert text.startswith(f"Path({raw[0]},{raw[1]},")
    assert from_text(text) == raw + END


# --- property: every well-formed binary path round-trips exactly ---------------------------

# (type, subtype, data length) of the fixed-layout nodes, to hit the known renderers
FIXED_SHAPES = [
    (1, 1, 2), (1, 3, 20), (1, 5, 4), (2, 1, 8), (3, 2, 4), (3, 5, 2), (3, 11, 33),
    (3, 18, 6), (3, 23, 12), (4, 1, 38), (4, 2, 20), (4, 6, 16), (4, 7, 16), (4, 8, 20),
]  # fmt: skip
# every value of these layouts has a text form, so they must never fall back to Path()
ALWAYS_NAMED = [shape for shape in FIXED_SHAPES if shape[:2] not in ((4, 1), (4, 8))]


@st.composite
def fixed_nodes(draw: st.DrawFn, shapes: list[tuple[int, int, int]] = FIXED_SHAPES) -> bytes:
    node_type, subtype, size = draw(st.sampled_from(shapes))
    data = bytearray(draw(st.binary(min_size=size, max_size=size)))
    if (node_type, subtype) == (4, 1) and draw(st.booleans()):  # make a valid MBR or GPT HD
        kind = draw(st.sampled_from([1, 2]))
        data[-2:] = bytes((kind, kind))
        if kind == 1:
            data[24:36] = bytes(12)
    if (node_type, subtype) == (4, 8) and draw(st.booleans()):
        data[:4] = bytes(4)
    return node(node_type, subtype, bytes(data))


def random_nodes() -> st.SearchStrategy[bytes]:
    return st.builds(
        node,
        st.integers(1, 5),
        st.integers(0, 255),
        st.binary(max_size=48),
    )


def other_type_nodes() -> st.SearchStrategy[bytes]:
    types = st.integers(0, 255).filter(lambda t: t != 0x7F)
    return st.builds(node, types, st.integers(0, 255), st.binary(max_size=16))


def vendor_nodes() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda kind, guid, extra: node(kind[0], kind[1], guid + extra),
        st.sampled_from([(1, 4), (3, 10), (4, 3)]),
        st.binary(min_size=16, max_size=16),
        st.binary(max_size=8),
    )


def file_nodes() -> st.SearchStrategy[bytes]:
    chars = st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"])
    return st.builds(lambda t: node(4, 4, ucs2z(t.replace("\0", ""))), st.text(chars, max_size=20))


def uri_nodes() -> st.SearchStrategy[bytes]:
    return st.builds(lambda b: node(3, 24, b), st.binary(max_size=24))


any_node = st.one_of(
    random_nodes(),
    other_type_nodes(),
    fixed_nodes(),
    vendor_nodes(),
    file_nodes(),
    uri_nodes(),
    st.just(END_INSTANCE),
)


@settings(max_examples=500)
@given(st.lists(any_node, max_size=8))
def test_round_trip_is_exact(nodes: list[bytes]) -> None:
    raw = b"".join(nodes) + END
    text = to_text(raw)
    assert from_text(text) == raw
    assert to_text(from_text(text)) == text


@given(fixed_nodes(ALWAYS_NAMED))
def test_full_range_layouts_never_fall_back(raw: bytes) -> None:
    assert not to_text(raw + END).startswith("Path(")


ascii_paths = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)


@given(st.lists(ascii_paths, min_size=1, max_size=3))
def test_plain_file_paths_print_as_file(paths: list[str]) -> None:
    raw = b"".join(node(4, 4, ucs2z(p)) for p in paths) + END
    text = to_text(raw)
    if not any("(" in p or ")" in p for p in paths):
        assert text == "/".join(f"File({p})" for p in paths)
    assert from_text(text) == raw


# --- malformed binary ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing End Entire"),
        (node(1, 1, b"\0\1"), "missing End Entire node: data ends before node 1 at offset 0x6"),
        (b"\x01\x01", "node 0 at offset 0x0: truncated header"),
        (node(1, 1, b"\0\1") + b"\x7f\xff", "node 1 at offset 0x6: truncated header"),
        (b"\x01\x01\x00\x00" + END, "node 0 at offset 0x0: length 0 is less than"),
        (b"\x01\x01\x03\x00" + END, "length 3 is less than the 4-byte header"),
        (b"\x01\x01\x10\x00\x00\x01" + END, "length 16 runs past the end of data"),
        (node(1, 1, b"\0\1")[:-1], "node 0 at offset 0x0: length 6 runs past"),
        (END + b"\0", "1 trailing byte(s) after the End Entire node"),
        (END + END, "4 trailing byte(s) after the End Entire node"),
        (b"\x7f\xff\x06\x00\x00\x00", "end node has length 6, expected 4"),
        (b"\x7f\x01\x05\x00\x00" + END, "end node has length 5, expected 4"),
    ],
)
def test_malformed_binary(raw: bytes, message: str) -> None:
    with pytest.raises(DevicePathError, match=re.escape(message)):
        to_text(raw)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_parse_or_raise_device_path_error(raw: bytes) -> None:
    try:
        text = to_text(raw)
    except DevicePathError:
        return
    assert from_text(text) == raw


# --- malformed text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("garbage", "cannot parse device path node 'garbage'"),
        ("Pci(0x1,0x0)/junk", "cannot parse device path node 'junk'"),
        ("Pci(1,2)x", "cannot parse device path node 'Pci(1,2)x'"),
        ("Foo(1)", "unknown device path node name 'Foo'"),
        ("PciRoot(0)/Bogus(1,2)", "unknown device path node name 'Bogus'"),
        ("pci(1,2)", "unknown device path node name 'pci'"),
        ("Pci(1,2", "unbalanced '('"),
        ("Pci(1,2))", "unbalanced ')' at position 8"),
        (")Pci(1,2)", "unbalanced ')' at position 0"),
        ("Pci(1,2)//Pci(1,2)", "empty node next to '/'"),
        ("/Pci(1,2)", "empty node next to '/'"),
        ("Pci(1,2)/", "empty node next to '/'"),
        ("Pci(1,2)/,", "empty node next to '/'"),
        ("Pci(1)", "Pci() takes 2 argument(s), got 1"),
        ("Pci(1,2,3)", "got 3"),
        ("Pci(0x100,0)", "argument 1: 0x100 does not fit in 8 bits"),
        ("Pci(-1,0)", "'-1' is not a decimal or 0x-hex number"),
        ("Pci(1_0,0)", "'1_0' is not a decimal"),
        ("Pci(0x,0)", "'0x' is not"),
        ("Ctrl(4294967296)", "does not fit in 32 bits"),
        ("VenHw(not-a-guid)", "VenHw() GUID: 'not-a-guid' is not a GUID"),
        (f"VenHw({GUID},abc)", "'abc' is not an even-length hex string"),
        (f"VenHw({GUID},zz)", "'zz' is not an even-length hex string"),
        ("HD(1,XYZ,0,0,0)", "partition format 'XYZ' is not GPT or MBR"),
        ("HD(1,GPT,0,0,0)", "HD() signature: '0' is not a GUID"),
        ("HD(1,MBR,0x100000000,0,0)", "does not fit in 32 bits"),
        ("NVMe(1,00-11)", "is not 8 hex bytes"),
        ("NVMe(1,00-11-22-33-44-55-66-777)", "is not 8 hex bytes"),
        ("MAC(" + "00" * 33 + ",1)", "33 bytes, at most 32"),
        ("Uri(http://ü)", "non-ASCII"),
        ("File(a\0b)", "File() path contains NUL"),
        ("File(\U0001f600)", "outside UCS-2"),
        ("Path(127,255)", "cannot make an end node"),
        ("Path(127,1)", "cannot make an end node"),
        ("Path(256,1)", "Path() type: 256 does not fit in 8 bits"),
        ("Path(1)", "Path() takes 2 to 3 argument(s), got 1"),
        ("Msg()", "Msg() subtype: '' is not a decimal"),
        ("Path(1,1," + "00" * 0xFFFC + ")", "more than the 16-bit length allows"),
    ],
)
def test_malformed_text(text: str, message: str) -> None:
    with pytest.raises(DevicePathError, match=re.escape(message)):
        from_text(text)


def test_errors_name_the_offending_token() -> None:
    with pytest.raises(DevicePathError) as info:
        from_text("PciRoot(0x0)/Pci(0x2,0x100)/File(x)")
    assert "'Pci(0x2,0x100)'" in str(info.value)
    assert "argument 2" in str(info.value)


def test_device_path_error_is_value_error() -> None:
    assert issubclass(DevicePathError, ValueError)
    assert dp.END_ENTIRE_NODE == END
