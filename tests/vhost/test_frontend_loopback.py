"""The frontend against a tiny independent echo backend: proves the frontend works today,
before efird's backend does. The echo device writes the request reversed."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.vhost import frontend as fe
from tests.vhost.fake_backend import FakeEchoBackend
from tests.vhost.frontend import RegionSpec, Req, VhostUserFrontend

BackendFactory = Callable[[str], FakeEchoBackend]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="efird-vu-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_backend(sock_dir: Path) -> Iterator[BackendFactory]:
    started: list[FakeEchoBackend] = []

    def make(name: str = "vu.sock") -> FakeEchoBackend:
        backend = FakeEchoBackend(str(sock_dir / name)).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        backend.stop()
        assert backend.error is None, backend.error


@pytest.fixture
def backend(make_backend: BackendFactory) -> FakeEchoBackend:
    return make_backend("vu.sock")


@pytest.fixture
def front() -> Iterator[VhostUserFrontend]:
    with VhostUserFrontend(timeout=3.0) as f:
        yield f


def echo(payload: bytes) -> bytes:
    return payload[::-1]


def test_handshake_sequence(backend: FakeEchoBackend, front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake(queues=2)
    assert front.ping()  # a round trip: the backend has seen everything before it
    need = fe.VERSION | fe.FLAG_NEED_REPLY
    per_queue = [Req.SET_VRING_NUM, Req.SET_VRING_BASE, Req.SET_VRING_ADDR,
                 Req.SET_VRING_KICK, Req.SET_VRING_CALL, Req.SET_VRING_ERR]
    assert backend.messages == [
        (Req.GET_FEATURES, 1), (Req.GET_PROTOCOL_FEATURES, 1),
        (Req.SET_PROTOCOL_FEATURES, 1), (Req.GET_QUEUE_NUM, 1), (Req.SET_OWNER, 1),
        (Req.SET_FEATURES, 1), (Req.GET_STATUS, 1), (Req.SET_STATUS, 1),
        (Req.SET_MEM_TABLE, need),
        *[(r, 1) for r in per_queue], *[(r, 1) for r in per_queue],
        (Req.SET_VRING_ENABLE, need), (Req.SET_VRING_ENABLE, need),
        (Req.GET_STATUS, 1), (Req.SET_STATUS, 1), (Req.GET_FEATURES, 1),
    ]
    assert front.features == 1 << 32 | 1 << 30 | 1 << 29 | 1 << 28
    assert front.protocol_features == 1 << 0 | 1 << 3 | 1 << 13 | 1 << 16
    assert front.max_queues == 4
    assert front.get_status() == fe.S_ACKNOWLEDGE | fe.S_DRIVER | fe.S_DRIVER_OK | fe.S_FEATURES_OK
    assert front.request(1, b"second queue", 12) == echo(b"second queue")
    assert (front.get_vring_base(0), front.get_vring_base(1)) == (0, 1)


def test_handshake_with_mem_slots(backend: FakeEchoBackend) -> None:
    regions = [RegionSpec(0x10000), RegionSpec(1 << 20, mmap_offset=0x3000)]
    with VhostUserFrontend(regions, data_region=1, timeout=3.0) as front:
        front.connect(backend.path)
        front.handshake(mem_slots=True)
        reqs = backend.requests()
        assert Req.SET_MEM_TABLE not in reqs
        i = reqs.index(Req.GET_MAX_MEM_SLOTS)
        assert reqs[i + 1:i + 3] == [Req.ADD_MEM_REG, Req.ADD_MEM_REG]
        assert front.max_mem_slots == 32
        # data lives past a non-zero mmap_offset: a backend ignoring it would read poison
        for n in range(1, 40):
            payload = bytes(range(n))
            assert front.request(0, payload, n) == echo(payload)


def test_hundred_requests(backend: FakeEchoBackend, front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake(queue_size=64)
    for i in range(100):
        payload = f"request {i} ".encode() * (i % 7 + 1)
        assert front.request(0, payload, len(payload) + 16) == echo(payload)
    assert front.inflight(0) == 0
    assert front.get_vring_base(0) == 100


def test_batch_of_64(backend: FakeEchoBackend, front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake(queue_size=128)
    for _ in range(3):
        items = [(bytes([i]) * (i + 1), i + 1) for i in range(64)]
        assert front.request_many(0, items) == [echo(p) for p, _ in items]
    assert front.get_vring_base(0) == 192


def test_batch_is_one_avail_update_and_one_kick(backend: FakeEchoBackend,
                                                front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake()
    backend.paused.set()
    heads = front.submit_many(0, [(b"x%d" % i, 8) for i in range(64)])
    assert len(set(heads)) == 64 and front.avail_idx(0) == 64
    assert front.notify(0) is True
    backend.paused.clear()
    results = sorted(front.wait_used(0) for _ in heads)
    assert [r.head for r in results] == sorted(heads)
    assert front.ping()  # the device thread has finished the batch, signal included
    assert backend.calls == 1  # one batch processed, one interrupt


@pytest.mark.parametrize("event_idx", [True, False])
def test_event_idx_on_off(backend: FakeEchoBackend, front: VhostUserFrontend,
                          event_idx: bool) -> None:
    front.connect(backend.path)
    front.handshake(event_idx=event_idx)
    assert bool(front.features >> fe.F_EVENT_IDX & 1) is event_idx
    for i in range(50):
        assert front.request(0, b"%d" % i, 8) == echo(b"%d" % i)
    # one more that the frontend surely has to wait for (the device is held back)
    backend.paused.set()
    front.submit(0, [b"last"], [4])
    assert front.notify(0)
    threading.Timer(0.05, backend.paused.clear).start()
    assert front.wait_used(0).data == b"tsal"
    assert front.ping()  # the device thread is done with the ring
    lay = front.vring(0)
    avail_event = front.memory.read_u16(lay.avail_event_addr)
    used_event = front.memory.read_u16(lay.used_event_addr)
    if event_idx:
        assert avail_event == 51  # the device asks for a kick at the next buffer
        assert used_event == 50  # we asked for an interrupt at the entry we waited for
    else:
        assert avail_event == 0 and used_event == 0


def test_event_idx_suppresses_kicks(backend: FakeEchoBackend, front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake(event_idx=True)
    backend.paused.set()
    first = front.submit(0, [b"one"], [3])
    assert front.notify(0) is True  # avail_event 0 is crossed
    second = front.submit(0, [b"two"], [3])
    assert front.notify(0) is False  # device has not moved avail_event: no kick needed
    backend.paused.clear()  # the pending kick makes the device process both
    assert {front.wait_used(0).head for _ in range(2)} == {first, second}


def test_indirect(backend: FakeEchoBackend, front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake(indirect=True)
    head = front.submit(0, [b"ab", b"cd", b"ef"], [1, 2, 10], indirect=True)
    table, length, flags, _ = front.read_desc(0, head)
    assert flags == fe.DESC_F_INDIRECT and length == 16 * 6
    assert front.memory.locate(table, length)  # the table itself lies in guest memory
    front.notify(0)
    elem = front.wait_used(0)
    assert elem == fe.UsedElem(head, 6, b"fedcba")
    for _ in range(20):
        assert front.request(0, b"indirect!", 9, indirect=True) == b"!tceridni"


def test_refused_chain_gives_empty_bytes(backend: FakeEchoBackend,
                                         front: VhostUserFrontend) -> None:
    """The raw API builds a chain the device must refuse (buffer outside guest memory)."""
    front.connect(backend.path)
    front.handshake()
    (d,) = front.alloc_descs(0, 1)
    front.write_desc(0, d, 0xDEAD_0000_0000, 16, 0, 0)
    front.publish_avail(0, [d])
    front.kick(0)
    assert front.wait_used(0) == fe.UsedElem(d, 0, b"")
    assert front.request(0, b"still alive", 11) == echo(b"still alive")


def test_raw_indirect_inside_indirect_is_refused(backend: FakeEchoBackend,
                                                 front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake()
    buf = front.alloc(16)
    inner = front.alloc(16)
    front.memory.write(inner, fe.pack_desc(buf, 16, fe.DESC_F_WRITE, 0))
    outer = front.alloc(16)
    front.memory.write(outer, fe.pack_desc(inner, 16, fe.DESC_F_INDIRECT, 0))
    (d,) = front.alloc_descs(0, 1)
    front.write_desc(0, d, outer, 16, fe.DESC_F_INDIRECT, 0)
    front.publish_avail(0, [d])
    front.kick(0)
    assert front.wait_used(0) == fe.UsedElem(d, 0, b"")


def test_get_vring_base_and_wraparound(backend: FakeEchoBackend,
                                       front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake(queue_size=16, start_index=65530)
    for i in range(20):
        assert front.request(0, b"w%d" % i, 8) == echo(b"w%d" % i)
    assert front.used_idx(0) == (65530 + 20) & 0xFFFF
    assert front.get_vring_base(0) == 14


def test_reconnect_preserves_index(make_backend: BackendFactory,
                                   front: VhostUserFrontend) -> None:
    first = make_backend("a.sock")
    front.connect(first.path)
    front.handshake()
    for i in range(10):
        front.request(0, b"%d" % i, 4)
    assert front.get_vring_base(0) == 10
    first.stop()
    second = make_backend("b.sock")
    front.reconnect(second.path)
    set_base = [m for m in second.messages if m[0] == Req.SET_VRING_BASE]
    assert set_base == [(Req.SET_VRING_BASE, 1)]
    for i in range(5):
        assert front.request(0, b"again %d" % i, 16) == echo(b"again %d" % i)
    assert front.get_vring_base(0) == 15


def test_reconnect_after_crash_resubmits_inflight(make_backend: BackendFactory,
                                                  front: VhostUserFrontend) -> None:
    first = make_backend("a.sock")
    front.connect(first.path)
    front.handshake()
    for i in range(3):
        front.request(0, b"%d" % i, 4)
    first.paused.set()  # the daemon hangs, then dies with three requests in flight
    heads = front.submit_many(0, [(b"lost %d" % i, 8) for i in range(3)])
    front.notify(0)
    first.stop()
    second = make_backend("b.sock")
    front.reconnect(second.path)  # no GET_VRING_BASE possible: base = used.idx = 3
    done = {front.wait_used(0) for _ in heads}
    assert {(e.head, e.data) for e in done} == {
        (h, echo(b"lost %d" % i)) for i, h in enumerate(heads)}
    assert front.get_vring_base(0) == 6


def test_memory_table_changes_while_live(backend: FakeEchoBackend) -> None:
    regions = [RegionSpec(0x10000), RegionSpec(1 << 20, mmap_offset=0x2000)]
    with VhostUserFrontend(regions, data_region=1, timeout=3.0) as front:
        front.connect(backend.path)
        front.handshake(mem_slots=True)
        assert front.request(0, b"first", 5) == b"tsrif"
        new = front.add_region(1 << 20, mmap_offset=0x5000)
        front.data_region = new
        assert front.request(0, b"second", 6) == b"dnoces"
        front.remove_region(1)
        assert front.request(0, b"third", 5) == b"driht"
        front.set_mem_table([0, 1, new])
        front.data_region = 1
        assert front.request(0, b"fourth", 6) == b"htruof"


def test_reset_device_then_start_again(backend: FakeEchoBackend,
                                       front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake()
    front.request(0, b"before", 6)
    front.reset_device()
    assert front.used_idx(0) == 0 and front.avail_idx(0) == 0
    front.start()
    assert front.request(0, b"after", 5) == b"retfa"
    assert front.get_vring_base(0) == 1


def test_disabled_ring_is_not_processed(backend: FakeEchoBackend,
                                        front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake()
    front.set_vring_enable(0, False)
    head = front.submit(0, [b"wait"], [4])
    front.kick(0)
    with pytest.raises(fe.VhostUserTimeout, match="queue 0"):
        front.wait_used(0, timeout=0.3)
    front.set_vring_enable(0, True)
    front.kick(0)
    assert front.wait_used(0) == fe.UsedElem(head, 4, b"tiaw")


def test_missed_notification_is_detected(backend: FakeEchoBackend,
                                         front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake()
    backend.signal_calls = False
    backend.paused.set()  # so the frontend is surely waiting when the device completes
    front.submit(0, [b"silent"], [6])
    front.notify(0)
    threading.Timer(0.1, backend.paused.clear).start()
    with pytest.raises(fe.MissedNotification):
        front.wait_used(0, timeout=0.5)


def test_raw_messages_and_unknown_request(backend: FakeEchoBackend,
                                          front: VhostUserFrontend) -> None:
    front.connect(backend.path)
    front.handshake()
    front.send(99, b"", need_reply=True)
    assert front.recv_reply(99).u64() != 0
    with pytest.raises(fe.VhostUserTimeout, match="SET_OWNER"):
        front.send(Req.SET_OWNER)
        front.recv_reply(Req.SET_OWNER, timeout=0.2)
    assert front.ping()
