"""The frontend's own pure parts, checked without any backend: if these are wrong, every
backend test built on the frontend is wrong with them."""

from __future__ import annotations

import array
import os
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vhost import frontend as fe
from tests.vhost.frontend import (
    GuestMemory,
    MemRegionDesc,
    Message,
    RegionSpec,
    Req,
    VhostUserFrontend,
    VhostUserProtocolError,
    VhostUserTimeout,
    VringLayout,
    vring_need_event,
)

QUEUE_SIZES = [1 << k for k in range(2, 11)]  # 4 .. 1024

# ------------------------------------------------------------------------ messages


def test_header_is_three_native_u32() -> None:
    msg = fe.pack_message(Req.SET_VRING_NUM, fe.pack_vring_state(1, 256))
    assert msg == struct.pack("=III", 8, 0x1, 8) + struct.pack("=II", 1, 256)
    assert fe.unpack_header(msg) == (8, 1, 8)


def test_need_reply_and_size_override() -> None:
    msg = fe.pack_message(5, b"abc", flags=fe.VERSION | fe.FLAG_NEED_REPLY, size=100)
    assert fe.unpack_header(msg) == (5, 0x9, 100)
    assert msg[12:] == b"abc"


def test_short_header_rejected() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        fe.unpack_header(b"\0" * 11)


def test_vring_addr_order_is_desc_used_avail_log() -> None:
    data = fe.pack_vring_addr(2, desc=0x1000, used=0x3000, avail=0x2000, flags=0, log=0x99)
    assert len(data) == 40
    assert struct.unpack("=IIQQQQ", data) == (2, 0, 0x1000, 0x3000, 0x2000, 0x99)


def test_mem_table_is_variable_length() -> None:
    regions = [MemRegionDesc(0x1000 * i, 0x1000, 0x7F00_0000_0000 + 0x1000 * i, 0x2000)
               for i in range(3)]
    data = fe.pack_mem_table(regions)
    assert len(data) == 8 + 32 * 3
    assert struct.unpack_from("=II", data) == (3, 0)
    assert struct.unpack_from("=QQQQ", data, 8 + 32) == (0x1000, 0x1000, 0x7F00_0000_1000,
                                                         0x2000)
    with pytest.raises(ValueError):
        fe.pack_mem_table(regions * 3)


def test_mem_reg_has_leading_padding() -> None:
    data = fe.pack_mem_reg(MemRegionDesc(0x10_0000, 0x20_0000, 0x7F00_0010_0000, 0x3000))
    assert len(data) == 40
    assert struct.unpack("=QQQQQ", data) == (0, 0x10_0000, 0x20_0000, 0x7F00_0010_0000, 0x3000)


def test_u64_and_desc_packing() -> None:
    assert fe.pack_u64(1 << 32 | 5) == struct.pack("=Q", 1 << 32 | 5)
    assert fe.pack_desc(0x1234, 16, fe.DESC_F_NEXT | fe.DESC_F_WRITE, 7) == struct.pack(
        "<QIHH", 0x1234, 16, 3, 7)


def test_message_accessors() -> None:
    assert Message(1, 5, struct.pack("=Q", 42)).u64() == 42
    assert Message(11, 5, struct.pack("=II", 3, 9)).state() == (3, 9)
    with pytest.raises(VhostUserProtocolError, match="GET_FEATURES"):
        Message(1, 5, b"\0" * 4).u64()


def test_request_names() -> None:
    assert fe.request_name(11) == "GET_VRING_BASE (11)"
    assert fe.request_name(999) == "request 999"


# ------------------------------------------------------------------------ ring layout


@pytest.mark.parametrize("n", QUEUE_SIZES)
@pytest.mark.parametrize("used_align", [4, 4096])
def test_ring_layout(n: int, used_align: int) -> None:
    lay = VringLayout.compute(n, 0x10000, used_align)
    assert VringLayout.sizes(n) == (16 * n, 6 + 2 * n, 6 + 8 * n)
    assert lay.desc % 16 == 0 and lay.avail % 2 == 0 and lay.used % used_align == 0
    # no overlap, in order, with used no further than needed for alignment
    assert lay.desc + lay.desc_size == lay.avail
    assert lay.avail + lay.avail_size <= lay.used < lay.avail + lay.avail_size + used_align
    assert lay.end == lay.used + 6 + 8 * n
    # the event fields sit right after each ring
    assert lay.used_event_addr == lay.avail + lay.avail_size - 2
    assert lay.avail_event_addr == lay.used + lay.used_size - 2
    assert lay.avail_ring_addr(n - 1) + 2 == lay.used_event_addr
    assert lay.used_ring_addr(n - 1) + 8 == lay.avail_event_addr
    assert lay.desc_addr(n - 1) + 16 == lay.avail
    assert lay.avail_idx_addr == lay.avail + 2 and lay.used_idx_addr == lay.used + 2


