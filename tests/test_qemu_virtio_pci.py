"""The qtest-driven virtio-pci driver against QEMU's own virtio-rng-pci.

These tests prove the test infrastructure before it is pointed at efird: if the driver
can initialise QEMU's built-in entropy device and get random bytes back through split
virtqueues (direct, chained, indirect, with and without EVENT_IDX, across resets), then a
failure against a vhost-user backend is the backend's fault, not the harness's.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from .qemu.qtest import QTestError, QTestTimeout
from .qemu.virtio_pci import (
    COMMON_Q_ENABLE,
    COMMON_Q_SELECT,
    MMIO_WINDOW_BASE,
    MMIO_WINDOW_PER_FUNCTION,
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_F_VERSION_1,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    VRING_AVAIL_F_NO_INTERRUPT,
    GuestAllocator,
    VirtioError,
    VirtioPciDevice,
    Virtqueue,
    VirtqueueTimeout,
    bit,
    vring_need_event,
)
from .qemu.vm import QemuError, QemuVM

VIRTIO_ID_RNG = 4
SLOT = 3
RNG = f"virtio-rng-pci,disable-legacy=on,addr={SLOT:#x}"
RNG_NO_EVENT_IDX = RNG + ",event_idx=off"


def _vm(device: str) -> QemuVM:
    return QemuVM(["-device", device])


@pytest.fixture
def vm() -> Iterator[QemuVM]:
    with _vm(RNG) as machine:
        yield machine
    assert machine.returncode is not None, "QEMU must be reaped when the VM closes"


@pytest.fixture
def dev(vm: QemuVM) -> VirtioPciDevice:
    return VirtioPciDevice(vm.qtest, VIRTIO_ID_RNG)


@pytest.fixture
def vq(dev: VirtioPciDevice) -> Virtqueue:
    (queue,) = dev.init()
    return queue


def _request(vq: Virtqueue, size: int) -> bytes:
    head = vq.submit([], [size])
    used = vq.wait_used(timeout=5)
    assert used.head == head
    assert used.used_len == size
    assert len(used.in_data) == size
    return used.in_data



@pytest.mark.qemu
def test_device_found_and_initialised(vm: QemuVM, dev: VirtioPciDevice) -> None:
    assert (dev.cfg.vendor_id, dev.cfg.device_id) == (0x1AF4, 0x1040 + VIRTIO_ID_RNG)
    assert dev.address.slot == SLOT
    window = MMIO_WINDOW_BASE + SLOT * 8 * MMIO_WINDOW_PER_FUNCTION
    assert dev.bars, "BARs were assigned"
    for bar in dev.bars.values():
        assert window <= bar.base < bar.base + bar.size <= window + MMIO_WINDOW_PER_FUNCTION
        assert bar.base % bar.size == 0
    assert any(bar.is_64bit for bar in dev.bars.values()), "virtio modern BAR is 64-bit"
    for cap in (VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_ISR_CFG):
        assert cap in dev.caps
    assert dev.notify_off_multiplier in (4, 0x1000)
    assert dev.num_queues == 1

    (queue,) = dev.init()
    ok = (
        VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK
    )
    assert dev.status == ok
    assert dev.has_feature(VIRTIO_F_VERSION_1)
    assert queue.size >= 2 and queue.size & (queue.size - 1) == 0
    dev.qt.writew(dev.common + COMMON_Q_SELECT, 0)
    assert dev.qt.readw(dev.common + COMMON_Q_ENABLE) == 1


@pytest.mark.qemu
def test_features_ok_accepted_step_by_step(dev: VirtioPciDevice) -> None:
    dev.reset()
    assert dev.status == 0
    dev.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE)
    dev.add_status(VIRTIO_CONFIG_S_DRIVER)
    offered = dev.device_features()
    assert offered & bit(VIRTIO_F_VERSION_1)
    accepted = dev.negotiate()
    assert dev.status & VIRTIO_CONFIG_S_FEATURES_OK
    assert dev.driver_features() == accepted
    assert accepted & ~offered == 0
    # QEMU offers both ring features by default; the driver must have taken them.
    assert accepted & bit(VIRTIO_RING_F_EVENT_IDX)
    assert accepted & bit(VIRTIO_RING_F_INDIRECT_DESC)


@pytest.mark.qemu
def test_driver_refuses_to_run_without_version_1(dev: VirtioPciDevice) -> None:
    dev.reset()
    with pytest.raises(VirtioError, match="VERSION_1"):
        dev.negotiate(bit(VIRTIO_RING_F_EVENT_IDX))


@pytest.mark.qemu
def test_several_requests_get_random_bytes(vq: Virtqueue) -> None:
    sizes = [1, 2, 16, 64, 100, 512, 4096, 64]
    blobs = [_request(vq, size) for size in sizes]
    assert all(len(b) == s for b, s in zip(blobs, sizes, strict=True))
    big = [b for b in blobs if len(b) >= 16]
    assert all(any(b) for b in big), "a 16+ byte random buffer is (almost) never all zero"
    assert len(set(big)) == len(big), "random buffers must differ"
    assert vq.num_free == vq.size, "every descriptor came back"


@pytest.mark.qemu
def test_requests_wrap_the_ring_and_batch(vq: Virtqueue) -> None:
    # Several laps around the ring, one request at a time ...
    for _ in range(3 * vq.size + 1):
        _request(vq, 32)
    # ... then a full queue in flight at once, kicked once.
    heads = {vq.submit([], [48], kick=False) for _ in range(vq.size)}
    assert vq.num_free == 0
    with pytest.raises(VirtioError, match="free"):
        vq.submit([], [8])
    assert vq.kick()
    done = [vq.wait_used() for _ in range(vq.size)]
    assert {u.head for u in done} == heads
    assert all(u.used_len == 48 for u in done)
    assert vq.num_free == vq.size


@pytest.mark.qemu
def test_chain_split_over_several_writable_descriptors(vq: Virtqueue) -> None:
    sizes = [3, 64, 5, 200]
    head = vq.submit([], sizes)
    used = vq.wait_used()
    assert used.head == head
    assert used.used_len == sum(sizes)
    assert len(used.in_data) == sum(sizes)
    assert any(used.in_data[3:67]) and any(used.in_data[72:])

    # Readable descriptors first, then writable ones; virtio-rng ignores the readable part.
    head = vq.submit([b"header", b"x" * 100], [7, 9], in_fill=0xAA)
    used = vq.wait_used()
    assert (used.head, used.used_len, len(used.in_data)) == (head, 16, 16)
    assert used.in_data != b"\xaa" * 16, "the device overwrote the pre-filled buffer"

    # The longest chain the queue allows.
    head = vq.submit([], [8] * vq.size)
    used = vq.wait_used()
    assert (used.head, used.used_len) == (head, 8 * vq.size)


@pytest.mark.qemu
def test_indirect_descriptors(dev: VirtioPciDevice, vq: Virtqueue) -> None:
    assert dev.has_feature(VIRTIO_RING_F_INDIRECT_DESC), "QEMU offers INDIRECT_DESC"
    free = vq.num_free
    sizes = [16, 32, 48, 1]
    head = vq.submit_indirect([b"ignored"], sizes, kick=False)
    assert vq.num_free == free - 1, "an indirect chain takes one ring descriptor"
    direct = vq.submit([], [24])
    vq.kick()
    results = {u.head: u for u in (vq.wait_used(), vq.wait_used())}
    assert results[head].used_len == sum(sizes)
    assert len(results[head].in_data) == sum(sizes)
    assert results[direct].used_len == 24
    assert vq.num_free == free
    # A table longer than the ring: legal for indirect chains.
    head = vq.submit_indirect([], [4] * (2 * vq.size))
    used = vq.wait_used()
    assert (used.head, used.used_len) == (head, 8 * vq.size)


@pytest.mark.qemu
def test_notification_is_what_wakes_the_device(vq: Virtqueue) -> None:
    vq.submit([], [16], kick=False)
    t0 = time.monotonic()
    with pytest.raises(VirtqueueTimeout, match=r"avail\.idx=1 used\.idx=0"):
        vq.wait_used(timeout=0.3)
    assert time.monotonic() - t0 < 2
    assert vq.needs_kick()
    assert vq.kick()
    assert vq.wait_used().used_len == 16
    assert not vq.needs_kick(), "nothing new was published"


@pytest.mark.qemu
def test_event_idx(dev: VirtioPciDevice, vq: Virtqueue) -> None:
    assert vq.event_idx, "QEMU offers EVENT_IDX and the driver takes it"
    _request(vq, 8)
    # QEMU publishes avail_event = its last_avail_idx after popping a chain.
    assert vq.avail_event() == vq.avail_idx == 1
    dev.read_isr()  # clear

    # used_event far ahead: the device must not interrupt for this completion.
    vq.auto_used_event = False
    vq.set_used_event(vq.last_used_idx + 5)
    _request(vq, 8)
    assert dev.read_isr() & 1 == 0, "used_event not reached: no interrupt"

    # used_event == the index the next completion moves past: interrupt.
    vq.set_used_event(vq.last_used_idx)
    _request(vq, 8)
    assert dev.read_isr() & 1 == 1, "used_event crossed: interrupt"
    assert dev.read_isr() == 0, "reading the ISR clears it"

    # Kick suppression follows avail_event.
    assert vq.avail_event() == vq.avail_idx
    assert vring_need_event(vq.avail_event(), vq.avail_idx + 1, vq.avail_idx)
    assert not vring_need_event(vq.avail_idx + 10, vq.avail_idx + 1, vq.avail_idx)


@pytest.mark.qemu
def test_without_event_idx_flags_suppress_interrupts() -> None:
    with _vm(RNG_NO_EVENT_IDX) as machine:
        dev = VirtioPciDevice(machine.qtest, VIRTIO_ID_RNG)
        (vq,) = dev.init()
        assert not dev.has_feature(VIRTIO_RING_F_EVENT_IDX)
        assert not vq.event_idx
        _request(vq, 8)
        assert dev.read_isr() & 1 == 1
        vq.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
        _request(vq, 8)
        assert dev.read_isr() & 1 == 0
        vq.set_avail_flags(0)
        _request(vq, 8)
        assert dev.read_isr() & 1 == 1


@pytest.mark.qemu
def test_reset_and_reinitialise(vm: QemuVM, dev: VirtioPciDevice, vq: Virtqueue) -> None:
    alloc = GuestAllocator.for_qtest(vm.qtest)
    for _ in range(3):
        _request(vq, 32)
    vq.submit([], [32], kick=False)  # left in flight across the reset

    dev.reset()
    assert dev.status == 0
    dev.qt.writew(dev.common + COMMON_Q_SELECT, 0)
    assert dev.qt.readw(dev.common + COMMON_Q_ENABLE) == 0, "reset disables the queue"
    assert alloc.allocations == 0, "rings and buffers of the old queue were reclaimed"
    with pytest.raises(VirtioError, match="reset"):
        vq.submit([], [8])

    for _ in range(2):  # twice: re-init after re-init works too
        (fresh,) = dev.init()
        assert dev.status & VIRTIO_CONFIG_S_DRIVER_OK
        assert fresh.avail_idx == fresh.last_used_idx == 0
        blobs = [_request(fresh, 64) for _ in range(fresh.size + 2)]
        assert len(set(blobs)) == len(blobs)
        head = fresh.submit_indirect([], [16, 16])
        assert fresh.wait_used().head == head


@pytest.mark.qemu
def test_transitional_device_is_driven_through_modern_interface() -> None:
    with _vm(f"virtio-rng-pci,addr={SLOT:#x}") as machine:
        dev = VirtioPciDevice(machine.qtest, VIRTIO_ID_RNG)
        assert dev.cfg.device_id == 0x1005, "transitional virtio-rng id"
        assert any(bar.is_io for bar in dev.bars.values()), "legacy I/O BAR assigned too"
        (vq,) = dev.init()
        assert len(_request(vq, 128)) == 128


@pytest.mark.qemu
def test_qemu_death_is_reported_not_hung(vm: QemuVM, vq: Virtqueue) -> None:
    vq.submit([], [16], kick=False)
    vm.proc.kill()
    vm.proc.wait(5)
    t0 = time.monotonic()
    with pytest.raises(QTestError, match="QEMU exited with status -9"):
        vq.kick()
    assert time.monotonic() - t0 < 2
    assert vm.qtest.closed


@pytest.mark.qemu
def test_wedged_qemu_times_out_with_a_clear_error() -> None:
    with QemuVM(["-device", RNG], timeout=0.5) as machine:
        os.kill(machine.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(QTestTimeout, match=r"no answer .* within 0\.5s.*still running"):
                machine.qtest.readl(0x100000)
            assert time.monotonic() - t0 < 3
            assert machine.qtest.closed, "a timed-out conversation is not reused"
        finally:
            os.kill(machine.pid, signal.SIGCONT)


@pytest.mark.qemu
def test_startup_failure_is_reported() -> None:
    machine = QemuVM(QemuVM.vhost_user_args("/nonexistent/efird-vu.sock"))
    with pytest.raises(QemuError, match=r"QEMU failed to start.*efird-vu\.sock"):
        machine.start()
    assert machine.returncode not in (None, 0)
    assert not machine.tmpdir.exists()


@pytest.mark.qemu
def test_vm_reaps_qemu_even_when_the_body_fails() -> None:
    machine = _vm(RNG)
    with pytest.raises(RuntimeError, match="boom"), machine:
        pid = machine.pid
        raise RuntimeError("boom")
    assert machine.returncode is not None
    assert not machine.tmpdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_guest_allocator_reuses_and_coalesces() -> None:
    alloc = GuestAllocator(0x1000, 0x3000)
    a = alloc.alloc(0x800)
    b = alloc.alloc(0x800, 0x1000)
    c = alloc.alloc(0x10)
    assert (a, b) == (0x1000, 0x2000) and 0x1800 <= c < 0x2000
    with pytest.raises(MemoryError):
        alloc.alloc(0x1000)
    for addr in (b, a, c):
        alloc.free(addr)
    assert alloc.bytes_free == 0x2000 and alloc.allocations == 0
    assert alloc.alloc(0x2000) == 0x1000, "free blocks merged back into one"
    with pytest.raises(ValueError):
        alloc.free(0x1234)
