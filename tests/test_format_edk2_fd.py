"""EDK2 ``.fd`` variable stores: read Debian's OVMF images, write images OVMF accepts, and
refuse broken files with a message naming the file and the fault."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography import x509

from efird.efi import guid, siglist
from efird.efi import time as efitime
from efird.formats import edk2_fd
from efird.formats.edk2_fd import FormatError
from efird.variables.model import Variable

EMPTY = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
RECORDS = 0x64  # FV header 0x48 + store header 0x1c: first record in Debian's images
AUTH_HEADER = 60

needs_ovmf = pytest.mark.skipif(
    not (EMPTY.is_file() and MS.is_file()), reason="Debian ovmf not installed"
)


@pytest.fixture(scope="module")
def empty() -> bytes:
    if not EMPTY.is_file():
        return edk2_fd.build_empty()
    return EMPTY.read_bytes()


@pytest.fixture(scope="module")
def ms() -> bytes:
    if not MS.is_file():
        pytest.skip("Debian ovmf not installed")
    return MS.read_bytes()


def _by_name(variables: list[Variable]) -> dict[str, Variable]:
    return {v.name: v for v in variables}


def _var(name: str, data: bytes = b"x", attributes: int = 0x7) -> Variable:
    return Variable(guid=guid.EFI_GLOBAL_VARIABLE, name=name, attributes=attributes, data=data)


# --- reading Debian's images ------------------------------------------------------------


def test_empty_store_has_no_variables(empty: bytes) -> None:
    assert edk2_fd.probe(empty)
    assert edk2_fd.read(empty, "empty") == []


@needs_ovmf
def test_build_empty_matches_debian_images() -> None:
    """Without a template, write() must still produce what OVMF's build produces."""
    assert edk2_fd.build_empty(0x84000) == EMPTY.read_bytes()
    small = Path("/usr/share/OVMF/OVMF_VARS.fd")
    if small.is_file():
        assert edk2_fd.build_empty(0x20000) == small.read_bytes()


def test_ms_store_has_secure_boot_keys(ms: bytes) -> None:
    found = _by_name(edk2_fd.read(ms, str(MS)))
    expected = {
        "PK": guid.EFI_GLOBAL_VARIABLE,
        "KEK": guid.EFI_GLOBAL_VARIABLE,
        "db": guid.EFI_IMAGE_SECURITY_DATABASE,
        "dbx": guid.EFI_IMAGE_SECURITY_DATABASE,
    }
    for name, vendor in expected.items():
        assert found[name].guid == vendor
        assert found[name].attributes == 0x27
        assert found[name].timestamp != efitime.ZERO  # time-based authenticated: time kept
    assert found["Boot0000"].timestamp == efitime.ZERO
    for name in ("db", "KEK"):
        certs = [
            x509.load_der_x509_certificate(der)
            for der in siglist.x509_certificates(found[name].data)
        ]
        assert certs
        assert any("Microsoft" in c.subject.rfc4514_string() for c in certs)


def test_ms_store_skips_deleted_copies(ms: bytes) -> None:
    """The image holds deleted (0x3C/0x3D) copies too; only one live copy per key comes out."""
    variables = edk2_fd.read(ms, "ms")
    keys = [v.key for v in variables]
    assert len(keys) == len(set(keys))
    assert _by_name(variables)["CustomMode"].data == b"\x00"
    assert _by_name(variables)["VendorKeysNv"].data == b"\x00"


def test_probe_rejects_other_data() -> None:
    assert not edk2_fd.probe(b"")
    assert not edk2_fd.probe(b"\xff" * 4096)


# --- writing ----------------------------------------------------------------------------


def test_round_trip(ms: bytes, empty: bytes) -> None:
    original = edk2_fd.read(ms, "ms")
    image = edk2_fd.write(original, template=empty)
    assert len(image) == len(empty)
    assert edk2_fd.read(image, "written") == original
    # everything after the variable store (FTW areas) is the template's
    assert image[0x40000:] == empty[0x40000:]
    assert image[:RECORDS] == empty[:RECORDS]


def test_default_template(ms: bytes) -> None:
    original = edk2_fd.read(ms, "ms")
    assert edk2_fd.read(edk2_fd.write(original), "written") == original


def test_write_into_used_template_replaces_its_records(ms: bytes) -> None:
    """A template's own variables are not kept: the store holds exactly what was passed."""
    mine = [_var("Timeout", b"\x05\x00")]
    image = edk2_fd.write(mine, template=ms)
    assert edk2_fd.read(image, "written") == mine
    assert image[0x5998:0x40000] == b"\xff" * (0x40000 - 0x5998)