@pytest.mark.parametrize("n", [0, 3, 6, 1000, 65536])
def test_ring_size_must_be_power_of_two(n: int) -> None:
    with pytest.raises(ValueError):
        VringLayout.compute(n, 0)


def test_ring_layout_alignment_checks() -> None:
    VringLayout.compute(32768, 0)
    with pytest.raises(ValueError):
        VringLayout.compute(8, 8)
    with pytest.raises(ValueError):
        VringLayout.compute(8, 0, used_align=6)


# ------------------------------------------------------------------------ EVENT_IDX


@pytest.mark.parametrize(("event", "new", "old", "expected"), [
    (0, 1, 0, True),  # first buffer, device wants idx 0
    (0, 2, 1, False),  # device still waits for idx 0, already passed before
    (1, 2, 1, True),
    (5, 5, 0, False),  # event not yet reached (need new > event)
    (5, 6, 0, True),
    (3, 3, 3, False),  # nothing new
    (0xFFFF, 0, 0xFFFE, True),  # wrap: crossing 0xffff
    (0xFFFF, 1, 0xFFFE, True),
    (0xFFFE, 1, 0xFFFF, False),  # event before the window, across the wrap
    (0, 1, 0xFFFF, True),  # window [0xffff, 1) contains 0
    (2, 1, 0xFFFF, False),
])
def test_vring_need_event(event: int, new: int, old: int, expected: bool) -> None:
    assert vring_need_event(event, new, old) is expected


def test_vring_need_event_matches_window_definition() -> None:
    """need_event is true iff event lies in [old, new) going forward modulo 2**16."""
    for old in (0, 1, 0x7FFF, 0xFFF0, 0xFFFF):
        for step in (0, 1, 2, 17, 300):
            new = (old + step) & 0xFFFF
            for delta in range(-5, 310, 7):
                event = (old + delta) & 0xFFFF
                in_window = 0 <= ((event - old) & 0xFFFF) < step
                assert vring_need_event(event, new, old) is in_window, (event, new, old)


# ------------------------------------------------------------------------ memory


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory()
    mem.add(RegionSpec(0x10000))
    mem.add(RegionSpec(0x20000, mmap_offset=0x3000))
    mem.add(RegionSpec(0x1000, gpa=0x4000_0000, uaddr=0x7FAA_0000_0000))
    yield mem
    mem.close()


def test_region_placement(memory: GuestMemory) -> None:
    r0, r1, r2 = memory.regions
    assert (r0.gpa, r0.uaddr) == (0, fe.UVA_BASE)
    assert r1.gpa == fe.GPA_ALIGN and r1.uaddr == fe.UVA_BASE + fe.UVA_STRIDE
    assert (r2.gpa, r2.uaddr) == (0x4000_0000, 0x7FAA_0000_0000)
    # per-region offsets differ, so mixing up GPA and UVA translation cannot go unnoticed
    assert r0.uaddr - r0.gpa != r1.uaddr - r1.gpa


def test_translation(memory: GuestMemory) -> None:
    r1 = memory.regions[1]
    assert memory.gpa_to_uva(r1.gpa + 0x123) == r1.uaddr + 0x123
    assert memory.uva_to_gpa(r1.uaddr + 0x1FFFF) == r1.gpa + 0x1FFFF
    assert memory.locate(0x4000_0FFF) == (memory.regions[2], 0xFFF)
    with pytest.raises(ValueError):
        memory.locate(0x10000)  # the hole after region 0
    with pytest.raises(ValueError):
        memory.locate(0xFFF8, 16)  # straddles the end of region 0
    with pytest.raises(ValueError):
        memory.uva_to_gpa(fe.UVA_BASE + 0x10000)
    with pytest.raises(ValueError):
        memory.uva_to_gpa(r1.uaddr + 0x1FFFF, 2)


def test_mmap_offset_puts_region_bytes_past_poison(memory: GuestMemory) -> None:
    r1 = memory.regions[1]
    memory.write(r1.gpa + 0x10, b"hello")
    assert os.pread(r1.fd, 5, 0x3000 + 0x10) == b"hello"
    assert os.pread(r1.fd, 0x3000, 0) == bytes([fe.POISON_PREFIX]) * 0x3000
    assert os.fstat(r1.fd).st_size == 0x3000 + 0x20000


def test_u16_access(memory: GuestMemory) -> None:
    memory.write_u16(0x100, 0x1_2345)
    assert memory.read(0x100, 2) == b"\x45\x23"
    assert memory.read_u16(0x100) == 0x2345


def test_overlapping_regions_rejected(memory: GuestMemory) -> None:
    with pytest.raises(ValueError, match="overlaps"):
        memory.add(RegionSpec(0x1000, gpa=0x8000))
    with pytest.raises(ValueError, match="overlaps"):
        memory.add(RegionSpec(0x1000, gpa=0x9000_0000, uaddr=fe.UVA_BASE + 0x100))


