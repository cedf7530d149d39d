"""Booting Debian's stock kernel: efird's PVH shim against Debian's OVMF, same kernel,
same initramfs, same command line, same QEMU (TCG), in the same run.

Figures (host time from QEMU's start, read off the serial console as lines arrive):
  * to the kernel's EFI entry — shim: its "entering the kernel" line, printed just before
    the call; OVMF: the EFI stub's first firmware request with a host-visible effect, its
    8-byte EFI_RNG_PROTOCOL read for the KASLR seed (a virtio-rng device is attached to
    the OVMF guest for this and traced), a few instructions after the entry.
  * to ExitBootServices — the decompressed kernel's first line ("Linux version", with
    earlyprintk), which it prints right after ExitBootServices, for both; the shim's own
    ExitBootServices line is reported too.
  * GetVariable as the guest sees it — the shim's self-test, timed with the TSC inside
    the guest; its floor is the same round trip for a request efird refuses unread.
Each boot stops at the first kernel line (nothing after it is measured).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import Figure
from tests.daemon import EfirdDaemon
from tests.guest import image
from tests.guest.boot import GuestVM

ROUNDS = int(os.environ.get("BOOT_ROUNDS", "2"))
CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0 efi=debug panic=-1"
SELFTEST = re.compile(r"self-test: (.+?) x\d+: status 0x[0-9a-f]+, median (\d+) ns")


def _boot(firmware: str, kernel: Path, initrd: Path, socket: Path | None,
          options: str = "", stop_at: str = "Linux version") -> GuestVM:
    vm = GuestVM(kernel=kernel, initrd=initrd, cmdline=CMDLINE, efird_socket=socket,
                 firmware=firmware, options=options, trace_rng=firmware == "ovmf",
                 stop_at=stop_at, timeout=300)
    vm.run()
    vm.cleanup()
    return vm


def run() -> list[Figure]:
    pkgs = image.fetch_packages()
    work = Path(tempfile.mkdtemp(prefix="efird-bench-boot-"))
    initrd = image.build_initramfs(pkgs, work / "initrd.cpio.gz")
    shim_entry, shim_ebs, shim_linux, ovmf_entry, ovmf_linux = [], [], [], [], []

    def shim_boot(n: int, **kw: str) -> GuestVM:
        # A daemon per boot: a guest that went past ExitBootServices leaves efird in the
        # runtime phase until ResetSystem, as a VM killed mid-run would.
        with EfirdDaemon(Path("/tmp") / f"efird-bench-boot-{os.getpid()}-{n}.sock",
                         work / f"bench-{n}.efivars", log_level="info") as daemon:
            return _boot("shim", pkgs.vmlinuz, initrd, daemon.socket, **kw)

    for n in range(ROUNDS):
        vm = shim_boot(n)
        entry = vm.console.first("entering the kernel")
        ebs = vm.console.first("ExitBootServices")
        linux = vm.console.first("Linux version")
        if entry is None or ebs is None or linux is None:
            raise RuntimeError("shim boot incomplete:\n" + vm.console.text[-3000:])
        shim_entry.append(entry * 1e3)
        shim_ebs.append(ebs * 1e3)
        shim_linux.append(linux * 1e3)
        vm = _boot("ovmf", pkgs.vmlinuz, initrd, None)
        seed = [t for t, size in vm.rng_requests if size == 8]
        linux = vm.console.first("Linux version")
        if not seed or linux is None:
            raise RuntimeError("OVMF boot incomplete:\n" + vm.console.text[-3000:])
        ovmf_entry.append(seed[0] * 1e3)
        ovmf_linux.append(linux * 1e3)
    vm = shim_boot(ROUNDS, options="selftest=500", stop_at="entering the kernel")
    shutil.rmtree(work, ignore_errors=True)
    tests = {m[1]: float(m[2]) for m in SELFTEST.finditer(vm.console.text)}
    if "GetVariable(SecureBoot)" not in tests or "refused request (floor)" not in tests:
        raise RuntimeError("shim self-test missing:\n" + vm.console.text[-3000:])
    med = statistics.median
    return [
        Figure("boot: QEMU start -> kernel EFI entry (shim)", med(shim_entry), "ms",
               med(ovmf_entry), "<= 0.1 x OVMF (floor)"),
        Figure("boot: QEMU start -> ExitBootServices (shim)", med(shim_linux), "ms",
               med(ovmf_linux), "<= 0.5 x OVMF (floor); first kernel line"),
        Figure("boot: shim's own ExitBootServices line", med(shim_ebs), "ms", None,
               "-"),
        Figure("guest GetVariable round trip (TSC, in guest)",
               tests["GetVariable(SecureBoot)"] / 1e3, "us",
               tests["refused request (floor)"] / 1e3, "floor: refused request"),
    ]
