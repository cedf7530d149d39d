"""Property tests for what byte-level fuzzing (fuzz/) reaches poorly: structurally valid
requests with arbitrary contents. SMM variable envelopes of well-formed lengths built with
efird.abi.client, sequences of well-formed vhost-user messages, valid descriptor chains,
and the import formats' round trips over arbitrary variables."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from efird import envelope as envelope_module
from efird.abi import client as c
from efird.domain import Domain
from efird.efi import guid as g
from efird.efi.status import Status
from efird.formats import aws, edk2_fd, qemu_json
from efird.store.sqlite import SqliteStore
from efird.variables.model import Variable
from efird.vhost import protocol as P
from efird.vhost.backend import OFFERED_FEATURES
from efird.vhost.virtqueue import Virtqueue
from fuzz.harness.envelope import check_response
from fuzz.harness.vhost import run_connection
from fuzz.harness.virtqueue import Memory, drain

SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
GUIDS = [g.EFI_GLOBAL_VARIABLE, g.EFI_IMAGE_SECURITY_DATABASE,
         g.guid_bytes("11111111-2222-3333-4444-555555555555"), bytes(16)]
STATUSES = frozenset(Status)

guids = st.sampled_from(GUIDS) | st.binary(min_size=16, max_size=16)
# CHAR16 names: one character per unit (lone surrogates included), no NUL
names = st.text(st.characters(min_codepoint=1, max_codepoint=0xFFFF, exclude_categories=()),
                min_size=1, max_size=24)
attributes = st.integers(0, 0x7F) | st.integers(0, 0xFFFFFFFF)


class _RaisingLog:
    def exception(self, *args: Any, **kwargs: Any) -> None:
        raise  # the handler bug the dispatcher is catching

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@contextmanager
def domain() -> Iterator[Domain]:
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(envelope_module, "log", _RaisingLog()):
        d = Domain(SqliteStore(Path(tmp) / "vm.efivars"))
        try:
            yield d
        finally:
            d.close()


def serve(d: Domain, request: bytes) -> tuple[bytes, Status]:
    response = bytes(d.dispatcher.dispatch(request))
    check_response(request, response)
    status = c.return_status(response)
    assert status in STATUSES
    return response, status


call = st.one_of(
    st.tuples(st.just("set"), guids, names, attributes, st.binary(max_size=300)),
    st.tuples(st.just("get"), guids, names, st.integers(0, 600)),
    st.tuples(st.just("next"), guids, names | st.just(""), st.integers(0, 200)),
    st.tuples(st.just("query"), attributes),
    st.tuples(st.just("raw"), st.integers(0, 12), st.binary(max_size=200)),
)


@SETTINGS
@given(st.lists(call, min_size=1, max_size=12))
def test_variable_envelopes_always_answer_in_place(calls: list[tuple[Any, ...]]) -> None:
    """Well-formed SMM variable requests with arbitrary contents: a response of the
    request's length with a known status, never an exception; a successful SetVariable of
    data is read back by GetVariable."""
    with domain() as d:
        for kind, *args in calls:
            if kind == "set":
                guid, name, attrs, data = args
                _, status = serve(d, c.set_variable(guid, name, attrs, data))
                if status is Status.SUCCESS and data and attrs & 0x6 and not attrs & 0x40:
                    got = c.parse_get_variable(serve(d, c.get_variable(guid, name, 4096))[0])
                    assert got.status is Status.SUCCESS and got.data == data
            elif kind == "get":
                serve(d, c.get_variable(*args))
            elif kind == "next":
                guid, name, size = args
                serve(d, c.get_next_variable_name(guid, name, size))
            elif kind == "query":
                serve(d, c.query_variable_info(*args))
            else:
                function, body = args
                serve(d, c.variable_request(function, body))


@SETTINGS
@given(st.lists(names, min_size=1, max_size=8, unique=True), st.integers(0, 64))
def test_enumeration_walks_every_variable(created: list[str], name_size: int) -> None:
    """GetNextVariableName from the start reaches every variable set, whatever its name,
    and a buffer too short for the next name always reports the size it needs."""
    vendor = GUIDS[2]
    with domain() as d:
        for name in created:
            assert serve(d, c.set_variable(vendor, name, 0x7, b"v"))[1] is Status.SUCCESS
        seen, guid, name = set(), bytes(16), ""
        for _ in range(200):
            status, next_guid, next_name, size = c.parse_get_next(
                serve(d, c.get_next_variable_name(guid, name, 512))[0])
            if status is Status.NOT_FOUND:
                break
            assert status is Status.SUCCESS
            seen.add((next_guid, next_name))
            # NameSize must at least hold the name passed in (EDK2: INVALID_PARAMETER)
            size = max(name_size, 2 * len(name) + 2)
            short = c.parse_get_next(serve(d, c.get_next_variable_name(guid, name, size))[0])
            needed = 2 * len(next_name) + 2
            assert short[0] is (Status.SUCCESS if size >= needed else Status.BUFFER_TOO_SMALL)
            if short[0] is Status.BUFFER_TOO_SMALL:
                assert short[3] == needed
            guid, name = next_guid, next_name
        assert {(vendor, n) for n in created} <= seen


# -- vhost-user message sequences ---------------------------------------------------------
R = P.Request
u32 = st.integers(0, 3) | st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 3) | st.integers(0, (1 << 64) - 1)
# (request, payload, number of eventfds, number of memfds)
message = st.one_of(
    st.tuples(st.sampled_from([R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM,
                               R.GET_MAX_MEM_SLOTS, R.GET_STATUS, R.SET_OWNER,
                               R.RESET_OWNER, R.RESET_DEVICE]),
              st.just(b""), st.just(0), st.just(0)),
    st.tuples(st.just(R.SET_FEATURES), st.sampled_from([OFFERED_FEATURES, 1 << 32, 0])
              .map(P.U64.pack) | u64.map(P.U64.pack), st.just(0), st.just(0)),
    st.tuples(st.sampled_from([R.SET_PROTOCOL_FEATURES, R.SET_STATUS]), u64.map(P.U64.pack),
              st.just(0), st.just(0)),
    st.tuples(st.sampled_from([R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE,
                               R.SET_VRING_ENABLE]),
              st.tuples(st.integers(0, 2), st.sampled_from([0, 1, 8, 256, 3]) | u32)
              .map(lambda t: P.VRING_STATE.pack(*t)), st.just(0), st.just(0)),
    st.tuples(st.just(R.SET_VRING_ADDR),
              st.tuples(st.integers(0, 2), u32, u64, u64, u64, u64)
              .map(lambda t: P.VRING_ADDR.pack(*t)), st.just(0), st.just(0)),
    st.tuples(st.sampled_from([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]),
              st.sampled_from([0, 1, 2, 0x100, 0x101]).map(P.U64.pack), st.integers(0, 1),
              st.just(0)),
    st.tuples(st.just(R.SET_MEM_TABLE),
              st.lists(st.tuples(u64, st.sampled_from([0x1000, 0x10000]) | u64, u64,
                                 st.sampled_from([0, 0x1000]) | u64), min_size=1, max_size=3)
              .map(lambda rs: P.MEM_TABLE_HEADER.pack(len(rs), 0) + b"".join(
                  P.MEMORY_REGION.pack(*r) for r in rs)),
              st.just(0), st.integers(1, 3)),
    st.tuples(st.sampled_from([R.ADD_MEM_REG, R.REM_MEM_REG]),
              st.tuples(u64, st.sampled_from([0x1000, 0x10000]) | u64, u64,
                        st.sampled_from([0, 0x1000]))
              .map(lambda r: bytes(8) + P.MEMORY_REGION.pack(*r)), st.just(0), st.just(1)),
)


def _fds(events: int, memfds: int) -> list[int]:
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(events)]
    for _ in range(memfds):
        fd = os.memfd_create("efird-test", os.MFD_CLOEXEC)
        os.ftruncate(fd, 0x10000)
        fds.append(fd)
    return fds


def _open_fds() -> set[int]:
    out = set()
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.add(fd)
    return out


@SETTINGS
@given(st.lists(st.tuples(message, st.booleans()), min_size=1, max_size=20))
def test_vhost_message_sequences(messages: list[tuple[tuple[int, bytes, int, int], bool]]
                                 ) -> None:
    """Any sequence of well-framed messages: the connection answers or refuses each, never
    raises, and closes every fd it was given by the time it shuts down."""
    before = _open_fds()
    stream, fds_at = bytearray(), {}
    for (request, payload, events, memfds), need_reply in messages:
        if events or memfds:
            fds_at[len(stream)] = _fds(events, memfds)
        flags = P.VERSION | (P.FLAG_NEED_REPLY if need_reply else 0)
        stream += P.HEADER.pack(request, flags, len(payload)) + payload
    sock = run_connection(bytes(stream), fds_at)
    for fds in fds_at.values():  # never sent: the connection was dropped before them
        for fd in fds:
            os.close(fd)
    for reply in sock.sent:
        request, flags, size = P.HEADER.unpack_from(reply)
        assert flags == P.REPLY_FLAGS and size == len(reply) - P.HEADER.size
    leaked = _open_fds() - before
    for fd in leaked:
        os.close(fd)
    assert not leaked


# -- valid descriptor chains --------------------------------------------------------------
DESC = struct.Struct("<QIHH")


@st.composite
def rings(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """A 16-entry ring at offset 0 of region 0 and chains of readable then writable
    buffers, each buffer a distinct 64-byte slot, some in region 1."""
    # at most 4 chains of 4 descriptors: they all fit the 16-entry table
    chains = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)).filter(
        lambda t: t[0] + t[1] > 0), min_size=1, max_size=4))
    image = bytearray(0x3000)
    slots = iter(range(0x1000, 0x3000, 0x40))
    desc_index = 0
    heads = []
    for readable, writable in chains:
        head = desc_index
        kinds = [0] * readable + [2] * writable
        for i, kind in enumerate(kinds):
            last = i == len(kinds) - 1
            DESC.pack_into(image, 16 * desc_index, next(slots), draw(st.integers(1, 0x40)),
                           kind | (0 if last else 1), desc_index + 1)
            desc_index += 1
        heads.append(head)
    struct.pack_into("<HH", image, 0x100, 0, len(heads))
    for i, head in enumerate(heads):
        struct.pack_into("<H", image, 0x104 + 2 * i, head)
    config = 4 | (0x10 if draw(st.booleans()) else 0)  # 16 entries, maybe EVENT_IDX
    return config, bytes(image), len(heads)


@SETTINGS
@given(rings(), st.sampled_from([0, 1, 9, 255]))
def test_valid_chains_are_all_served(ring: tuple[int, bytes, int], mode: int) -> None:
    """Every valid chain is walked, answered within its writable buffers (or refused) and
    completed in the used ring."""
    config, image, chains = ring
    mem = Memory(image, b"")
    try:
        vq = Virtqueue(0, mem.memory)
        vq.set_num(16)
        vq.set_addresses(0x40000000, 0x40000000 + 0x200, 0x40000000 + 0x100)
        vq.event_idx = bool(config & 0x10)
        drain(vq, mem, mode)  # raises Finding on any broken invariant
        assert vq.last_avail_idx == chains == vq.used_idx
        vq.drop_views()
    finally:
        mem.close()


# -- import formats: write then read -------------------------------------------------------
stored_attrs = st.integers(0, 0xFFFFFFFF).map(lambda a: (a | 0x1) & ~0x40)
variables = st.builds(
    lambda guid, name, attrs, data, ts, signer: Variable(
        guid, name, attrs, data, ts if attrs & 0x20 else bytes(16),
        signer if attrs & 0x20 and signer != bytes(32) else b""),
    guids, names, stored_attrs, st.binary(min_size=1, max_size=64),
    st.binary(min_size=16, max_size=16), st.just(b"") | st.binary(min_size=32, max_size=32))
unique_variables = st.lists(variables, max_size=8, unique_by=lambda v: v.key)


def _by_key(vs: list[Variable]) -> list[Variable]:
    return sorted(vs, key=lambda v: (v.guid, v.name))


@SETTINGS
@given(unique_variables)
def test_json_and_aws_round_trip(vs: list[Variable]) -> None:
    assert _by_key(qemu_json.read(qemu_json.write(vs))) == _by_key(vs)
    assert _by_key(aws.read(aws.write(vs))) == _by_key(vs)


@SETTINGS
@given(unique_variables)
def test_edk2_fd_round_trip(vs: list[Variable]) -> None:
    template = edk2_fd.build_empty(0x20000)
    got = edk2_fd.read(edk2_fd.write(vs, template=template))
    expected = [Variable(v.guid, v.name, v.attributes, v.data,
                         v.timestamp if v.attributes & 0x20 else bytes(16)) for v in vs]
    assert got == expected
