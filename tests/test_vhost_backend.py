"""efird's vhost-user backend (the real `efird serve` process) driven by the Python
test frontend: bring-up variants, several queues, memory-table changes while rings are
live, hostile descriptor chains, malformed messages, daemon restart with the guest's
queue state preserved, and client mode."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import Status

from .daemon import EfirdDaemon
from .vhost import frontend as fe
from .vhost.frontend import RegionSpec, Req, VhostUserFrontend

VENDOR = g.guid_bytes("7d3b1c2e-0f4a-4e59-8a6b-2c1d0e9f8a77")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efird-vu-"))  # short: unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path) -> Iterator[EfirdDaemon]:
    with EfirdDaemon(workdir / "vu.sock", workdir / "vm.efivars") as d:
        yield d


@pytest.fixture
def front() -> Iterator[VhostUserFrontend]:
    with VhostUserFrontend(timeout=10.0) as f:
        yield f


def call(front: VhostUserFrontend, request: bytes, queue: int = 0) -> bytes:
    return front.request(queue, request, len(request))


def set_var(front: VhostUserFrontend, name: str, data: bytes, queue: int = 0) -> Status:
    return c.return_status(call(front, c.set_variable(VENDOR, name, 7, data), queue))


def get_var(front: VhostUserFrontend, name: str, queue: int = 0) -> bytes:
    got = c.parse_get_variable(call(front, c.get_variable(VENDOR, name, 64), queue))
    return got.data if got.status is Status.SUCCESS else b"<" + got.status.name.encode() + b">"


@pytest.mark.parametrize(("event_idx", "indirect", "mem_slots"),
                         [(True, True, False), (False, False, False), (True, False, True)])
def test_bring_up_variants_and_round_trips(daemon: EfirdDaemon, front: VhostUserFrontend,
                                           event_idx: bool, indirect: bool,
                                           mem_slots: bool) -> None:
    front.connect(daemon.socket)
    front.handshake(queues=2, queue_size=64, event_idx=event_idx, indirect=indirect,
                    mem_slots=mem_slots)
    assert set_var(front, "Hello", b"world") is Status.SUCCESS
    assert get_var(front, "Hello", queue=1) == b"world"
    if indirect:
        req = c.get_variable(VENDOR, "Hello", 8)
        resp = front.request(0, req, len(req), indirect=True)
        assert c.parse_get_variable(resp).data == b"world"
        # a response buffer shorter than the response: refused, nothing written
        assert front.request(0, req, len(req) - 1, indirect=True) == b""
    for i in range(300):  # wraps a 64-entry ring several times
        assert get_var(front, "Hello", queue=i % 2) == b"world"


def test_a_batch_of_64_per_kick(daemon: EfirdDaemon, front: VhostUserFrontend) -> None:
    front.connect(daemon.socket)
    front.handshake(queue_size=128)
    set_var(front, "Batch", b"b")
    req = c.get_variable(VENDOR, "Batch", 4)
    for resp in front.request_many(0, [(req, len(req))] * 64):
        assert c.parse_get_variable(resp).data == b"b"


def test_four_queues_in_turn_and_in_parallel(daemon: EfirdDaemon,
                                             front: VhostUserFrontend) -> None:
    front.connect(daemon.socket)
    front.handshake(queues=4, queue_size=32)
    heads = {}
    for q in range(4):  # requests on every queue before any kick
        req = c.set_variable(VENDOR, f"Q{q}", 7, bytes([q]))
        heads[q] = front.submit(q, [req], [len(req)])
    for q in range(4):
        front.kick(q)
    for q in range(4):
        used = front.wait_used(q)
        assert used.head == heads[q] and c.return_status(used.data) is Status.SUCCESS
    assert [get_var(front, f"Q{q}", queue=3 - q) for q in range(4)] == [bytes([q])
                                                                        for q in range(4)]


def test_memory_table_changes_while_rings_are_live(daemon: EfirdDaemon) -> None:
    regions = [RegionSpec(4 << 20), RegionSpec(2 << 20, gpa=0x10000000, mmap_offset=0x3000)]
    with VhostUserFrontend(regions, timeout=10.0, data_region=1) as front:
        front.connect(daemon.socket)
        front.handshake(mem_slots=True)
        assert set_var(front, "Slots", b"1") is Status.SUCCESS
        extra = front.add_region(1 << 20, gpa=0x20000000)
        assert get_var(front, "Slots") == b"1"
        front.remove_region(extra)
        assert set_var(front, "Slots", b"2") is Status.SUCCESS
        # QEMU's bring-up removes and re-adds regions, including the one with the rings
        front.remove_region(1)
        front.add_region(2 << 20, gpa=0x10000000, mmap_offset=0x3000, index=1)
        front.set_mem_table()
        assert get_var(front, "Slots") == b"2"
    assert "REM_MEM_REG" in daemon.messages() and "ADD_MEM_REG" in daemon.messages()


def hostile(front: VhostUserFrontend, build: str) -> int:
    """Build one bad chain by hand; return its head."""
    q = 0
    d = front.alloc_descs(q, 3)
    buf = front.alloc(64)
    table = front.alloc(64)
    if build == "loop":
        front.write_desc(q, d[0], buf, 16, F_NEXT, d[1])
        front.write_desc(q, d[1], buf, 16, F_NEXT, d[0])
    elif build == "out_of_range":
        front.write_desc(q, d[0], 0xFFFF_FFFF_0000, 16, 0, 0)
    elif build == "wrong_direction":
        front.write_desc(q, d[0], buf, 16, F_WRITE | F_NEXT, d[1])
        front.write_desc(q, d[1], buf, 16, 0, 0)
    elif build == "nested_indirect":
        front.memory.write(table, fe.pack_desc(table, 16, F_INDIRECT, 0))
        front.write_desc(q, d[0], table, 16, F_INDIRECT, 0)
    elif build == "overflowing":
        front.write_desc(q, d[0], 2**64 - 8, 16, 0, 0)
    front.publish_avail(q, [d[0]])
    return d[0]


@pytest.mark.parametrize("build", ["loop", "out_of_range", "wrong_direction",
                                   "nested_indirect", "overflowing"])
def test_hostile_chains_complete_empty_and_serving_goes_on(
        daemon: EfirdDaemon, front: VhostUserFrontend, build: str) -> None:
    front.connect(daemon.socket)
    front.handshake(queue_size=16)
    head = hostile(front, build)
    front.kick(0)
    used = front.wait_used(0)
    assert (used.head, used.length) == (head, 0)
    assert set_var(front, "After", b"ok") is Status.SUCCESS
    assert daemon.wait_for("bad descriptor chain")


def test_corrupt_ring_signals_the_error_fd_and_other_queues_serve(
        daemon: EfirdDaemon, front: VhostUserFrontend) -> None:
    front.connect(daemon.socket)
    front.handshake(queues=2, queue_size=16)
    front.publish_avail(0, [999])  # a head outside the ring: no used entry can name it
    front.kick(0)
    daemon.wait_for("virtqueue broken; needs a device reset")
    _kick, _call, err = front.eventfds(0)
    assert os.eventfd_read(err) >= 1
    assert set_var(front, "Other", b"queue", queue=1) is Status.SUCCESS


@pytest.mark.parametrize("case", ["bad_size", "missing_fd", "extra_fd", "unknown",
                                  "not_offered", "bad_queue"])
def test_malformed_messages_are_refused_and_the_connection_goes_on(
        daemon: EfirdDaemon, front: VhostUserFrontend, case: str) -> None:
    front.connect(daemon.socket)
    front.handshake()
    efd = os.eventfd(0)
    try:
        if case == "bad_size":
            front.send(Req.SET_VRING_NUM, b"\0" * 3, need_reply=True)
        elif case == "missing_fd":
            front.send(Req.SET_VRING_CALL, struct.pack("<Q", 0), need_reply=True)
        elif case == "extra_fd":
            front.send(Req.SET_FEATURES, struct.pack("<Q", front.features), fds=[efd],
                       need_reply=True)
        elif case == "unknown":
            front.send(99, b"", need_reply=True)
        elif case == "not_offered":
            front.send(Req.SET_FEATURES, struct.pack("<Q", 1 << 50), need_reply=True)
        elif case == "bad_queue":
            front.send(Req.SET_VRING_ENABLE, struct.pack("<II", 77, 1), need_reply=True)
        reply = front.recv_reply(None)
        assert struct.unpack("<Q", reply.payload)[0] != 0  # a failed reply-ack
    finally:
        os.close(efd)
    assert set_var(front, "StillServing", case.encode()) is Status.SUCCESS


def test_broken_framing_drops_only_that_connection(daemon: EfirdDaemon) -> None:
    with VhostUserFrontend(timeout=10.0) as bad:
        bad.connect(daemon.socket)
        bad.send(Req.GET_FEATURES, b"", flags=0x3, size=1 << 20)  # a bad version and size
        daemon.wait_for("dropping frontend: protocol error")
    with VhostUserFrontend(timeout=10.0) as good:
        good.connect(daemon.socket)
        good.handshake()
        assert set_var(good, "Fine", b"1") is Status.SUCCESS


def test_get_vring_base_stops_the_ring_and_reset_device_restarts(
        daemon: EfirdDaemon, front: VhostUserFrontend) -> None:
    front.connect(daemon.socket)
    front.handshake(queue_size=16)
    for i in range(5):
        set_var(front, f"N{i}", b"x")
    assert front.get_vring_base(0) == 5
    front.reset_device()
    front.start()
    assert get_var(front, "N4") == b"x"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_daemon_restart_keeps_the_guest_going(workdir: Path, front: VhostUserFrontend,
                                              how: str) -> None:
    """QEMU 10 cannot reconnect vhost-user-base devices, so reconnect is proven here:
    the guest's memory and rings survive, a new efird takes over the same socket and
    store, and the queue carries on from where the old one stopped."""
    sock, store = workdir / "vu.sock", workdir / "vm.efivars"
    first = EfirdDaemon(sock, store).start()
    front.connect(sock)
    front.handshake(queue_size=16)
    for i in range(20):
        assert set_var(front, f"Before{i}", bytes([i])) is Status.SUCCESS
    if how == "sigterm":
        assert first.stop() == 0
    else:
        first.kill()
    pending = c.get_variable(VENDOR, "Before19", 4)
    head = front.submit(0, [pending], [len(pending)])  # made available while no daemon runs
    with EfirdDaemon(sock, store) as second:
        front.reconnect(sock, kick_inflight=False)  # efird must find it without a kick
        used = front.wait_used(0)
        assert used.head == head and c.parse_get_variable(used.data).data == bytes([19])
        assert get_var(front, "Before7") == bytes([7])
        assert set_var(front, "After", b"restart") is Status.SUCCESS
        assert second.events("frontend connected")


def test_client_mode_connects_to_a_listening_frontend(workdir: Path) -> None:
    sock = workdir / "qemu.sock"
    with VhostUserFrontend(timeout=20.0) as front:
        daemon = EfirdDaemon(sock, workdir / "vm.efivars", "--connect")
        import threading

        started = threading.Thread(target=daemon.start, daemon=True)
        started.start()
        front.accept(sock)
        started.join(30)
        try:
            front.handshake()
            assert set_var(front, "Client", b"mode") is Status.SUCCESS
        finally:
            front.disconnect()
        assert daemon.proc is not None and daemon.proc.wait(20) == 0  # --connect: exit


def test_boot_memory_and_page_tables_through_the_transport(workdir: Path) -> None:
    """BuildPageTables writes the tables straight into the frontend's guest memory."""
    from efird.bootmem.description import q35
    from efird.core import pagetable

    memmap = workdir / "q35.memmap"
    memmap.write_text("".join(f"{a:#x} {s:#x} {k}\n" for a, s, k in q35(4096)))
    with EfirdDaemon(workdir / "vu.sock", workdir / "vm.efivars", "--memmap", str(memmap)
                     ) as daemon, VhostUserFrontend([RegionSpec(8 << 20)], timeout=10.0) as front:
        front.connect(daemon.socket)
        front.handshake()
        status, size, key, *_ = c.parse_get_memory_map(call(front, c.get_memory_map(4096)))
        assert status is Status.SUCCESS and size % 48 == 0
        status, addr = c.parse_allocate_pages(call(front, c.allocate_pages(2, 2, 256,
                                                                            0x400000)))
        assert (status, addr) == (Status.SUCCESS, 0x400000)
        status, cr3, used = c.parse_build_page_tables(call(front, c.build_page_tables(
            0x400000, 256 * 4096, 4, 0x1)))
        assert status is Status.SUCCESS and cr3 == 0x400000
        tables = front.memory.read(0x400000, used)
        for va in (0x1000, 0x7FFFF000, 0x17FFFF000):
            t = pagetable.walk(tables, 0x400000, cr3, 4, va)
            assert t is not None and t.phys == va
        key = c.parse_get_memory_map(call(front, c.get_memory_map(4096)))[2]
        assert c.return_status(call(front, c.exit_boot_services(key))) is Status.SUCCESS
