"""Inputs the fuzzers (fuzz/) found that crashed efird or broke an oracle, replayed with the
clean outcome asserted. Bugs in files whose owners fix them are xfail(strict=True) until
fixed: the fix then turns them into failures that ask for the marker to go."""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.domain import Domain
from efird.efi import guid as g
from efird.efi.status import Status
from efird.envelope import HEADER_SIZE
from efird.store.base import StoreCorruptError, StoreError
from efird.store.sqlite import SqliteStore
from efird.variables.model import Variable
from efird.vhost.memory import GuestMemory, map_region
from efird.vhost.virtqueue import ChainError, Virtqueue
from fuzz.harness.common import is_open
from fuzz.harness.vhost import run_connection

VENDOR = g.guid_bytes("3b9a5d7e-1c2f-4a6b-8d9e-0f1a2b3c4d5e")
MEMORY_MAP = [(0, 0x9FC00, 1), (0x100000, 0x3FE00000, 1), (0x3FF00000, 0x40000, 0x101),
              (0x3FF40000, 0x40000, 0x102)]


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[Domain]:
    d = Domain(SqliteStore(tmp_path / "vm.efivars"), memory_map=MEMORY_MAP)
    yield d
    d.close()


def _status(response: bytes | bytearray) -> Status:
    return Status(struct.unpack_from("<Q", response, HEADER_SIZE + 8)[0])


# -- envelope: kexec GetRuntimeMap (fixed in efird/bootmem/handler.py) ----------------------
# fuzz target envelope, input 08 01 01 00 10 00 c8 00 00 ff ff 00 ff 00 00 ff a7 00 00 00
# 01 00 ... : DescriptorSize 0xa7ff0000ff00 passed the multiple-of-8 check and
# runtime_map_bytes allocated DescriptorSize - 40 bytes of padding per descriptor:
# MemoryError (OverflowError past sys.maxsize), DEVICE_ERROR to the guest.
RUNTIME_MAP_CRASH = bytes.fromhex(
    "2327cc23c48cba46aa82a272faad3214350000000000000001000000000000000000000000000000"
    "001000c80000ffff00ff0000ffa7000000010000000000000000006969690000000b000000")


def _runtime_map(descriptor_size: int, size: int = 0x4000) -> bytes:
    return c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQQQII", 1, 0, size,
                                                         descriptor_size, 1, 0) + bytes(size))


def test_runtime_map_huge_descriptor_size_is_invalid(domain: Domain) -> None:
    response = domain.dispatcher.dispatch(RUNTIME_MAP_CRASH)
    assert len(response) == len(RUNTIME_MAP_CRASH)
    assert _status(response) is Status.INVALID_PARAMETER


@pytest.mark.parametrize(("descriptor_size", "status"), [
    (4096, Status.SUCCESS), (4104, Status.INVALID_PARAMETER), (1 << 62, Status.INVALID_PARAMETER),
    (0, Status.SUCCESS), (40, Status.SUCCESS), (44, Status.INVALID_PARAMETER)])
def test_runtime_map_descriptor_size_bounds(domain: Domain, descriptor_size: int,
                                            status: Status) -> None:
    assert _status(domain.dispatcher.dispatch(_runtime_map(descriptor_size))) is status


# -- envelope: SetTime far from the host clock (fixed in efird/platform/time_service.py) ----
# fuzz target envelope, input 06 00 02 e8 0f 02 1d 17 3b 3a 00 00 0f 00 ...: SetTime to
# 4072-02-29 23:59:58, a valid EFI_TIME (years 1900-9999), packed the offset from the
# host clock as an int64 of nanoseconds: struct.error past ~292 years, DEVICE_ERROR to
# the guest. The offset's record is now an int128 when an int64 is too small
# (tests/test_time_offset.py: round trips, old stores, migration).
SET_TIME_CRASH = bytes.fromhex(
    "ba4ce2b59a67684b9329365996e9e616300000000000000002000000000000000000000000000000"
    "e80f021d173b3a00000f000000000000000000000000003a0000000000000000")


def _set_time(year: int) -> bytes:
    efi_time = struct.pack("<HBBBBBBIhBB", year, 6, 1, 12, 0, 0, 0, 0, 0x7FF, 0, 0)
    return c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", 2, 0) + efi_time + bytes(16))


