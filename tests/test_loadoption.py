"""EFI_LOAD_OPTION (UEFI 2.10 §3.1.3) and boot option numbers (§3.3)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from efird.efi import loadoption as lo
from efird.efi.loadoption import LoadOption, LoadOptionError, boot_name, parse_boot_number

END = bytes.fromhex("7fff0400")
SATA_PATH = bytes.fromhex("02010c00d041030a0000000001010600021f03120a000000ffff0000") + END

# Boot0001 and Boot0000 from Debian's OVMF_VARS_4M.ms.fd
OVMF_BOOT0001 = bytes.fromhex(
    "01000000" "2000"  # LOAD_OPTION_ACTIVE, FilePathListLength 32
    "55004500460049002000510045004d005500200048004100520044004400490053004b00"
    "200051004d0030003000300030003100200000"
    "0002010c00d041030a0000000001010600021f03120a000000ffff00007fff0400"
    "4eac0881119f594d850ee21a522c59b2"
)
OVMF_BOOT0000 = bytes.fromhex(
    "09010000" "2c00"  # ACTIVE | HIDDEN | CATEGORY_APP, FilePathListLength 44
    "5500690041007000700000"
    "0004071400c9bdb87cebf8344faaea3ee4af6516a1"
    "0406140021aa2c4614760345836e8ab6f46623317fff0400"
)
OVMF_MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")


def test_unpack_ovmf_disk_entry() -> None:
    option = LoadOption.unpack(OVMF_BOOT0001)
    assert option == LoadOption(
        attributes=lo.LOAD_OPTION_ACTIVE,
        description="UEFI QEMU HARDDISK QM00001 ",
        device_path=SATA_PATH,
        optional_data=bytes.fromhex("4eac0881119f594d850ee21a522c59b2"),
    )
    assert option.pack() == OVMF_BOOT0001
    assert option.describe() == {
        "attributes": 1,
        "active": True,
        "hidden": False,
        "category": "boot",
        "description": "UEFI QEMU HARDDISK QM00001 ",
        "device_path": "PciRoot(0x0)/Pci(0x1f,0x2)/Sata(0x0,0xffff,0x0)",
        "device_path_hex": SATA_PATH.hex(),
        "optional_data": "4eac0881119f594d850ee21a522c59b2",
    }


def test_unpack_ovmf_ui_app() -> None:
    option = LoadOption.unpack(OVMF_BOOT0000)
    assert option.pack() == OVMF_BOOT0000
    info = option.describe()
    assert info["attributes"] == 0x109
    assert info["active"] and info["hidden"]
    assert info["category"] == "app"
    assert info["description"] == "UiApp"
    assert info["device_path"] == (
        "Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)"
    )
    assert info["optional_data"] == ""


def test_every_boot_entry_in_debian_ovmf_round_trips() -> None:
    from efird.formats import edk2_fd

    entries = [
        v for v in edk2_fd.read(OVMF_MS.read_bytes(), str(OVMF_MS))
        if re.fullmatch(r"Boot[0-9A-F]{4}", v.name)
    ]
    assert entries
    for var in entries:
        option = LoadOption.unpack(var.data)
        assert option.pack() == var.data
        assert isinstance(option.describe()["device_path"], str)


def test_pack_layout_by_hand() -> None:
    option = LoadOption(
        attributes=lo.LOAD_OPTION_ACTIVE | lo.LOAD_OPTION_FORCE_RECONNECT,
        description="Hi",
        device_path=END,
        optional_data=b"\xaa",
    )
    assert option.pack() == bytes.fromhex("03000000" "0400" "48006900" "0000" "7fff0400" "aa")


def test_describe_unparseable_path() -> None:
    option = LoadOption(0, "x", b"\x01\x01\x02\x00")
    info = option.describe()
    assert info["device_path"]["hex"] == "01010200"
    assert "length 2 is less than the 4-byte header" in info["device_path"]["error"]
    assert info["device_path_hex"] == "01010200"
    assert info["active"] is False
    assert info["category"] == "boot"


def test_describe_reserved_category() -> None:
    assert LoadOption(0x200, "", END).describe()["category"] == "0x0200"
    assert LoadOption(0x1F01, "", END).describe()["category"] == "0x1f00"


def test_empty_description_and_path() -> None:
    raw = bytes.fromhex("00000000" "0000" "0000")
    option = LoadOption.unpack(raw)
    assert option == LoadOption(0, "", b"")
    assert option.pack() == raw
    assert "missing End Entire" in option.describe()["device_path"]["error"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "shorter than its 6-byte header"),
        (bytes.fromhex("0100000004"), "5 bytes, shorter than its 6-byte header"),
        (bytes.fromhex("010000000400"), "description is not NUL-terminated"),
        (bytes.fromhex("0100000004004100"), "description is not NUL-terminated"),
        (bytes.fromhex("010000000400410000"), "odd number of bytes (3)"),
        (bytes.fromhex("01000000040041"), "odd number of bytes (1)"),
        # the NUL must be a whole CHAR16: 41 00 | 00 41 has no aligned NUL
        (bytes.fromhex("010000000400" "4100" "0041"), "not NUL-terminated"),
        (bytes.fromhex("010000000400" "0000" "7fff04"), "FilePathListLength 4 runs past"),
        (bytes.fromhex("01000000ffff" "0000") + END, "(4 bytes after the description)"),
    ],
)
def test_unpack_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(LoadOptionError, match=re.escape(message)):
        LoadOption.unpack(raw)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attributes": -1}, "do not fit in 32 bits"),
        ({"attributes": 1 << 32}, "do not fit in 32 bits"),
        ({"description": "a\0b"}, "description contains NUL"),
        ({"description": "\U0001f600"}, "outside UCS-2"),
        ({"device_path": bytes(0x10000)}, "FilePathListLength is 16-bit"),
    ],
)
def test_invalid_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"attributes": 1, "description": "x", "device_path": END}
    fields.update(kwargs)
    with pytest.raises(LoadOptionError, match=re.escape(message)):
        LoadOption(**fields)  # type: ignore[arg-type]


def test_errors_are_value_errors() -> None:
    assert issubclass(LoadOptionError, ValueError)


descriptions = st.text(
    st.characters(max_codepoint=0xFFFF, exclude_characters="\0"), max_size=20
)


@given(
    st.integers(0, 0xFFFFFFFF),
    descriptions,
    st.binary(max_size=64),
    st.binary(max_size=32),
)
def test_pack_unpack_round_trip(attributes: int, text: str, path: bytes, extra: bytes) -> None:
    option = LoadOption(attributes, text, path, extra)
    assert LoadOption.unpack(option.pack()) == option


@given(st.binary(max_size=80))
def test_unpack_arbitrary_bytes(raw: bytes) -> None:
    try:
        option = LoadOption.unpack(raw)
    except LoadOptionError:
        return
    assert option.pack() == raw  # lone surrogates in the description survive too
    option.describe()


# --- boot option numbers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0003", 3),
        ("Boot0003", 3),
        ("boot000a", 10),
        ("BOOT000A", 10),
        ("3", 3),
        ("0x3", 3),
        ("0X3", 3),
        ("000A", 10),
        ("a", 10),
        ("10", 16),  # hex, as efibootmgr -b
        ("FFFF", 0xFFFF),
        ("0xffff", 0xFFFF),
        ("0000", 0),
        (" 0003\n", 3),
    ],
)
def test_parse_boot_number(text: str, number: int) -> None:
    assert parse_boot_number(text) == number


@pytest.mark.parametrize(
    "text",
    ["", " ", "10000", "0x10000", "Boot3", "Boot00003", "Boot0x03", "-1", "+1", "1_0", "g", "0x",
     "Boot", "Driver0001", "1.0"],
)  # fmt: skip
def test_parse_boot_number_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="boot option number"):
        parse_boot_number(text)


@pytest.mark.parametrize(
    ("number", "name"), [(0, "Boot0000"), (10, "Boot000A"), (0xFFFF, "BootFFFF")]
)
def test_boot_name(number: int, name: str) -> None:
    assert boot_name(number) == name
    assert parse_boot_number(name) == number


@pytest.mark.parametrize("number", [-1, 0x10000])
def test_boot_name_range(number: int) -> None:
    with pytest.raises(ValueError, match=re.escape("outside 0..0xFFFF")):
        boot_name(number)


@given(st.integers(0, 0xFFFF))
def test_boot_numbers_round_trip(number: int) -> None:
    assert parse_boot_number(boot_name(number)) == number
    assert parse_boot_number(f"{number:x}") == number
    assert parse_boot_number(f"{number:#x}") == number
