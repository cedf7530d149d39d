"""OVMF/EDK2 ``.fd`` variable stores (the ``OVMF_VARS*.fd`` files QEMU maps as pflash).

Layout, checked against EDK2 (MdePkg/Include/Pi/PiFirmwareVolume.h,
MdeModulePkg/Include/Guid/VariableFormat.h, SystemNvDataGuid.h) and Debian's ``ovmf``
images:

* EFI_FIRMWARE_VOLUME_HEADER: ZeroVector[16], FileSystemGuid (gEfiSystemNvDataFvGuid),
  FvLength u64, Signature ``_FVH``, Attributes u32, HeaderLength u16, Checksum u16 (the
  16-bit sum of the HeaderLength bytes is 0), ExtHeaderOffset u16, Reserved u8,
  Revision u8, then the block map ({NumBlocks u32, Length u32}... {0, 0}).
* VARIABLE_STORE_HEADER at HeaderLength: Signature GUID (authenticated or plain), Size u32
  (store header plus records, not the FV header), Format 0x5A, State 0xFE, 6 reserved bytes.
* Records, each starting on a 4-byte boundary (HEADER_ALIGNMENT; name and data themselves
  unpadded): AUTHENTICATED_VARIABLE_HEADER (60 bytes) or VARIABLE_HEADER (32 bytes), then
  Name (NameSize bytes, NUL-terminated CHAR16) and Data. The walk ends at the first header
  whose StartId is not 0x55AA (erased flash) or at the store end.
* After the store, in the same FV: the FTW event log and working block, then the FTW
  spare area. They are kept byte for byte from the template when writing.

Which copy of a variable is live follows EDK2's FindVariableEx: a VAR_ADDED record wins; a
record in state VAR_ADDED & VAR_IN_DELETED_TRANSITION counts only when no VAR_ADDED copy
of the same (GUID, name) exists. Everything else (deleted, header-only) is history.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from efird.efi import attributes as attrs
from efird.efi import time as efitime
from efird.efi.guid import guid_bytes
from efird.efi.ucs2 import decode_name, encode_name
from efird.formats.errors import FormatError
from efird.variables.model import Key, Variable

__all__ = [
    "DEFAULT_SIZE",
    "DEFAULT_TEMPLATE",
    "FormatError",
    "build_empty",
    "probe",
    "read",
    "write",
]

#: Debian's empty 4 MiB-flash variable image, used as the default write template.
DEFAULT_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: Size of OVMF's VARS image in the 4 MiB flash layout (0x84000 = 540672 bytes).
DEFAULT_SIZE = 0x84000

SYSTEM_NV_DATA_FV_GUID = guid_bytes("fff12b8d-7696-4c8b-a985-2747075b4f50")
AUTHENTICATED_VARIABLE_GUID = guid_bytes("aaf32c78-947b-439a-a180-2e144ec37792")
VARIABLE_GUID = guid_bytes("ddcf3616-3275-4164-98b6-fe85707ffe7d")
FTW_WORKING_BLOCK_SIGNATURE = guid_bytes("9e58292b-7c68-497d-a0ce-6500fd9f1b95")

FV_SIGNATURE = b"_FVH"
# ZeroVector, FileSystemGuid, FvLength, Signature, Attributes, HeaderLength, Checksum,
# ExtHeaderOffset, Reserved, Revision
_FV_HEADER = struct.Struct("<16s16sQ4sIHHHBB")
_BLOCK = struct.Struct("<II")
_STORE_HEADER = struct.Struct("<16sIBBHI")  # Signature GUID, Size, Format, State, Reserved x2
_AUTH_HEADER = struct.Struct("<HBBIQ16sIII16s")  # 60 bytes
_PLAIN_HEADER = struct.Struct("<HBBIII16s")  # 32 bytes

VARIABLE_DATA = 0x55AA
VAR_IN_DELETED_TRANSITION = 0xFE
VAR_DELETED = 0xFD
VAR_HEADER_VALID_ONLY = 0x7F
VAR_ADDED = 0x3F
VAR_ADDED_IN_TRANSITION = VAR_ADDED & VAR_IN_DELETED_TRANSITION  # 0x3E
STORE_FORMATTED = 0x5A
STORE_HEALTHY = 0xFE
HEADER_ALIGNMENT = 4

# What OVMF's build puts in a fresh image (FV attributes 0x0004FEFF, revision 2, 4 KiB
# blocks): used only when no template is available.
_FV_ATTRIBUTES = 0x0004FEFF
_FV_REVISION = 2
_BLOCK_SIZE = 0x1000


def _align(offset: int) -> int:
    return (offset + HEADER_ALIGNMENT - 1) & ~(HEADER_ALIGNMENT - 1)


def _sum16(raw: bytes) -> int:
    return sum(struct.unpack(f"<{len(raw) // 2}H", raw)) & 0xFFFF


class _Layout:
    """Where the store sits in an image, found once and shared by read and write."""

    __slots__ = ("authenticated", "records_start", "store_end", "store_start")

    def __init__(self, store_start: int, store_end: int, authenticated: bool) -> None:
        self.store_start = store_start
        self.store_end = store_end
        self.records_start = _align(store_start + _STORE_HEADER.size)
        self.authenticated = authenticated


def _layout(data: bytes, source: str) -> _Layout:
    """Validate the FV and store headers; refuse anything OVMF would not use as-is."""
    if len(data) < _FV_HEADER.size + 2 * _BLOCK.size:
        raise FormatError(
            source, f"truncated: {len(data)} bytes is too short for a firmware volume header"
        )
    (
        _zero,
        fs_guid,
        fv_length,
        signature,
        _attributes,
        header_length,
        _checksum,
        _ext_offset,
        _reserved,
        _revision,
    ) = _FV_HEADER.unpack_from(data, 0)
    if signature != FV_SIGNATURE:
        raise FormatError(source, f"bad firmware volume signature {signature!r} (expected b'_FVH')")
    if fs_guid != SYSTEM_NV_DATA_FV_GUID:
        raise FormatError(
            source,
            "firmware volume is not an NV data volume (FileSystemGuid is not "
            "gEfiSystemNvDataFvGuid)",
        )
    if (
        header_length < _FV_HEADER.size + 2 * _BLOCK.size
        or header_length % 2
        or header_length > len(data)
    ):
        raise FormatError(source, f"bad firmware volume HeaderLength {header_length}")
    if _sum16(data[:header_length]) != 0:
        raise FormatError(source, "bad firmware volume header checksum")
    if fv_length > len(data):
        raise FormatError(
            source, f"truncated: FvLength is {fv_length} bytes but the file has {len(data)}"
        )
    store_start = header_length
    if store_start + _STORE_HEADER.size > fv_length:
        raise FormatError(source, "truncated: no room for the variable store header")
    store_sig, store_size, fmt, state, _r0, _r1 = _STORE_HEADER.unpack_from(data, store_start)
    if store_sig == AUTHENTICATED_VARIABLE_GUID:
        authenticated = True
    elif store_sig == VARIABLE_GUID:
        authenticated = False
    else:
        raise FormatError(
            source,
            "variable store signature is neither gEfiAuthenticatedVariableGuid "
            "nor gEfiVariableGuid",
        )
    if fmt != STORE_FORMATTED:
        raise FormatError(
            source, f"variable store is not formatted (Format {fmt:#04x}, expected 0x5a)"
        )
    if state != STORE_HEALTHY:
        raise FormatError(
            source, f"variable store is not healthy (State {state:#04x}, expected 0xfe)"
        )
    if store_size < _STORE_HEADER.size or store_start + store_size > fv_length:
        raise FormatError(
            source,
            f"variable store Size {store_size:#x} runs past the firmware volume end "
            f"({fv_length:#x})",
        )
    return _Layout(store_start, store_start + store_size, authenticated)


def probe(data: bytes) -> bool:
    """True when data is an EDK2 firmware volume holding a usable variable store, so callers
    can pick a reader by content rather than by file name."""
    try:
        _layout(data, "<probe>")
    except FormatError:
        return False
    return True


def _records(data: bytes, layout: _Layout, source: str) -> list[tuple[int, int, Variable]]:
    """Every record in the store as (offset, State, Variable). Bounds are checked for all
    records, because the walk needs them; names only for records that may be live."""
    header = _AUTH_HEADER if layout.authenticated else _PLAIN_HEADER
    out: list[tuple[int, int, Variable]] = []
    offset = layout.records_start
    end = layout.store_end
    while offset + 2 <= end:
        (start_id,) = struct.unpack_from("<H", data, offset)
        if start_id != VARIABLE_DATA:
            break
        if offset + header.size > end:
            raise FormatError(
                source,
                f"truncated record at offset {offset:#x}: header runs past the "
                f"variable store end ({end:#x})",
            )
        timestamp = efitime.ZERO
        if layout.authenticated:
            (
                _sid,
                state,
                _res,
                attributes,
                _count,
                timestamp,
                _pk_index,
                name_size,
                data_size,
                guid,
            ) = _AUTH_HEADER.unpack_from(data, offset)
        else:
            _sid, state, _res, attributes, name_size, data_size, guid = _PLAIN_HEADER.unpack_from(
                data, offset
            )
        name_start = offset + header.size
        data_start = name_start + name_size
        data_end = data_start + data_size
        if data_end > end:
            raise FormatError(
                source,
                f"record at offset {offset:#x}: name and data ({name_size} + "
                f"{data_size} bytes) run past the variable store end ({end:#x})",
            )
        if state in (VAR_ADDED, VAR_ADDED_IN_TRANSITION):
            if name_size % 2:
                raise FormatError(
                    source, f"record at offset {offset:#x}: NameSize {name_size} is odd"
                )
            name = decode_name(data[name_start:data_start])
            if name is None:
                raise FormatError(
                    source,
                    f"record at offset {offset:#x}: name is not a NUL-terminated CHAR16 string",
                )
            if not attributes & attrs.AT:
                timestamp = efitime.ZERO
            out.append(
                (
                    offset,
                    state,
                    Variable(
                        guid=guid,
                        name=name,
                        attributes=attributes,
                        data=data[data_start:data_end],
                        timestamp=timestamp,
                    ),
                )
            )
        offset = _align(data_end)
    return out


def read(data: bytes, source: str = "<fd>") -> list[Variable]:
    """The live variables of an EDK2 ``.fd`` image, in store order.

    Deleted and half-written copies are dropped the way EDK2 drops them, so the result is
    what the firmware would report through GetVariable after booting this image.
    """
    layout = _layout(data, source)
    records = _records(data, layout, source)
    added: set[Key] = {v.key for _off, state, v in records if state == VAR_ADDED}
    live: dict[Key, Variable] = {}
    for _off, state, var in records:
        if state == VAR_ADDED or var.key not in added:
            live.setdefault(var.key, var)
    return list(live.values())


def _record(var: Variable, authenticated: bool) -> bytes:
    name = encode_name(var.name)
    if authenticated:
        timestamp = var.timestamp if len(var.timestamp) == efitime.SIZE else efitime.ZERO
        head = _AUTH_HEADER.pack(
            VARIABLE_DATA,
            VAR_ADDED,
            0,
            var.attributes,
            0,
            timestamp,
            0,
            len(name),
            len(var.data),
            var.guid,
        )
    else:
        head = _PLAIN_HEADER.pack(
            VARIABLE_DATA, VAR_ADDED, 0, var.attributes, len(name), len(var.data), var.guid
        )
    body = head + name + var.data
    return body + b"\xff" * (_align(len(body)) - len(body))


def _ftw_working_block_header(size: int) -> bytes:
    """A valid, empty FTW working block header (EDK2 FaultTolerantWriteDxe): Signature,
    Crc32 (computed with the Crc field and the state byte erased), state byte with
    WorkingBlockValid set (0xFE), three reserved 0xFF bytes, WriteQueueSize."""
    queue = size - 32
    erased = FTW_WORKING_BLOCK_SIGNATURE + b"\xff" * 4 + b"\xff" * 4 + struct.pack("<Q", queue)
    crc = zlib.crc32(erased)
    return (
        FTW_WORKING_BLOCK_SIGNATURE
        + struct.pack("<I", crc)
        + b"\xfe\xff\xff\xff"
        + struct.pack("<Q", queue)
    )


def build_empty(size: int = DEFAULT_SIZE) -> bytes:
    """An empty image laid out as OVMF's build lays it out, for when no template exists.

    OVMF splits the VARS volume in halves: the first holds the FV header and the variable
    store, then a 4 KiB FTW event log and a 4 KiB FTW working block; the second half is the
    FTW spare area. For size 0x84000 (and 0x20000) this reproduces Debian's empty images
    byte for byte.
    """
    if size % (2 * _BLOCK_SIZE) or size < 8 * _BLOCK_SIZE:
        raise ValueError(
            f"image size {size:#x} must be a multiple of {2 * _BLOCK_SIZE:#x} and at least "
            f"{8 * _BLOCK_SIZE:#x}"
        )
    store_region = size // 2 - 2 * _BLOCK_SIZE
    header_length = _FV_HEADER.size + 2 * _BLOCK.size
    fv = bytearray(
        _FV_HEADER.pack(
            bytes(16),
            SYSTEM_NV_DATA_FV_GUID,
            size,
            FV_SIGNATURE,
            _FV_ATTRIBUTES,
            header_length,
            0,
            0,
            0,
            _FV_REVISION,
        )
        + _BLOCK.pack(size // _BLOCK_SIZE, _BLOCK_SIZE)
        + _BLOCK.pack(0, 0)
    )
    struct.pack_into("<H", fv, 0x32, (-_sum16(bytes(fv))) & 0xFFFF)
    store = _STORE_HEADER.pack(
        AUTHENTICATED_VARIABLE_GUID,
        store_region - header_length,
        STORE_FORMATTED,
        STORE_HEALTHY,
        0,
        0,
    )
    image = bytearray(b"\xff" * size)
    image[: len(fv)] = fv
    image[header_length : header_length + len(store)] = store
    working = store_region + _BLOCK_SIZE
    ftw = _ftw_working_block_header(_BLOCK_SIZE)
    image[working : working + len(ftw)] = ftw
    return bytes(image)


def write(
    variables: list[Variable], template: bytes | None = None, size: int = DEFAULT_SIZE
) -> bytes:
    """A complete ``.fd`` image holding exactly these variables, in list order.

    Everything outside the variable store's records (FV header, store header, FTW areas)
    comes from template, so the result stays the shape the firmware build expects. The
    template defaults to Debian's empty OVMF_VARS_4M.fd, or else to build_empty(size). Records
    are written fresh as VAR_ADDED, MonotonicCount 0, PubKeyIndex 0, and the rest of the
    store is erased flash (0xFF), i.e. what OVMF leaves after reclaiming the store.
    """
    if template is None:
        template = (
            DEFAULT_TEMPLATE.read_bytes() if DEFAULT_TEMPLATE.is_file() else build_empty(size)
        )
    source = "<template>"
    layout = _layout(template, source)
    records = b"".join(_record(v, layout.authenticated) for v in variables)
    room = layout.store_end - layout.records_start
    if len(records) > room:
        raise FormatError(
            source,
            f"volume full: {len(variables)} variables need {len(records)} bytes but "
            f"the variable store has {room}",
        )
    image = bytearray(template)
    image[layout.records_start : layout.records_start + len(records)] = records
    image[layout.records_start + len(records) : layout.store_end] = b"\xff" * (room - len(records))
    return bytes(image)
