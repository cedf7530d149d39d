"""Start a real qemu-system-x86_64 whose only "guest" is the test, talking qtest.

Why the machine looks like this:

* Guest RAM is a shared memfd so a vhost-user backend can map it (vhost-user needs
  ``share=on``), and ``-machine memory-backend=`` makes it the machine's RAM.
* This QEMU build has no qtest accelerator, so the vCPU really runs under TCG. A BIOS
  would race the test for the PCI config ports and move BARs, so the firmware is a file
  of HLT bytes: the reset vector (0xfffffff0) executes HLT with IF=0 and the CPU sleeps
  forever. QEMU only accepts a ``-bios`` whose size is a multiple of 64 KiB.
* ``-S`` is not an option: vhost-user devices only start while the VM runs.
* ``-qtest-log none`` rather than ``/dev/null``: with a log file QEMU 10.0 prints a GLib
  ``g_timer_elapsed: assertion 'timer != NULL' failed`` on shutdown, noise that would
  pollute the stderr we show in error messages. Without ``-qtest-log`` it logs every
  command to stderr.
* The test listens on the qtest socket and QEMU connects to it (``-qtest unix:PATH`` is
  a client chardev), as QEMU's own libqtest does; closing it does not stop QEMU.
* qtest has no quit command, and QEMU keeps running when the qtest connection closes:
  the VM is stopped with SIGTERM, then SIGKILL after a grace period, and is always
  reaped (also at interpreter exit, via a finalizer). If the test process itself dies
  (SIGKILL, OOM), QEMU gets SIGKILL through PR_SET_PDEATHSIG, set by ``setpriv`` so that
  no unsafe ``preexec_fn`` runs in a threaded parent. The death signal follows the
  *thread* that spawned QEMU, so it is only armed when starting from the main thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import TracebackType

from .qtest import QTest

__all__ = [
    "HLT_FIRMWARE_SIZE",
    "MIN_QEMU_VERSION",
    "QemuError",
    "QemuNotFoundError",
    "QemuVM",
    "find_qemu",
    "qemu_version",
]

QEMU_BINARY = "qemu-system-x86_64"
MIN_QEMU_VERSION = (10, 0, 0)
#: QEMU rejects -bios images that are not a multiple of 64 KiB.
HLT_FIRMWARE_SIZE = 64 * 1024
_HLT = b"\xf4"


class QemuError(RuntimeError):
    """QEMU failed to start, died, or did not exit when asked."""


class QemuNotFoundError(QemuError):
    """No usable qemu-system-x86_64 (missing from PATH, or older than required)."""


@lru_cache(maxsize=8)
def qemu_version(binary: str) -> tuple[int, int, int]:
    """Return the (major, minor, micro) version printed by ``binary --version``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QemuNotFoundError(f"cannot run {binary} --version: {exc}") from exc
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        raise QemuNotFoundError(
            f"cannot parse the version of {binary}: {out.stdout.strip()!r} {out.stderr.strip()!r}"
        )
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def find_qemu(min_version: tuple[int, int, int] = MIN_QEMU_VERSION) -> str:
    """Locate qemu-system-x86_64 on PATH and check its version, or raise clearly.

    ``$QEMU`` overrides the lookup, for trying another build.
    """
    binary = os.environ.get("QEMU") or shutil.which(QEMU_BINARY)
    if not binary:
        raise QemuNotFoundError(
            f"{QEMU_BINARY} not found on PATH; install QEMU >= "
            f"{'.'.join(map(str, min_version))} (Debian: qemu-system-x86 from bookworm-backports)"
        )
    version = qemu_version(binary)
    if version < min_version:
        raise QemuNotFoundError(
            f"{binary} is QEMU {'.'.join(map(str, version))}; the tests need >= "
            f"{'.'.join(map(str, min_version))}"
        )
    return binary


def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate then kill ``proc`` and wait for it; safe to call more than once."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def _cleanup(proc: subprocess.Popen[bytes] | None, tmpdir: str, grace: float) -> None:
    """Finalizer body: never leave a QEMU or a temp dir behind, even if close() was skipped."""
    if proc is not None:
        _reap(proc, grace)
    shutil.rmtree(tmpdir, ignore_errors=True)