@pytest.mark.parametrize("request_bytes", [SET_TIME_CRASH, _set_time(2400), _set_time(9999)],
                         ids=["fuzz-4072", "2400", "9999"])
def test_set_time_far_from_the_host_clock(domain: Domain, request_bytes: bytes) -> None:
    response = domain.dispatcher.dispatch(request_bytes)
    assert _status(response) is Status.SUCCESS


@pytest.mark.parametrize("year", [1900, 1970, 2024, 2200])
def test_set_time_near_the_host_clock(domain: Domain, year: int) -> None:
    assert _status(domain.dispatcher.dispatch(_set_time(year))) is Status.SUCCESS


# -- auth: an X.509 entry with a bad version (fixed in efird/efi/siglist.py) -------------------
def _certificate_with_version(version: int) -> bytes:
    """A self-signed EC certificate whose TBSCertificate version field is `version`."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "efird regression")])
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    at = der.index(bytes.fromhex("a003020102"))  # [0] EXPLICIT INTEGER 2 (v3)
    return der[:at] + bytes.fromhex("a0030201") + bytes([version]) + der[at + 5 :]


def test_x509_entry_with_bad_version_is_a_bad_list() -> None:
    # fuzz target auth: a PK write whose ESL certificate has version 3 (v4): cryptography
    # raises InvalidVersion, no ValueError, and check_format let it through
    from efird.efi import siglist

    esl = siglist.build(g.EFI_CERT_X509, VENDOR, [_certificate_with_version(3)])
    with pytest.raises(siglist.SignatureListError, match="X509 entry"):
        siglist.check_format(esl, is_pk=True)
    [entry] = siglist.describe(esl)[0]["entries"]
    assert "unparseable certificate" in entry["error"]


def test_pk_with_bad_certificate_version_is_invalid_parameter(domain: Domain) -> None:
    from efird.efi import siglist
    from efird.variables import authvars

    esl = siglist.build(g.EFI_CERT_X509, VENDOR, [_certificate_with_version(5)])
    timestamp = struct.pack("<HBBBBBBIhBB", 2024, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0)
    data = authvars.pack_auth2(timestamp, b"\x30\x00", esl)
    response = domain.dispatcher.dispatch(c.set_variable(g.EFI_GLOBAL_VARIABLE, "PK", 0x27,
                                                         data))
    assert _status(response) is Status.INVALID_PARAMETER


# -- store: a damaged name that is not whole CHAR16 units (fixed in efird/efi/ucs2.py) -----
def _store_with(path: Path, *variables: Variable, meta: dict[str, bytes] | None = None) -> None:
    store = SqliteStore(path)
    store.commit(puts=variables, meta=meta)
    store.close()


def _damage(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()


def _open_and_load(path: Path) -> None:
    store = SqliteStore(path)
    try:
        list(store.load())
        for key in ("sb.audit_mode", "sb.deployed_mode", "sb.vendor_keys"):
            store.get_meta(key)
    finally:
        store.close()


def test_store_odd_length_name_is_corruption(tmp_path: Path) -> None:
    # the checksum message decoded the damaged name, and decode_units raised
    # UnicodeDecodeError on a byte count that is not whole CHAR16 units
    path = tmp_path / "vm.efivars"
    _store_with(path, Variable(VENDOR, "Name", 7, b"data"))
    _damage(path, "UPDATE variables SET name = x'4e00610062'")
    with pytest.raises(StoreCorruptError, match="fails its checksum"):
        _open_and_load(path)


# -- store: reported to the owner of efird/store/sqlite.py ----------------------------------
@pytest.mark.parametrize(("offset", "damage"), [
    # input 21 2b ff ff ff ff ff ff: the end of the schema text of `meta` ("WITHOUT
    # ROWID") becomes 0xff: UnicodeDecodeError
    (1023, b"\xff" * 3),
    # input 3d fe ff 59 23 01 58 ff*32: a cell of sqlite_master: MemoryError
    (511, b"\x01\x58" + b"\xff" * 31),
], ids=["undecodable-message", "nomem"])
def test_store_damaged_schema_is_store_error(tmp_path: Path, offset: int,
                                             damage: bytes) -> None:
    path = tmp_path / "vm.efivars"
    SqliteStore(path).close()  # a fresh, empty store
    image = bytearray(path.read_bytes())
    image[offset : offset + len(damage)] = damage
    path.write_bytes(bytes(image))
    with pytest.raises(StoreError):
        _open_and_load(path)


@pytest.mark.parametrize("damage", [
    # fuzz target store, input 2e 9e*19 3a 23 23 25: attributes became -98
    "UPDATE variables SET attributes = -98",
    "UPDATE variables SET attributes = 2.5",
    "UPDATE variables SET name = 'Name'",  # TEXT instead of a BLOB
    "UPDATE variables SET data = 12",
])
def test_store_damaged_row_types_are_corruption(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "vm.efivars"
    _store_with(path, Variable(VENDOR, "Name", 7, b"data"))
    _damage(path, damage)
    with pytest.raises(StoreCorruptError):
        _open_and_load(path)


def test_store_damaged_meta_key_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "vm.efivars"
    _store_with(path, Variable(VENDOR, "Name", 7, b"data"),
                meta={"sb.deployed_mode": b"\x01", "sb.vendor_keys": b"\x00"})
    # the fuzzer's input changed one byte of a key in the page ("signed" -> "si)ned")
    _damage(path, "UPDATE meta SET key = 'sb.deployed_modf' WHERE key = 'sb.deployed_mode'")
    with pytest.raises(StoreCorruptError):
        _open_and_load(path)


# -- vhost: a used ring on top of the available ring (fixed in efird/vhost/virtqueue.py) -----
# fuzz target vhost, timeout input (a complete handshake whose SET_VRING_ADDR gives the same
# address for the used and the available ring): each completion wrote used->idx over
# avail->idx, which offered the chain again, and the queue's drain never ended.
def _ring_memory(image: bytes) -> tuple[GuestMemory, int]:
    fd = os.memfd_create("efird-regression", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 0x10000)
        os.pwrite(fd, image, 0)
        memory = GuestMemory()
        memory.replace([map_region(fd, 0, 0x10000, 0x40000000, 0)])
    finally:
        os.close(fd)
    return memory, 0x40000000


def _one_chain_image(request: bytes) -> bytes:
    image = bytearray(0x1000)
    struct.pack_into("<QIHH", image, 0, 0x400, len(request), 1, 1)  # readable, NEXT
    struct.pack_into("<QIHH", image, 16, 0x800, 0x400, 2, 0)  # writable
    struct.pack_into("<HHH", image, 0x100, 0, 1, 0)  # avail: idx 1, ring[0] = 0
    image[0x400 : 0x400 + len(request)] = request
    return bytes(image)


@pytest.mark.parametrize(("used_at", "overlaps"), [(0x100, True), (0x104, True), (0x0, True),
                                                   (0x70, True), (0x200, False)])
def test_used_ring_overlapping_what_efird_reads_is_refused(used_at: int,
                                                           overlaps: bool) -> None:
    memory, uva = _ring_memory(_one_chain_image(c.get_variable(VENDOR, "X", 4)))
    vq = Virtqueue(0, memory)
    vq.set_num(8)
    vq.set_addresses(uva, uva + used_at, uva + 0x100)
    try:
        if overlaps:
            with pytest.raises(ChainError, match="overlaps"):
                vq.pop_head()
            return
        head = vq.pop_head()
        assert head == 0
        vq.push_used(head, 0)
        assert vq.pop_head() is None  # drained: one chain, one completion
    finally:
        vq.drop_views()
        memory.clear()


# -- vhost: reported to the owner of efird/vhost/backend.py ---------------------------------
def test_vhost_fds_of_an_unfinished_message_are_closed() -> None:
    # fuzz target vhost, input 00 00 04 00 ed 2f ed: a header announcing a payload that
    # never comes, with 4 fds; here SET_VRING_CALL announcing its 8 bytes, with 1 eventfd
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    stream = struct.pack("<III", 13, 1, 8)
    try:
        run_connection(stream, {0: [fd]})
        assert not is_open(fd), "the eventfd sent with the unfinished message is still open"
    finally:
        if is_open(fd):
            os.close(fd)


def test_vhost_fds_of_a_refused_message_are_closed() -> None:
    # the same message, complete but for a queue that does not exist: refused, fd closed
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    stream = struct.pack("<III", 13, 1, 8) + struct.pack("<Q", 5)
    run_connection(stream, {0: [fd]})
    assert not is_open(fd)