def test_heap_allocates_aligned_and_coalesces(memory: GuestMemory) -> None:
    heap = memory.regions[0].heap
    total = heap.free_bytes
    a = memory.alloc(10, 16, region=0)
    b = memory.alloc(100, 4096, region=0)
    c = memory.alloc(0, 16, region=0)
    assert a % 16 == 0 and b % 4096 == 0 and len({a, b, c}) == 3
    for addr, size in ((b, 100), (a, 10), (c, 0)):
        memory.free(addr, size)
    assert heap.free_bytes == total
    with pytest.raises(RuntimeError):
        memory.free(a, 10)  # a double free is a frontend bug
    assert memory.alloc(0x10000, 16, region=0) == 0  # coalesced back into one range
    with pytest.raises(fe.RingFull):
        memory.alloc(1, 16, region=0)


def test_removed_regions_are_not_allocated_from(memory: GuestMemory) -> None:
    memory.regions[0].attached = False
    assert memory.regions[1].contains_gpa(memory.alloc(64))


# ------------------------------------------------------------------------ reply checks
# (a socketpair stands in for the backend: these check the frontend's own validation)


@pytest.fixture
def pair() -> Iterator[tuple[VhostUserFrontend, socket.socket]]:
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    f = VhostUserFrontend([RegionSpec(0x10000)], timeout=0.3)
    f.connect(front)
    yield f, back
    f.close()
    back.close()


def test_timeout_names_the_request(pair: tuple[VhostUserFrontend, socket.socket]) -> None:
    f, _ = pair
    with pytest.raises(VhostUserTimeout, match=r"reply to GET_VRING_BASE \(11\)"):
        f.get_vring_base(0)


def test_reply_flags_must_be_exactly_0x5(pair: tuple[VhostUserFrontend, socket.socket]) -> None:
    f, back = pair
    back.sendall(struct.pack("=III", 1, 0x1, 8) + struct.pack("=Q", 7))
    with pytest.raises(VhostUserProtocolError, match="flags 0x1"):
        f.get_features()


def test_reply_must_match_request(pair: tuple[VhostUserFrontend, socket.socket]) -> None:
    f, back = pair
    back.sendall(struct.pack("=III", 15, 0x5, 8) + struct.pack("=Q", 7))
    with pytest.raises(VhostUserProtocolError, match="GET_PROTOCOL_FEATURES"):
        f.get_features()


def test_disconnect_is_reported(pair: tuple[VhostUserFrontend, socket.socket]) -> None:
    f, back = pair
    back.close()
    with pytest.raises(fe.VhostUserDisconnected, match="GET_FEATURES"):
        f.get_features()


def test_send_passes_fds_and_flags(pair: tuple[VhostUserFrontend, socket.socket]) -> None:
    f, back = pair
    efd = os.eventfd(0)
    try:
        f.send(Req.SET_VRING_CALL, fe.pack_u64(3), [efd], need_reply=True)
        data, anc, _, _ = back.recvmsg(64, socket.CMSG_SPACE(16))
        assert struct.unpack_from("=III", data) == (13, 0x9, 8)
        assert struct.unpack_from("=Q", data, 12) == (3,)
        (level, kind, blob), = anc
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fds = array.array("i", blob)
        assert len(fds) == 1
        os.eventfd_write(fds[0], 5)
        assert os.eventfd_read(efd) == 5
        os.close(fds[0])
    finally:
        os.close(efd)


def test_reply_ack_nack_raises(pair: tuple[VhostUserFrontend, socket.socket]) -> None:
    f, back = pair
    f.protocol_features = 1 << fe.ProtocolFeature.REPLY_ACK
    back.sendall(struct.pack("=III", 18, 0x5, 8) + struct.pack("=Q", 1))
    with pytest.raises(fe.VhostUserNack):
        f.set_vring_enable(0, True)


def test_connect_gives_up_with_a_clear_error() -> None:
    with VhostUserFrontend([RegionSpec(0x1000)], timeout=0.1) as f, pytest.raises(
            VhostUserTimeout, match="could not connect"):
        f.connect("/nonexistent/efird-vu.sock")


def test_accept_takes_a_connecting_backend() -> None:
    """The reverse socket direction: the backend connects to us."""
    path = Path(tempfile.mkdtemp(prefix="efird-vu-")) / "s"

    def backend() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(200):
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                threading.Event().wait(0.01)
        request, _, _ = struct.unpack("=III", sock.recv(12))
        sock.sendall(struct.pack("=III", request, 0x5, 8) + struct.pack("=Q", 1 << 32))
        sock.recv(1)  # wait for the frontend to hang up
        sock.close()

    thread = threading.Thread(target=backend)
    thread.start()
    with VhostUserFrontend([RegionSpec(0x1000)], timeout=2.0) as f:
        f.accept(path)
        assert f.get_features() == 1 << 32
    thread.join(2)
    assert not path.exists()
    path.parent.rmdir()
