"""Boot a real kernel in QEMU: through efird's PVH shim (efird serving its EFI
environment over vhost-user), or through Debian's OVMF for comparison.

The shim is built by the project's own build (`make -C protocols/shim`, system gcc and
ld). The kernel, initrd, command line and shim options reach the shim through QEMU's
fw_cfg (opt/efird/kernel, opt/efird/initrd, opt/efird/cmdline, opt/efird/options). The
serial console is read line by line with the host time each line arrived, which is what
the boot benchmark measures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.qemu.vm import find_qemu

ROOT = Path(__file__).resolve().parents[2]
SHIM_DIR = ROOT / "protocols" / "shim"
SHIM_OUT = ROOT / "build" / "shim"
SHIM_ELF = SHIM_OUT / "efird-shim.elf"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def build_shim() -> Path:
    """Build the shim with the system toolchain (incremental; about a second from clean)."""
    done = subprocess.run(["make", "-s", "-C", str(SHIM_DIR), f"OUT={SHIM_OUT}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the shim failed:\n{done.stdout}{done.stderr}")
    return SHIM_ELF


@dataclass
class Console:
    """Serial output: (seconds since QEMU started, line)."""

    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(line for _t, line in self.lines)

    def first(self, needle: str) -> float | None:
        """When the first line containing `needle` arrived (seconds after start)."""
        for t, line in self.lines:
            if needle in line:
                return t
        return None


class GuestVM:
    """One QEMU run to completion: the guest powers off (or the timeout kills it)."""

    def __init__(self, *, kernel: Path, initrd: Path | None, cmdline: str,
                 efird_socket: Path | None = None, options: str = "",
                 firmware: str = "shim", memory_mb: int = 1024, cpu: str = "max",
                 extra_args: Sequence[str] = (), timeout: float = 600.0,
                 on_line: Callable[[float, str], None] | None = None,
                 trace_rng: bool = False, stop_at: str | None = None) -> None:
        if firmware not in ("shim", "ovmf"):
            raise ValueError("firmware is 'shim' or 'ovmf'")
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.efird_socket, self.options, self.firmware = efird_socket, options, firmware
        self.memory_mb, self.cpu, self.extra_args = memory_mb, cpu, list(extra_args)
        self.timeout = timeout
        self.on_line = on_line
        self.trace_rng = trace_rng
        self.stop_at = stop_at  # kill QEMU once a console line contains this
        self.rng_requests: list[tuple[float, int]] = []  # (seconds, bytes) with trace_rng
        self.tmpdir = Path(tempfile.mkdtemp(prefix="efird-guest-"))
        self.console = Console()
        self.returncode: int | None = None
        self.stderr = ""

    def command_line(self) -> list[str]:
        mem = f"{self.memory_mb}M"
        argv = [find_qemu(), "-nodefaults", "-no-user-config", "-display", "none",
                "-serial", "stdio", "-monitor", "none", "-accel", "tcg", "-cpu", self.cpu,
                "-m", mem, "-no-reboot",
                "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
                "-machine", "q35,memory-backend=mem"]
        if self.firmware == "shim":
            cmdline = self.tmpdir / "cmdline"
            cmdline.write_text(self.cmdline)
            options = self.tmpdir / "options"
            options.write_text(self.options)
            argv += ["-kernel", str(build_shim()),
                     "-fw_cfg", f"name=opt/efird/kernel,file={self.kernel}",
                     "-fw_cfg", f"name=opt/efird/cmdline,file={cmdline}",
                     "-fw_cfg", f"name=opt/efird/options,file={options}"]
            if self.initrd is not None:
                argv += ["-fw_cfg", f"name=opt/efird/initrd,file={self.initrd}"]
        else:
            vars_copy = self.tmpdir / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                     "-kernel", str(self.kernel), "-append", self.cmdline]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
        if self.trace_rng:
            # A virtio-rng device and QEMU's trace of its requests: the kernel's EFI stub
            # asks the firmware's EFI_RNG_PROTOCOL for its KASLR seed (8 bytes) first
            # thing, which marks the stub's entry under OVMF from the host side.
            argv += ["-device", "virtio-rng-pci,addr=0x4", "-trace", "virtio_rng_request"]
        if self.efird_socket is not None:
            argv += ["-chardev", f"socket,id=efird,path={self.efird_socket}",
                     "-device", "vhost-user-rng-pci,chardev=efird,addr=0x3"]
        return argv + self.extra_args

    def run(self) -> GuestVM:
        """Start QEMU, collect the console until it exits; kill it after the timeout."""
        argv = self.command_line()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout, proc.stderr
        errors: list[str] = []

        def console() -> None:
            for raw in iter(stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                now = time.monotonic() - t0
                self.console.lines.append((now, line))
                if self.on_line is not None:
                    self.on_line(now, line)
                if self.stop_at is not None and self.stop_at in line:
                    proc.kill()

        def diagnostics() -> None:
            for raw in iter(stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                now = time.monotonic() - t0
                match = _RNG_TRACE.search(line)
                if match:
                    self.rng_requests.append((now, int(match[1])))
                else:
                    errors.append(line)

        threads = [threading.Thread(target=f, daemon=True) for f in (console, diagnostics)]
        for thread in threads:
            thread.start()
        try:
            self.returncode = proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.returncode = None
        for thread in threads:
            thread.join(5)
        self.stderr = "\n".join(errors)
        return self

    def cleanup(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> GuestVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


_RNG_TRACE = re.compile(r"virtio_rng_request .*?: (\d+) bytes requested")


def short_socket(tag: str) -> Path:
    """A vhost-user socket path short enough for AF_UNIX (108 bytes)."""
    return Path("/tmp") / f"efird-{tag[-24:]}-{os.getpid()}.sock"
