"""QEMU uefi-vars JSON stores: exact round trips, QEMU-written files, strict rejection."""

from __future__ import annotations

import json

import pytest

from efird.efi import guid
from efird.formats import aws, qemu_json
from efird.formats.errors import FormatError
from efird.variables.model import Variable

from .format_samples import AUTH, IDENTITY, NV_BS_RT, TIME, VARS
from .format_samples import canon as _canon


def test_round_trip_exact() -> None:
    out = qemu_json.write(VARS)
    assert qemu_json.read(out) == _canon(VARS)
    out.decode("ascii")  # escapes keep lone surrogates representable


def test_lone_surrogate_escapes_survive_python_json() -> None:
    assert json.loads(json.dumps("\udc00")) == "\udc00"
    assert json.dumps("\ud83d\ude00") == '"\\ud83d\\ude00"'


def test_deterministic_and_order_independent() -> None:
    assert qemu_json.write(VARS) == qemu_json.write(list(reversed(VARS)))


def test_layout_follows_qemu() -> None:
    doc = json.loads(qemu_json.write(VARS))
    assert doc["version"] == 2
    by_name = {v["name"]: v for v in doc["variables"]}
    assert set(by_name["BootOrder"]) == {"guid", "name", "attr", "data"}
    assert by_name["BootOrder"]["guid"] == "8be4df61-93ca-11d2-aa0d-00e098032b8c"
    assert by_name["PK"]["time"] == TIME.hex() and "digest" not in by_name["PK"]
    assert by_name["Private"]["digest"] == IDENTITY.hex()


def test_volatile_variables_are_not_saved() -> None:
    vol = Variable(guid.SHIM_LOCK, "Volatile", 0x06, b"x")
    assert qemu_json.read(qemu_json.write([*VARS, vol])) == _canon(VARS)


def test_signer_keeps_only_identity() -> None:
    var = Variable(guid.SHIM_LOCK, "P", AUTH, b"x", TIME, IDENTITY + b"top-level DER")
    assert qemu_json.read(qemu_json.write([var]))[0].signer == IDENTITY


@pytest.mark.parametrize("bad", [
    Variable(guid.SHIM_LOCK, "Empty", NV_BS_RT, b""),
    Variable(guid.SHIM_LOCK, "Append", NV_BS_RT | 0x40, b"x"),
    Variable(guid.SHIM_LOCK, "", NV_BS_RT, b"x"),
])
def test_write_refuses_unstorable(bad: Variable) -> None:
    with pytest.raises(ValueError):
        qemu_json.write([bad])


def test_write_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        qemu_json.write([VARS[0], VARS[0]])


# Written by hand the way var-service-json.c does: qobject_to_json_pretty of the QAPI struct,
# GUID in lowercase registry form, lowercase hex, "time" on every 0x20 variable, "digest" only
# where the firmware kept one.
QEMU_FILE = b"""{
    "version": 2,
    "variables": [
        {
            "guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c",
            "name": "Boot0000",
            "attr": 7,
            "data": "0100000016004500460049002000530068656c6c0000007fff0400"
        },
        {
            "guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c",
            "name": "PK",
            "attr": 39,
            "data": "a159c0a5e494a74a87b5ab155c2bf072",
            "time": "e9070102030405000000000000000000"
        },
        {
            "guid": "605dab50-e046-4300-abb6-3dd810dd8b23",
            "name": "MokPriv",
            "attr": 39,
            "data": "00",
            "time": "00000000000000000000000000000000",
            "digest": "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"
        }
    ]
}"""


def test_reads_qemu_written_file() -> None:
    assert qemu_json.probe(QEMU_FILE)
    got = qemu_json.read(QEMU_FILE, "vars.json")
    assert got == [
        Variable(guid.EFI_GLOBAL_VARIABLE, "Boot0000", 7,
                 bytes.fromhex("0100000016004500460049002000530068656c6c0000007fff0400")),
        Variable(guid.EFI_GLOBAL_VARIABLE, "PK", 39,
                 bytes.fromhex("a159c0a5e494a74a87b5ab155c2bf072"), TIME),
        Variable(guid.SHIM_LOCK, "MokPriv", 39, b"\x00", bytes(16), IDENTITY),
    ]


