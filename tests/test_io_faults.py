"""I/O faults under a running daemon: a full disk (a small tmpfs), a filesystem that turns
read-only underneath the store (EROFS, as ext4's errors=remount-ro does), and EIO on write
and on fsync, injected into the daemon's real system calls with strace. In every case
SetVariable answers OUT_OF_RESOURCES or DEVICE_ERROR, what the guest reads stays what the
disk holds, reads keep working, and the daemon recovers when the fault clears."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import Status
from efird.store.sqlite import SqliteStore

from .daemon import EfirdDaemon, attach
from .vhost.frontend import VhostUserFrontend

VENDOR = g.guid_bytes("9e1f0c2d-3a4b-4c5d-8e6f-7a8b9c0d1e2f")


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 4 MiB tmpfs of its own (the tests run as root, as CI does)."""
    path = Path(tempfile.mkdtemp(prefix="efird-fs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efird-io-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def set_var(front: VhostUserFrontend, name: str, data: bytes) -> Status:
    req = c.set_variable(VENDOR, name, 7, data)
    return c.return_status(front.request(0, req, len(req)))


def get_var(front: VhostUserFrontend, name: str) -> bytes | None:
    req = c.get_variable(VENDOR, name, 4096)
    result = c.parse_get_variable(front.request(0, req, len(req)))
    if result.status is Status.NOT_FOUND:
        return None
    assert result.status is Status.SUCCESS, result.status
    return result.data


def on_disk(store: Path) -> dict[str, bytes]:
    s = SqliteStore(store, exclusive=False)
    try:
        return {v.name: v.data for v in s.load() if v.guid == VENDOR}
    finally:
        s.close()


def test_full_disk(small_fs: Path) -> None:
    store = small_fs / "vm.efivars"
    with EfirdDaemon(small_fs / "vm.sock", store, log_level="info") as daemon, \
            attach(daemon) as front:
        assert set_var(front, "Before", b"kept") is Status.SUCCESS
        filler = small_fs / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(bytes(64 << 10))
                    f.flush()
            except OSError:
                pass
        acked: dict[str, bytes] = {"Before": b"kept"}
        statuses = set()
        for i in range(3000):
            data = os.urandom(1024)
            status = set_var(front, f"Fill{i}", data)
            statuses.add(status)
            if status is Status.SUCCESS:
                acked[f"Fill{i}"] = data
            else:
                assert status is Status.OUT_OF_RESOURCES, status
                # what the guest reads is what the disk has: the refused write is not there
                assert get_var(front, f"Fill{i}") is None
                if i > 5 and Status.SUCCESS in statuses:
                    break
        assert Status.OUT_OF_RESOURCES in statuses
        assert get_var(front, "Before") == b"kept"  # reads keep working
        filler.unlink()  # the fault clears
        assert set_var(front, "After", b"back") is Status.SUCCESS
        acked["After"] = b"back"
        errors = [e for e in daemon.events("store full")]
        assert 1 <= len(errors) <= 3  # logged once per window, not per write
    assert on_disk(store) == acked


def _strace(pid: int, inject: str) -> subprocess.Popen[bytes]:
    """Attach strace to every thread of pid and make `inject` fail; detached on kill."""
    syscall = inject.split(":")[0]
    proc = subprocess.Popen(["strace", "-f", "-qq", "-p", str(pid), "-e", f"trace={syscall}",
                             "-e", f"inject={inject}", "-o", "/dev/null"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # attached to every thread
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


def _detach(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # strace detaches and lets the tracee run on
    proc.wait(10)


@pytest.mark.parametrize("syscall,errno_name,expected", [
    ("pwrite64", "EIO", Status.DEVICE_ERROR),
    ("fdatasync", "EIO", Status.DEVICE_ERROR),
    ("pwrite64", "EROFS", Status.DEVICE_ERROR),
    ("pwrite64", "ENOSPC", Status.OUT_OF_RESOURCES),
])
def test_injected_write_and_sync_failures(work: Path, syscall: str, errno_name: str,
                                          expected: Status) -> None:
    store = work / "vm.efivars"
    with EfirdDaemon(work / "vm.sock", store, log_level="info") as daemon, \
            attach(daemon) as front:
        assert set_var(front, "Stable", b"one") is Status.SUCCESS
        for i in range(20):  # fill the WAL a little, so the faults hit a used store
            assert set_var(front, f"Pre{i}", bytes([i]) * 100) is Status.SUCCESS
        assert daemon.proc is not None
        tracer = _strace(daemon.proc.pid, f"{syscall}:error={errno_name}")
        try:
            for attempt in range(3):
                assert set_var(front, "Stable", b"two") is expected, attempt
                assert set_var(front, f"New{attempt}", b"x") is expected
                # the guest still reads the value the disk holds, and the rest
                assert get_var(front, "Stable") == b"one"
                assert get_var(front, f"New{attempt}") is None
                assert get_var(front, "Pre3") == bytes([3]) * 100
        finally:
            _detach(tracer)
        # the fault has cleared: writes work again, and nothing of the failed ones shows
        assert set_var(front, "Stable", b"three") is Status.SUCCESS
        assert set_var(front, "Later", b"y") is Status.SUCCESS
        assert get_var(front, "New0") is None
    disk = on_disk(store)
    assert disk["Stable"] == b"three" and disk["Later"] == b"y"
    assert not any(name.startswith("New") for name in disk)
    assert all(disk[f"Pre{i}"] == bytes([i]) * 100 for i in range(20))


def test_a_store_on_a_read_only_filesystem_is_a_clear_error(small_fs: Path) -> None:
    store = small_fs / "vm.efivars"
    s = SqliteStore(store)
    s.close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    proc = subprocess.run([*EfirdDaemon(small_fs / "vm.sock", store).argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert str(store) in proc.stderr and "Read-only" in proc.stderr
