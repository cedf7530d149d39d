"""Domain lifecycle with a real QEMU 10 attached: reboot, kexec, and migration to a second
daemon and a second QEMU (the guest driven over qtest, as in test_qemu_vhost.py)."""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.bootmem.description import q35
from efird.control.client import ControlClient
from efird.efi import guid as g
from efird.efi.status import Status

from .daemon import EfirdDaemon
from .qemu.vm import QemuVM
from .test_qemu_vhost import SLOT, attach, call

pytestmark = pytest.mark.qemu
VENDOR = g.guid_bytes("0c8a1e77-5b4f-4f3e-9a61-7e2d9c0b1a55")


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efird-ql-"))
    (path / "q35.memmap").write_text("".join(f"{a:#x} {s:#x} {k}\n" for a, s, k in q35(256)))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def daemon(work: Path, name: str) -> EfirdDaemon:
    return EfirdDaemon(work / f"{name}.sock", work / f"{name}.efivars", "--domain", "vm1",
                       "--memmap", str(work / "q35.memmap"), "--control",
                       str(work / f"{name}.ctl"))


def qemu(d: EfirdDaemon) -> QemuVM:
    return QemuVM(QemuVM.vhost_user_args(d.socket, addr=SLOT))


def reset(kind: int) -> bytes:
    return c.envelope(g.EFIRD_RESET_SERVICE,
                      struct.pack("<QQ", 1, 0) + struct.pack("<IIQQ", kind, 0, 0, 0))


def runtime_map(queue: object) -> bytes:
    resp = call(queue, c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", 1, 0)  # type: ignore[arg-type]
                                  + struct.pack("<QQII", 2048, 0, 0, 0) + bytes(2048)))
    assert c.return_status(resp) is Status.SUCCESS
    size = struct.unpack_from("<Q", resp, 40)[0]
    return resp[64 : 64 + size]


def test_reboot_cycle(work: Path) -> None:
    with daemon(work, "a") as d, qemu(d) as vm:
        dev, queue = attach(vm)
        call(queue, c.set_variable(VENDOR, "Nv", 7, b"kept"))
        call(queue, c.set_variable(VENDOR, "Vol", 6, b"cleared"))
        call(queue, c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b""))
        assert c.return_status(call(queue, reset(0))) is Status.SUCCESS
        dev.reset()  # the VM resets; the firmware brings the device up again
        (queue,) = dev.init()
        assert c.parse_get_variable(call(queue, c.get_variable(VENDOR, "Nv", 8))).data == b"kept"
        assert c.parse_get_variable(call(queue, c.get_variable(VENDOR, "Vol", 8))).status \
            is Status.NOT_FOUND
        assert ControlClient(work / "a.ctl").status()["phase"]["runtime"] is False


def test_kexec_cycle_keeps_state_and_the_runtime_map(work: Path) -> None:
    with daemon(work, "a") as d, qemu(d) as vm:
        _dev, queue = attach(vm)
        call(queue, c.set_variable(VENDOR, "Vol", 6, b"kept over kexec"))
        status, _addr = c.parse_allocate_pages(call(queue, c.allocate_pages(0, 6, 2)))
        assert status is Status.SUCCESS
        status, _, key, desc_size, _, raw = c.parse_get_memory_map(call(queue,
                                                                        c.get_memory_map(2048)))
        assert c.return_status(call(queue, c.exit_boot_services(key))) is Status.SUCCESS
        vmap = b""
        for n, at in enumerate(range(0, len(raw), desc_size)):
            kind, _p, phys, _v, pages, attr = struct.unpack_from("<IIQQQQ", raw, at)
            if attr >> 63:
                vmap += struct.pack("<IIQQQQ", kind, 0, phys, 0xFFFFFFFF00000000 - (n + 1)
                                    * 0x1000000, pages, attr) + bytes(desc_size - 40)
        assert c.return_status(call(queue, c.set_virtual_address_map(vmap, desc_size))) \
            is Status.SUCCESS
        before = runtime_map(queue)
        soft = c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", 3, 0) + bytes(8))
        assert c.return_status(call(queue, soft)) is Status.SUCCESS
        assert runtime_map(queue) == before  # the next kernel finds the same addresses
        got = c.parse_get_variable(call(queue, c.get_variable(VENDOR, "Vol", 32)))
        assert got.data == b"kept over kexec"
        key = c.parse_get_memory_map(call(queue, c.get_memory_map(2048)))[2]
        assert c.return_status(call(queue, c.exit_boot_services(key))) is Status.SUCCESS
        assert c.return_status(call(queue, c.set_virtual_address_map(vmap, desc_size))) \
            is Status.SUCCESS
        assert [e["kind"] for e in d.events("event")] == ["kexec"]


def test_migration_to_a_second_daemon_and_qemu(work: Path) -> None:
    source = daemon(work, "src").start()
    with qemu(source) as vm:
        _dev, queue = attach(vm)
        call(queue, c.set_variable(VENDOR, "Nv", 7, b"on disk"))
        call(queue, c.set_variable(VENDOR, "Vol", 6, b"in memory"))
        blob = ControlClient(work / "src.ctl").save_state()
        assert source.stop() == 0  # the source stops; its store moves with the VM
    shutil.copy(work / "src.efivars", work / "dst.efivars")
    with daemon(work, "dst") as target:
        ControlClient(work / "dst.ctl").restore_state(blob)
        with qemu(target) as vm2:
            _dev, queue = attach(vm2)
            got = [c.parse_get_variable(call(queue, c.get_variable(VENDOR, n, 16))).data
                   for n in ("Nv", "Vol")]
            assert got == [b"on disk", b"in memory"]