def test_accepts_python_uefivars_conventions() -> None:
    # python-uefivars names the field "timestamp", omits a zero one and writes zero digests
    doc = {"version": 2, "variables": [
        {"name": "A", "data": "01", "guid": guid.guid_str(guid.SHIM_LOCK), "attr": 39,
         "timestamp": TIME.hex(), "digest": "00" * 32},
        {"name": "B", "data": "01", "guid": guid.guid_str(guid.SHIM_LOCK), "attr": 39}]}
    a, b = qemu_json.read(json.dumps(doc).encode())
    assert (a.timestamp, a.signer) == (TIME, b"")
    assert (b.timestamp, b.signer) == (bytes(16), b"")


def test_probe() -> None:
    assert qemu_json.probe(qemu_json.write(VARS))
    assert qemu_json.probe(b"  \n" + qemu_json.write([]))
    assert not qemu_json.probe(aws.write(VARS))
    assert not qemu_json.probe(b"[1, 2]")
    assert not qemu_json.probe(b'{"a": 1}')
    assert not qemu_json.probe(b"")


def _doc(**changes: object) -> dict[str, object]:
    var: dict[str, object] = {"guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c", "name": "X",
                              "attr": 7, "data": "00"}
    var.update(changes)
    return {"version": 2, "variables": [var]}


def _enc(doc: object) -> bytes:
    return json.dumps(doc).encode()


MALFORMED = {
    "truncated": qemu_json.write(VARS)[:-20],
    "bad json": b"{version: 2}",
    "not utf-8": b'{"version": 2, "variables": [], "x": "\xff"}',
    "not object": b"[]",
    "nan": b'{"version": NaN, "variables": []}',
    "duplicate key": b'{"version": 2, "version": 2, "variables": []}',
    "wrong version": _enc({"version": 1, "variables": []}),
    "version string": _enc({"version": "2", "variables": []}),
    "version bool": _enc({"version": True, "variables": []}),
    "no variables": _enc({"version": 2}),
    "variables not list": _enc({"version": 2, "variables": {}}),
    "extra top key": _enc({"version": 2, "variables": [], "x": 1}),
    "entry not object": _enc({"version": 2, "variables": [1]}),
    "missing data": _enc({"version": 2, "variables": [{"guid": "8be4df61-93ca-11d2-aa0d-"
                                                       "00e098032b8c", "name": "X", "attr": 7}]}),
    "unknown field": _enc(_doc(extra=1)),
    "bad guid": _enc(_doc(guid="8be4df61-93ca-11d2-aa0d-00e098032b8")),
    "braced guid": _enc(_doc(guid="{8be4df61-93ca-11d2-aa0d-00e098032b8c}")),
    "guid not str": _enc(_doc(guid=7)),
    "name not str": _enc(_doc(name=["X"])),
    "empty name": _enc(_doc(name="")),
    "nul in name": _enc(_doc(name="A\u0000B")),
    "attr string": _enc(_doc(attr="7")),
    "attr float": _enc(_doc(attr=7.0)),
    "attr bool": _enc(_doc(attr=True)),
    "attr too big": _enc(_doc(attr=1 << 32)),
    "volatile": _enc(_doc(attr=6)),
    "append write": _enc(_doc(attr=0x47)),
    "bad hex": _enc(_doc(data="0g")),
    "odd hex": _enc(_doc(data="012")),
    "spaced hex": _enc(_doc(data="01 02")),
    "data not str": _enc(_doc(data=[1])),
    "empty data": _enc(_doc(data="")),
    "short time": _enc(_doc(attr=39, time="00" * 15)),
    "time not str": _enc(_doc(attr=39, time=0)),
    "time and timestamp": _enc(_doc(attr=39, time="00" * 16, timestamp="00" * 16)),
    "time without auth": _enc(_doc(time="00" * 16)),
    "digest without auth": _enc(_doc(digest="00" * 32)),
    "short digest": _enc(_doc(attr=39, digest="00" * 20)),
    "duplicate variable": _enc({"version": 2, "variables": [_doc()["variables"][0]] * 2}),  # type: ignore[index]
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_raises_naming_source(case: str) -> None:
    with pytest.raises(FormatError) as err:
        qemu_json.read(MALFORMED[case], "store.json")
    assert str(err.value).startswith("store.json: ")
    assert err.value.source == "store.json"


def test_duplicate_detects_case_insensitive_guid() -> None:
    a = _doc()["variables"][0]  # type: ignore[index]
    b = dict(a, guid=a["guid"].upper())
    with pytest.raises(FormatError, match="duplicate"):
        qemu_json.read(_enc({"version": 2, "variables": [a, b]}), "s")
