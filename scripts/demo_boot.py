"""The seed, live: Debian's stock kernel boots through efird's PVH shim under QEMU 10
(TCG), with efird serving its whole EFI environment over vhost-user.

It sets a variable on the host with `efird vars`, starts `efird serve`, boots the guest
(the shim from protocols/shim, the kernel and an initramfs built from Debian packages)
and prints the console lines that matter as they arrive: the shim's steps, the kernel's
"efi: EFI v2.70 by efird", and the guest's efivarfs steps, including a kexec into the
same kernel. Then it stops efird and lists the store with the CLI, guest write included.
The store stays in demo-out/boot.efivars.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon import EfirdDaemon  # noqa: E402
from tests.guest import image  # noqa: E402
from tests.guest.boot import GuestVM, build_shim  # noqa: E402

OUT = ROOT / "demo-out"
VENDOR = "5e0c7c1a-34d5-4a7c-9e2e-8b1a6d7f0c11"
SHOW = ("efird-shim:", "Linux version", "efi: EFI v", "efi: ACPI", "Secure boot",
        "secureboot:", "Registered efivars", "kexec_core", "EFIRD-TEST", "reboot: Power down")


def vars_cli(store: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "--store",
                           str(store), *args], capture_output=True, text=True, check=True)
    return done.stdout


def main() -> int:
    OUT.mkdir(exist_ok=True)
    store = OUT / "boot.efivars"
    store.unlink(missing_ok=True)
    print("== building the shim and the guest image (Debian packages via apt-get download)")
    shim = build_shim()
    pkgs = image.fetch_packages()
    initrd = image.build_initramfs(pkgs, OUT / "boot-initrd.cpio.gz")
    print(f"   shim {shim.stat().st_size} bytes; kernel {pkgs.kernel_version}; "
          f"initramfs {initrd.stat().st_size} bytes")
    vars_cli(store, "set", "DemoHostVar", "--guid", VENDOR, "--string", "set on the host")
    vars_cli(store, "set", "DemoDeleteMe", "--guid", VENDOR, "--data", "01")
    print("== host: efird vars set DemoHostVar, DemoDeleteMe")
    cmdline = image.kernel_cmdline(
        hostvar=f"DemoHostVar-{VENDOR}", newvar=f"DemoGuestVar-{VENDOR}",
        newdata=b"written by the guest", delvar=f"DemoDeleteMe-{VENDOR}",
        kexec=True, trypk=False)

    def show(t: float, line: str) -> None:
        if any(key in line for key in SHOW):
            print(f"[{t:7.2f} s] {line}", flush=True)

    with EfirdDaemon(Path("/tmp") / f"efird-demo-boot-{int(time.time())}.sock", store,
                     log_level="info") as daemon:
        print(f"== efird serve --socket {daemon.socket} --store {store}")
        vm = GuestVM(kernel=pkgs.vmlinuz, initrd=initrd, cmdline=cmdline,
                     efird_socket=daemon.socket, options="selftest=100", on_line=show)
        print("== " + " ".join(vm.command_line()))
        vm.run()
        vm.cleanup()
        daemon.stop()
    markers = image.parse_markers(vm.console.text)
    failed = [m for m in markers if m.result == "FAIL"]
    print("== host: efird vars list (after the guest powered off)")
    print(vars_cli(store, "list"))
    ok = vm.returncode == 0 and not failed and any(m.step == "done" and m.stage == 2
                                                   for m in markers)
    print("== demo " + ("passed" if ok else f"FAILED (QEMU exit {vm.returncode}, {failed})"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
