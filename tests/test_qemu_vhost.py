"""efird attached to a real QEMU 10 over vhost-user.

QEMU's `vhost-user-rng-pci` carries one virtqueue to efird (stock QEMU does not let users
create the generic vhost-user-device); the guest is played by a Python virtio-pci driver
over qtest, with a firmware that only halts so nothing else touches the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import Status

from .daemon import EfirdDaemon
from .qemu.virtio_pci import VirtioPciDevice, Virtqueue
from .qemu.vm import QemuVM

pytestmark = pytest.mark.qemu
VIRTIO_ID_RNG = 4
SLOT = 3
VENDOR = g.guid_bytes("5e0c7c1a-34d5-4a7c-9e2e-8b1a6d7f0c11")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[EfirdDaemon]:
    with EfirdDaemon(Path("/tmp") / f"efird-{tmp_path.name[-20:]}.sock",
                     tmp_path / "vm.efivars") as d:
        yield d


@pytest.fixture
def vm(daemon: EfirdDaemon) -> Iterator[QemuVM]:
    args = QemuVM.vhost_user_args(daemon.socket, addr=SLOT)
    with QemuVM(args) as machine:
        yield machine


def attach(vm: QemuVM) -> tuple[VirtioPciDevice, Virtqueue]:
    dev = VirtioPciDevice(vm.qtest, VIRTIO_ID_RNG, slot=SLOT)
    (queue,) = dev.init()
    return dev, queue


def call(queue: Virtqueue, request: bytes) -> bytes:
    queue.submit([request], [len(request)])
    used = queue.wait_used(timeout=10)
    assert used.used_len in (0, len(request)), used
    return used.in_data[: used.used_len]


def test_variable_round_trips_through_qemu(vm: QemuVM, daemon: EfirdDaemon) -> None:
    _, queue = attach(vm)
    assert c.return_status(call(queue, c.set_variable(VENDOR, "ViaQemu", 7, b"hello"))
                           ) is Status.SUCCESS
    got = c.parse_get_variable(call(queue, c.get_variable(VENDOR, "ViaQemu", 16)))
    assert (got.status, got.data) == (Status.SUCCESS, b"hello")
    names, guid, name = [], bytes(16), ""
    while True:
        status, guid, name, _ = c.parse_get_next(call(queue, c.get_next_variable_name(guid,
                                                                                       name)))
        if status is Status.NOT_FOUND:
            break
        names.append(name)
    assert "ViaQemu" in names and "SecureBoot" in names
    # the bring-up QEMU 10 does, as seen by efird
    seen = daemon.messages()
    for request in ("GET_FEATURES", "SET_FEATURES", "SET_VRING_NUM", "SET_VRING_ADDR",
                    "SET_VRING_BASE", "SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ENABLE"):
        assert request in seen, request
    assert "SET_MEM_TABLE" in seen or "ADD_MEM_REG" in seen


def test_memory_slots_from_qemu_are_followed(vm: QemuVM, daemon: EfirdDaemon) -> None:
    """efird offers CONFIGURE_MEM_SLOTS, so QEMU 10 sends its memory table region by
    region (GET_MAX_MEM_SLOTS, then ADD_MEM_REG per region) instead of SET_MEM_TABLE; the
    rings live in one of those regions and are translated through it. (Removing and
    re-adding a region while rings are live is exercised by the Python frontend in
    test_vhost_backend.py: QEMU only does that when the guest's memory topology changes.)"""
    _, queue = attach(vm)
    for i in range(10):
        assert c.return_status(call(queue, c.set_variable(VENDOR, f"V{i}", 7, b"x"))
                               ) is Status.SUCCESS
    seen = daemon.messages()
    assert "GET_MAX_MEM_SLOTS" in seen and "SET_MEM_TABLE" not in seen
    assert seen.count("ADD_MEM_REG") >= 1
    assert seen.index("ADD_MEM_REG") < seen.index("SET_VRING_ADDR")
    assert not daemon.events("virtqueue broken; needs a device reset")
    assert not daemon.events("bad descriptor chain")


def test_malformed_envelope_through_qemu_is_refused_and_serving_goes_on(
        vm: QemuVM, daemon: EfirdDaemon) -> None:
    _, queue = attach(vm)
    queue.submit([bytes(10)], [10])
    assert queue.wait_used(timeout=10).used_len == 0  # refused: nothing written
    access = c.variable_request(3, bytes(16) + (2**63).to_bytes(8, "little") * 2 + bytes(4))
    assert c.return_status(call(queue, access)) is Status.ACCESS_DENIED
    assert c.return_status(call(queue, c.query_variable_info(7))) is Status.SUCCESS


def test_guest_reset_then_reinitialisation(vm: QemuVM, daemon: EfirdDaemon) -> None:
    dev, queue = attach(vm)
    call(queue, c.set_variable(VENDOR, "BeforeReset", 7, b"1"))
    dev.reset()
    daemon.wait_for("message", count=len(daemon.events("message")))
    assert "GET_VRING_BASE" in daemon.messages()
    (queue,) = dev.init()
    got = c.parse_get_variable(call(queue, c.get_variable(VENDOR, "BeforeReset", 4)))
    assert got.data == b"1"
    assert c.return_status(call(queue, c.set_variable(VENDOR, "AfterReset", 7, b"2"))
                           ) is Status.SUCCESS


def test_qemu_exit_is_noticed_and_the_daemon_waits_for_the_next(daemon: EfirdDaemon) -> None:
    for round_ in range(2):
        args = QemuVM.vhost_user_args(daemon.socket, addr=SLOT)
        with QemuVM(args) as machine:
            _, queue = attach(machine)
            call(queue, c.set_variable(VENDOR, f"Round{round_}", 7, b"x"))
        daemon.wait_for("frontend disconnected", count=round_ + 1)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert daemon.events("stopped")