class QemuVM:
    """A running QEMU q35 machine, halted CPU, driven through qtest.

    Use as a context manager::

        with QemuVM(devices=["-device", "virtio-rng-pci,disable-legacy=on,addr=0x3"]) as vm:
            vm.qtest.readl(0x1000)

    ``devices`` are extra raw QEMU arguments (``-chardev``/``-device`` for a vhost-user
    backend, see :meth:`vhost_user_args`). ``tmpdir`` exists from construction on, so
    socket paths can be placed there before the VM starts (it is short, under /tmp, to
    stay below the 108-byte AF_UNIX path limit).
    """

    def __init__(
        self,
        devices: Sequence[str] = (),
        *,
        memory_mb: int = 256,
        qemu: str | None = None,
        timeout: float = 10.0,
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        extra_args: Sequence[str] = (),
        exit_with_parent: bool = True,
    ) -> None:
        if memory_mb < 128:
            # virtio_pci.GuestAllocator hands out 1 MiB..128 MiB by default.
            raise ValueError("memory_mb must be at least 128")
        self.binary = qemu or find_qemu()
        self.memory_mb = memory_mb
        self.devices = list(devices)
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.exit_with_parent = exit_with_parent
        self.tmpdir = Path(tempfile.mkdtemp(prefix="efird-qemu-"))
        self.firmware = self.tmpdir / "hlt.bin"
        self.qtest_socket = self.tmpdir / "qtest.sock"
        self.stderr_path = self.tmpdir / "qemu.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self._qtest: QTest | None = None
        self._stderr_cache = ""
        self._finalizer = weakref.finalize(self, _cleanup, None, str(self.tmpdir), stop_timeout)

    # -- building the command line -------------------------------------------------------

    @staticmethod
    def vhost_user_args(
        socket_path: str | os.PathLike[str],
        device: str = "vhost-user-rng-pci",
        *,
        addr: int = 3,
        chardev_id: str = "vu",
        options: str = "",
    ) -> list[str]:
        """Arguments attaching a vhost-user backend listening on ``socket_path``.

        QEMU connects as a client and talks to the backend during device realize, so the
        backend must already listen when the VM starts.
        """
        extra = f",{options}" if options else ""
        return [
            "-chardev", f"socket,id={chardev_id},path={os.fspath(socket_path)}",
            "-device", f"{device},chardev={chardev_id},addr={addr:#x}{extra}",
        ]  # fmt: skip

    def command_line(self) -> list[str]:
        """The full QEMU argument vector this VM runs with (useful in reports/logs)."""
        mem = f"{self.memory_mb}M"
        return [
            self.binary,
            "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "none", "-monitor", "none",
            "-accel", "tcg",
            "-m", mem,
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
            "-machine", "q35,memory-backend=mem",
            "-bios", str(self.firmware),
            "-qtest", f"unix:{self.qtest_socket}",
            "-qtest-log", "none",
            *self.devices,
            *self.extra_args,
        ]  # fmt: skip

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> QemuVM:
        """Write the firmware, spawn QEMU and accept its qtest connection."""
        if self._proc is not None:
            raise QemuError("this QemuVM was already started")
        self.firmware.write_bytes(_HLT * HLT_FIRMWARE_SIZE)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.qtest_socket))
            listener.listen(1)
            with open(self.stderr_path, "wb") as err:
                self._proc = subprocess.Popen(
                    self._launcher() + self.command_line(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            self._finalizer.detach()
            self._finalizer = weakref.finalize(
                self, _cleanup, self._proc, str(self.tmpdir), self.stop_timeout
            )
            conn = self._accept(listener)
        except BaseException:
            listener.close()
            self.close()
            raise
        listener.close()
        self.qtest_socket.unlink(missing_ok=True)
        self._qtest = QTest(conn, timeout=self.timeout, diagnose=self.diagnose)
        try:
            endian = self._qtest.endianness()
            if endian != "little":
                raise QemuError(f"unexpected target endianness {endian!r}")
        except BaseException:
            self.close()
            raise
        return self

    def _launcher(self) -> list[str]:
        """Prefix that arms PR_SET_PDEATHSIG=SIGKILL, when that is safe and possible."""
        if not self.exit_with_parent or threading.current_thread() is not threading.main_thread():
            return []
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "KILL"] if setpriv else []

    def _accept(self, listener: socket.socket) -> socket.socket:
        """Wait for QEMU to connect to the qtest socket, noticing early death."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        listener.settimeout(0.05)
        while True:
            try:
                conn, _ = listener.accept()
                return conn
            except TimeoutError:
                pass
            if self._proc.poll() is not None:
                raise QemuError(f"QEMU failed to start: {self.diagnose()}")
            if time.monotonic() > deadline:
                raise QemuError(
                    f"QEMU did not connect to the qtest socket within {self.start_timeout:g}s; "
                    f"{self.diagnose()}"
                )

    def close(self) -> None:
        """Stop QEMU (SIGTERM, then SIGKILL), reap it, keep its stderr, drop the tmp dir."""
        if self._qtest is not None:
            self._qtest.close()
        proc = self._proc
        if proc is not None:
            _reap(proc, self.stop_timeout)
            self._stderr_cache = self._read_stderr()
        self._finalizer()  # idempotent: removes tmpdir (and reaps, already done)

    def __enter__(self) -> QemuVM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- accessors -----------------------------------------------------------------------

    @property
    def qtest(self) -> QTest:
        """The qtest connection (only while the VM runs)."""
        if self._qtest is None:
            raise QemuError("the VM is not started")
        return self._qtest

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The QEMU process object."""
        if self._proc is None:
            raise QemuError("the VM is not started")
        return self._proc

    @property
    def pid(self) -> int:
        """QEMU's process id (for sending signals in tests)."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status, or None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        """True while the QEMU process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def stderr(self) -> str:
        """Everything QEMU wrote to stderr so far (kept after close())."""
        return self._read_stderr() or self._stderr_cache

    def _read_stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def diagnose(self) -> str:
        """One line about QEMU's state for error messages: alive or exit status, stderr."""
        if self._proc is None:
            return "QEMU not started"
        rc = self._proc.poll()
        state = "QEMU is still running" if rc is None else f"QEMU exited with status {rc}"
        if rc is not None and rc < 0:
            with contextlib.suppress(ValueError):  # not every number is a known signal
                state += f" ({signal.Signals(-rc).name})"
        err = self.stderr.strip()
        return f"{state}; stderr: {err!r}" if err else state

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself; return its status or raise QemuError."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise QemuError(f"QEMU (pid {self.pid}) still running after {timeout:g}s") from None