def test_write_record_layout(empty: bytes) -> None:
    image = edk2_fd.write([_var("A", b"abc")], template=empty)
    start_id, state, _r, attributes, count = struct.unpack_from("<HBBIQ", image, RECORDS)
    assert (start_id, state, attributes, count) == (0x55AA, 0x3F, 0x7, 0)
    pk_index, name_size, data_size = struct.unpack_from("<III", image, RECORDS + 32)
    assert (pk_index, name_size, data_size) == (0, 4, 3)
    end = RECORDS + AUTH_HEADER + 4 + 3
    assert image[end] == 0xFF  # padding to the 4-byte header alignment, then erased flash


def test_build_empty_template(empty: bytes) -> None:
    variables = [_var("Lang", b"eng")]
    image = edk2_fd.write(variables, template=edk2_fd.build_empty(0x20000))
    assert len(image) == 0x20000
    assert edk2_fd.read(image, "small") == variables


def test_non_ascii_names_round_trip(empty: bytes) -> None:
    variables = [_var("Größe", b"1"), _var("変数", b"2"), _var("\ud800x", b"3")]
    assert edk2_fd.read(edk2_fd.write(variables, template=empty), "u") == variables


def test_timestamp_round_trips(empty: bytes) -> None:
    stamp = bytes.fromhex("e907030a023527000000000000000000")
    var = Variable(
        guid=guid.EFI_GLOBAL_VARIABLE, name="PK", attributes=0x27, data=b"k", timestamp=stamp
    )
    assert edk2_fd.read(edk2_fd.write([var], template=empty), "t") == [var]


def test_volume_full(empty: bytes) -> None:
    big = [_var(f"Big{i}", b"\0" * 0x10000) for i in range(4)]
    with pytest.raises(FormatError, match="volume full"):
        edk2_fd.write(big, template=empty)
    # exactly filling the store is fine
    room = 0x40000 - RECORDS
    exact = [_var("Fill", b"\0" * (room - AUTH_HEADER - 10))]
    assert edk2_fd.read(edk2_fd.write(exact, template=empty), "exact") == exact


# --- live-copy selection ------------------------------------------------------------------


def test_in_transition_copy_used_only_without_added_copy(empty: bytes) -> None:
    old, new = _var("V", b"old"), _var("V", b"new")
    image = bytearray(edk2_fd.write([old, new], template=empty))
    image[RECORDS + 2] = 0x3E  # the old copy is mid-update: the new one wins
    assert edk2_fd.read(bytes(image), "t") == [new]
    image = bytearray(edk2_fd.write([old], template=empty))
    image[RECORDS + 2] = 0x3E  # interrupted before the new copy was added: old one stays
    assert edk2_fd.read(bytes(image), "t") == [old]
    image[RECORDS + 2] = 0x3C  # deleted
    assert edk2_fd.read(bytes(image), "t") == []


# --- broken files ---------------------------------------------------------------------------


def _raises(data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match) as info:
        edk2_fd.read(data, "broken.fd")
    assert str(info.value).startswith("broken.fd: ")
    assert isinstance(info.value, ValueError)


def test_truncated_file(ms: bytes) -> None:
    _raises(ms[:0x20000], "truncated")
    _raises(ms[:40], "truncated")


def test_bad_fv_signature(ms: bytes) -> None:
    broken = bytearray(ms)
    broken[0x28:0x2C] = b"_FVX"
    _raises(bytes(broken), "signature")
    assert not edk2_fd.probe(bytes(broken))


def test_bad_checksum(ms: bytes) -> None:
    broken = bytearray(ms)
    broken[0x32] ^= 0x01
    _raises(bytes(broken), "checksum")


def test_name_size_past_store_end(empty: bytes) -> None:
    image = bytearray(edk2_fd.write([_var("A")], template=empty))
    struct.pack_into("<I", image, RECORDS + 36, 0x50000)
    _raises(bytes(image), "offset 0x64.*past the variable store end")


def test_name_size_odd(empty: bytes) -> None:
    image = bytearray(edk2_fd.write([_var("AB")], template=empty))
    struct.pack_into("<I", image, RECORDS + 36, 5)
    _raises(bytes(image), "NameSize 5 is odd")


def test_header_past_store_end(empty: bytes) -> None:
    fill = _var("Fill", b"\0" * (0x3FFF8 - RECORDS - AUTH_HEADER - 10))  # next record at 0x3fff8
    image = bytearray(edk2_fd.write([fill], template=empty))
    image[0x3FFF8:0x3FFFA] = b"\xaa\x55"
    _raises(bytes(image), "truncated record at offset 0x3fff8")


def test_store_not_formatted(empty: bytes) -> None:
    image = bytearray(empty)
    image[0x48 + 20] = 0xFF
    _raises(bytes(image), "not formatted")
