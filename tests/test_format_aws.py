"""AWS EC2 UEFI data stores: exact round trips, raw and base64 input, strict rejection."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from efird.efi import guid
from efird.formats import aws, qemu_json
from efird.formats.errors import FormatError
from efird.variables.model import Variable

from .format_samples import AUTH, NV_BS_RT, TIME, VARS
from .format_samples import canon as _canon


def test_crc32c_check_value() -> None:
    assert aws.crc32c(b"123456789") == 0xE3069283


def test_round_trip_raw_and_base64() -> None:
    blob = aws.write(VARS)
    assert blob.startswith(b"AMZNUEFI")
    assert aws.read(blob) == _canon(VARS)
    assert aws.read(base64.b64encode(blob)) == _canon(VARS)
    wrapped = base64.encodebytes(blob)  # newline-wrapped, as CLIs and editors produce
    assert aws.read(wrapped + b"\n") == _canon(VARS)


def test_deterministic_and_order_independent() -> None:
    assert aws.write(VARS) == aws.write(list(reversed(VARS)))


def test_same_variables_as_json() -> None:
    assert aws.read(aws.write(VARS)) == qemu_json.read(qemu_json.write(VARS))


def test_layout() -> None:
    blob = aws.write([VARS[0], VARS[1]])
    magic, crc, version = struct.unpack_from("<QII", blob)
    assert (magic, version) == (0x494645554E5A4D41, 0)
    assert crc == aws.crc32c(blob[12:])
    payload = zlib.decompressobj(zdict=aws._dictionary()).decompress(blob[16:])
    name = b"BootOrder"
    assert payload[:8] == struct.pack("<Q", 2)
    assert payload[8:16 + len(name)] == struct.pack("<Q", len(name)) + name
    # the authenticated PK carries timestamp and an all-zero digest
    assert payload.endswith(TIME + struct.pack("<Q", 32) + bytes(32))


def test_volatile_variables_are_not_saved() -> None:
    vol = Variable(guid.SHIM_LOCK, "Volatile", 0x06, b"x")
    assert aws.read(aws.write([*VARS, vol])) == _canon(VARS)


def test_write_refuses_empty_data() -> None:
    with pytest.raises(ValueError, match="empty data"):
        aws.write([Variable(guid.SHIM_LOCK, "Empty", NV_BS_RT, b"")])


def test_probe() -> None:
    blob = aws.write(VARS)
    assert aws.probe(blob)
    assert aws.probe(base64.b64encode(blob))
    assert aws.probe(aws.write([]))
    assert not aws.probe(qemu_json.write(VARS))
    assert not aws.probe(b"")
    assert not qemu_json.probe(base64.b64encode(blob))


def _blob(payload: bytes, *, magic: bytes = aws.MAGIC, version: int = 0,
          crc: int | None = None) -> bytes:
    enc = zlib.compressobj(9, zdict=aws._dictionary())
    body = struct.pack("<I", version) + enc.compress(payload) + enc.flush()
    return magic + struct.pack("<I", aws.crc32c(body) if crc is None else crc) + body


def _record(name: bytes = b"X", data: bytes = b"d", attr: int = NV_BS_RT,
            tail: bytes = b"") -> bytes:
    return (struct.pack("<Q", len(name)) + name + struct.pack("<Q", len(data)) + data
            + guid.SHIM_LOCK + struct.pack("<I", attr) + tail)


def _payload(*records: bytes, count: int | None = None) -> bytes:
    return struct.pack("<Q", len(records) if count is None else count) + b"".join(records)


GOOD = aws.write(VARS)
MALFORMED = {
    "empty": b"",
    "short header": GOOD[:10],
    "truncated": GOOD[:-5],
    "bad magic": b"AMZNUEFJ" + GOOD[8:],
    "bad magic base64": base64.b64encode(b"NOTAWS!!" + GOOD[8:]),
    "bad base64": base64.b64encode(GOOD)[:-3] + b"!!=",
    "bad crc": GOOD[:8] + struct.pack("<I", 0) + GOOD[12:],
    "flipped byte": GOOD[:40] + bytes([GOOD[40] ^ 1]) + GOOD[41:],
    "wrong version": _blob(_payload(), version=1),
    "not zlib": (lambda b: b[:8] + struct.pack("<I", aws.crc32c(b[12:])) + b[12:])(
        aws.MAGIC + b"\0" * 4 + struct.pack("<I", 0) + b"garbage!"),
    "trailing after zlib": (lambda b: b[:8] + struct.pack("<I", aws.crc32c(b[12:] + b"x"))
                            + b[12:] + b"x")(_blob(_payload())),
    "count too large": _blob(_payload(_record(), count=2)),
    "huge count": _blob(_payload(count=1 << 60)),
    "truncated record": _blob(_payload(_record())[:-3]),
    "trailing record bytes": _blob(_payload(_record()) + b"\0"),
    "bad utf-8 name": _blob(_payload(_record(name=b"\xff"))),
    "empty name": _blob(_payload(_record(name=b""))),
    "nul in name": _blob(_payload(_record(name=b"A\0"))),
    "volatile": _blob(_payload(_record(attr=0x06))),
    "append write": _blob(_payload(_record(attr=0x47))),
    "empty data": _blob(_payload(_record(data=b""))),
    "short digest": _blob(_payload(_record(attr=AUTH, tail=TIME + struct.pack("<Q", 3) + b"abc"))),
    "missing timestamp": _blob(_payload(_record(attr=AUTH))),
    "duplicate variable": _blob(_payload(_record(), _record())),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_raises_naming_source(case: str) -> None:
    with pytest.raises(FormatError) as err:
        aws.read(MALFORMED[case], "uefi-data.b64")
    assert str(err.value).startswith("uefi-data.b64: ")


def test_zero_digest_and_timestamp_mean_none() -> None:
    rec = _record(attr=AUTH, tail=bytes(16) + struct.pack("<Q", 32) + bytes(32))
    (var,) = aws.read(_blob(_payload(rec)))
    assert (var.timestamp, var.signer) == (bytes(16), b"")
