"""The seed made real: Debian's stock kernel boots through efird's PVH shim, with efird
serving its EFI environment over vhost-user, under TCG.

The guest's init (tests/guest/init.sh) mounts efivarfs, lists the variables, reads one the
host set with `efird vars`, writes one, deletes one, reads SecureBoot, and kexecs into the
same kernel, whose second run must still see efivarfs through the first kernel's runtime
map. Every step prints a marker on the serial console; the test reads them, then checks
with the CLI that the store holds exactly the guest's writes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from . import sbkeys
from .cli import efird_vars, raw_value
from .daemon import EfirdDaemon
from .guest import image
from .guest.boot import GuestVM, short_socket

pytestmark = pytest.mark.qemu

VENDOR = "5e0c7c1a-34d5-4a7c-9e2e-8b1a6d7f0c11"
GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
HOST_VAR, NEW_VAR, DEL_VAR = "EfirdHostVar", "EfirdGuestVar", "EfirdDeleteMe"
HOST_DATA = "set on the host".encode("utf-16-le") + b"\0\0"
NEW_DATA = bytes.fromhex("00c0ffee") + b"guest"
BOOT_TIMEOUT = float(os.environ.get("EFIRD_BOOT_TIMEOUT", "900"))


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[image.GuestPackages, Path]:
    pkgs = image.fetch_packages()
    initrd = image.build_initramfs(pkgs, tmp_path_factory.mktemp("guest") / "initrd.cpio")
    return pkgs, initrd


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "vm.efivars"
    for name, data in ((HOST_VAR, HOST_DATA), (DEL_VAR, b"\x01")):
        done = efird_vars(path, "set", name, "--guid", VENDOR, "--data", data.hex())
        assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def daemon(store: Path, tmp_path: Path) -> Iterator[EfirdDaemon]:
    with EfirdDaemon(short_socket(tmp_path.name), store) as d:
        yield d


def listing(store: Path) -> dict[str, dict]:
    """`efird vars list --json`, keyed by efivarfs file name."""
    done = efird_vars(store, "list", "--json")
    assert done.returncode == 0, done.stderr
    return {f"{v['name']}-{v['guid']}": v for v in json.loads(done.stdout)["variables"]}


def runtime_names(variables: dict[str, dict]) -> set[str]:
    """What efivarfs shows: the variables with the RUNTIME_ACCESS attribute."""
    return {name for name, v in variables.items() if v["attributes"] & 0x4}


def boot(pkgs: image.GuestPackages, initrd: Path, daemon: EfirdDaemon, *, kexec: bool,
         trypk: bool = False, options: str = "") -> tuple[GuestVM, list[image.Marker]]:
    cmdline = image.kernel_cmdline(
        hostvar=f"{HOST_VAR}-{VENDOR}", newvar=f"{NEW_VAR}-{VENDOR}", newdata=NEW_DATA,
        delvar=f"{DEL_VAR}-{VENDOR}", kexec=kexec, trypk=trypk,
        timeout=int(BOOT_TIMEOUT) - 60)
    vm = GuestVM(kernel=pkgs.vmlinuz, initrd=initrd, cmdline=cmdline,
                 efird_socket=daemon.socket, options=options, timeout=BOOT_TIMEOUT)
    vm.run()
    vm.cleanup()
    return vm, image.parse_markers(vm.console.text)


def by_step(markers: list[image.Marker], stage: int) -> dict[str, list[image.Marker]]:
    out: dict[str, list[image.Marker]] = {}
    for m in markers:
        if m.stage == stage:
            out.setdefault(m.step, []).append(m)
    return out


def passed(steps: dict[str, list[image.Marker]], step: str, log: str) -> dict[str, str]:
    assert step in steps, f"no {step!r} marker; console tail:\n{log[-4000:]}"
    (marker,) = [m for m in steps[step] if m.result != "INFO"] or steps[step]
    assert marker.result == "PASS", f"{step}: {marker}\n{log[-4000:]}"
    return marker.fields()


def test_linux_boots_through_the_shim_efivarfs_and_kexec(
        guest: tuple[image.GuestPackages, Path], store: Path, tmp_path: Path) -> None:
    pkgs, initrd = guest
    before = listing(store)
    with EfirdDaemon(short_socket(tmp_path.name), store) as daemon:
        vm, markers = boot(pkgs, initrd, daemon, kexec=True, options="torture=1,selftest=100")
        log = vm.console.text
        assert vm.returncode == 0, f"QEMU did not power off ({vm.returncode}):\n{log[-4000:]}"
        assert "efi: EFI v2.70 by efird" in log
        assert daemon.stop() == 0
    after = listing(store)

    one = by_step(markers, 1)
    assert passed(one, "mount", log)["kernel"] == pkgs.kernel_version
    # 1. Every variable efird holds (that the OS may see at runtime) is in efivarfs.
    seen = {m.details for m in one["list"] if m.result == "INFO"}
    assert seen == runtime_names(before), log[-4000:]
    assert passed(one, "list", log)["count"] == str(len(seen))
    # 2. The host-set variable reads back byte for byte.
    host = passed(one, "read-host", log)
    assert bytes.fromhex(host["data"]) == HOST_DATA and int(host["attrs"], 16) == 7
    # 3. A new variable and a deletion.
    written = passed(one, "write", log)
    assert bytes.fromhex(written["data"]) == NEW_DATA
    passed(one, "delete", log)
    # 4. SecureBoot reads as efird says (no PK: setup mode, Secure Boot off).
    (sb,) = one["secureboot"]
    assert sb.fields() == {"SecureBoot": "00", "SetupMode": "01"}, sb
    # 5. kexec into the same kernel; the second kernel reuses the runtime map.
    passed(one, "kexec-load", log)
    two = by_step(markers, 2)
    passed(two, "mount", log)
    seen2 = {m.details for m in two["list"] if m.result == "INFO"}
    assert seen2 == runtime_names(after), log[-4000:]
    passed(two, "check-newvar", log)
    passed(two, "check-delvar", log)
    assert bytes.fromhex(passed(two, "read-host", log)["data"]) == HOST_DATA
    # 6. Powered off after stage 2, with no failure in either stage.
    passed(two, "done", log)
    assert "FAIL" not in {m.result for m in markers}, [m for m in markers if m.result == "FAIL"]

    # The host sees exactly the guest's writes.
    new, gone = f"{NEW_VAR}-{VENDOR}", f"{DEL_VAR}-{VENDOR}"
    assert set(after) - set(before) == {new}
    assert set(before) - set(after) == {gone}
    assert after[new]["attributes"] == 7
    assert raw_value(store, NEW_VAR, VENDOR) == NEW_DATA
    assert raw_value(store, HOST_VAR, VENDOR) == HOST_DATA
    for name in set(before) & set(after):
        assert before[name]["size"] == after[name]["size"], name
    # The shim's self-test measured GetVariable from inside the guest.
    assert "efird-shim: self-test: GetVariable(SecureBoot) x100: status 0x0," in log
    # Before all that, the shim played a hostile guest: efird refused or completed each
    # bad request, broke only that queue, and served the shim again after a device reset.
    torture = [line.split("torture: ", 1)[1] for line in log.splitlines() if "torture: " in line]
    assert torture == [
        "unknown handler GUID: efird refused the request (used length 0)",
        "MessageLength past the buffer: refused (used length 0)",
        "unknown variable function: status 0x8000000000000003",  # UNSUPPORTED
        "GetVariable with NameSize+DataSize overflowing: status 0x800000000000000f",  # DENIED
        "descriptor outside guest memory: completed empty (used length 0)",
        "avail index 1000 entries ahead: efird did not answer in time",
        "after a device reset, GetVariable(SetupMode): status 0x0 - efird still serving",
    ], torture
    assert any(e.get("event") == "virtqueue broken; needs a device reset"
               for e in daemon.lines())


def test_secure_boot_store_guest_sees_it_and_cannot_replace_pk(
        guest: tuple[image.GuestPackages, Path], store: Path, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Enrolled PK/KEK/db: the kernel sees SecureBoot=1 and locks itself down, an unsigned
    PK write from the guest is refused, and kexec still works through kexec_file_load (the
    locked-down kernel refuses kexec_load; Debian's kernel is signed by a key it trusts).
    This boot uses the 64-bit EFI handover entry."""
    pkgs, initrd = guest
    d = sbkeys.session_dir(tmp_path_factory)
    keys = {n: sbkeys.make_keypair(d, f"boot-{n}", f"boot {n}") for n in ("pk", "kek", "db")}
    # db also holds the certificate Debian signed the kernel with, as a real db holds the
    # vendors' certificates: the locked-down kernel verifies the kexec image against it.
    signer = tmp_path / "kernel-signer.pem"
    signer.write_bytes(kernel_signer(pkgs.vmlinuz).public_bytes(serialization.Encoding.PEM))
    done = efird_vars(store, "enroll", "--pk", str(keys["pk"].cert_pem_path),
                      "--kek", str(keys["kek"].cert_pem_path),
                      "--db", str(keys["db"].cert_pem_path), "--db", str(signer))
    assert done.returncode == 0, done.stderr
    pk_before = raw_value(store, "PK", GLOBAL)
    with EfirdDaemon(short_socket(tmp_path.name), store) as daemon:
        vm, markers = boot(pkgs, initrd, daemon, kexec=True, trypk=True,
                           options="entry=handover")
        log = vm.console.text
        assert vm.returncode == 0, f"QEMU did not power off cleanly:\n{log[-4000:]}"
        assert daemon.stop() == 0
    assert "64-bit EFI handover entry" in log
    one = by_step(markers, 1)
    assert passed(one, "mount", log)["lockdown"] != "none"
    (sb,) = one["secureboot"]
    assert sb.fields() == {"SecureBoot": "01", "SetupMode": "00"}, sb
    passed(one, "pk-write", log)
    passed(one, "write", log)  # ordinary variables still work
    assert passed(one, "kexec-load", log)["syscall"] == "kexec_file_load"
    two = by_step(markers, 2)
    (sb2,) = two["secureboot"]
    assert sb2.fields() == {"SecureBoot": "01", "SetupMode": "00"}, sb2
    passed(two, "check-newvar", log)
    passed(two, "done", log)
    assert raw_value(store, "PK", GLOBAL) == pk_before


def kernel_signer(vmlinuz: Path) -> x509.Certificate:
    """The leaf certificate of the kernel's Authenticode signature (PE data directory 4)."""
    data = vmlinuz.read_bytes()
    opt = struct.unpack_from("<I", data, 0x3C)[0] + 24
    offset, _size = struct.unpack_from("<II", data, opt + 112 + 4 * 8)
    length, _revision, _kind = struct.unpack_from("<IHH", data, offset)
    certs = pkcs7.load_der_pkcs7_certificates(data[offset + 8: offset + length])
    issuers = {c.issuer for c in certs}
    (leaf,) = [c for c in certs if c.subject not in issuers] or certs[:1]
    return leaf


def test_shim_without_efird_stops_with_a_message(guest: tuple[image.GuestPackages, Path]
                                                 ) -> None:
    pkgs, _initrd = guest
    vm = GuestVM(kernel=pkgs.vmlinuz, initrd=None, cmdline="console=ttyS0",
                 efird_socket=None, timeout=120).run()
    vm.cleanup()
    log = vm.console.text
    assert vm.returncode == 0, f"the shim did not power off ({vm.returncode}):\n{log}"
    assert "efird-shim: FATAL: efird is not attached" in log, log
    assert "entering the kernel" not in log


@pytest.mark.parametrize("content, message", [
    (b"this is not a kernel\n" * 100, "not a PE/COFF file"),
    (b"MZ" + b"\0" * 0x3a + (0x40).to_bytes(4, "little") + b"PE\0\0" + b"\x4c\x01" + b"\0" * 4000,
     "not for x86-64"),
])
def test_shim_rejects_a_kernel_that_is_not_a_pe_image(
        tmp_path: Path, store: Path, daemon: EfirdDaemon, content: bytes, message: str) -> None:
    bad = tmp_path / "not-a-kernel"
    bad.write_bytes(content)
    vm = GuestVM(kernel=bad, initrd=None, cmdline="console=ttyS0",
                 efird_socket=daemon.socket, timeout=120).run()
    vm.cleanup()
    log = vm.console.text
    assert vm.returncode == 0, log
    assert message in log and "FATAL" in log, log
    # efird served the shim and is still serving.
    assert daemon.proc is not None and daemon.proc.poll() is None


def exiting_efi_app(status: int, message: str) -> bytes:
    """A minimal PE32+ EFI application (built here, byte by byte) whose entry point calls
    BootServices->Exit(ImageHandle, status, sizeof message, message)."""
    text = "\0".join([message, ""]).encode("utf-16-le")
    code = bytearray()
    code += b"\x48\x8b\x42\x60"                    # mov rax, [rdx+0x60]: BootServices
    code += b"\x48\x83\xec\x28"                    # sub rsp, 0x28: shadow space
    code += b"\x48\xba" + status.to_bytes(8, "little")  # mov rdx, status
    code += b"\x41\xb8" + len(text).to_bytes(4, "little")  # mov r8d, ExitDataSize
    lea_at = len(code)
    code += b"\x4c\x8d\x0d\0\0\0\0"                # lea r9, [rip+message]
    code += b"\xff\x90\xd8\x00\x00\x00"            # call [rax+0xd8]      (BootServices->Exit)
    code += b"\xf4\xeb\xfd"                        # hlt; jmp hlt
    code[lea_at + 3: lea_at + 7] = (len(code) - (lea_at + 7)).to_bytes(4, "little")
    code += text
    section = bytes(code).ljust(0x200, b"\0")
    opt = bytearray(240)
    struct.pack_into("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", opt, 0, 0x20B, 0, 0, len(section), 0, 0,
                     0x1000, 0x1000, 0, 0x1000, 0x200, 0, 0, 0, 0, 0, 0, 0, 0x2000, 0x200, 0,
                     10, 0, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, len(opt), 0x22)
    sec = struct.pack("<8sIIIIIIHHI", b".text", len(code), 0x1000, 0x200, 0x200, 0, 0, 0, 0,
                      0x60000020)
    headers = (b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"PE\0\0" + coff + bytes(opt)
               + sec).ljust(0x200, b"\0")
    return headers + section


def test_an_image_that_calls_exit_is_reported_to_the_toolstack(
        tmp_path: Path, store: Path, daemon: EfirdDaemon) -> None:
    app = tmp_path / "exit.efi"
    app.write_bytes(exiting_efi_app(0x8000000000000001, "no root device"))
    vm = GuestVM(kernel=app, initrd=None, cmdline="", efird_socket=daemon.socket,
                 timeout=120).run()
    vm.cleanup()
    log = vm.console.text
    assert vm.returncode == 0, log
    assert "the kernel image exited with status 0x8000000000000001: no root device" in log, log
    assert "boot failed (reported to efird)" in log
    (event,) = [e for e in daemon.events("event") if e.get("kind") == "boot-failed"]
    assert event["status"] == "0x8000000000000001" and event["data"] == "no root device"


def test_toolstack_map_without_the_device_bar_is_refused_by_the_shim(
        guest: tuple[image.GuestPackages, Path], store: Path, tmp_path: Path) -> None:
    """With `efird serve --memmap`, the BAR must be in the toolstack's map as runtime MMIO,
    or the kernel could not reach efird after ExitBootServices: the shim says so."""
    pkgs, _initrd = guest
    memmap = tmp_path / "vm.memmap"
    memmap.write_text("0x0 0x9f000 ram\n0x100000 0x3fee0000 ram\n")
    with EfirdDaemon(short_socket(tmp_path.name), store, "--memmap", str(memmap)) as daemon:
        vm = GuestVM(kernel=pkgs.vmlinuz, initrd=None, cmdline="console=ttyS0",
                     efird_socket=daemon.socket, timeout=120).run()
        vm.cleanup()
    log = vm.console.text
    assert vm.returncode == 0, log
    assert "efird already has a memory map from the toolstack" in log
    assert "does not cover the device's BAR" in log and "mmio'" in log, log
    assert "entering the kernel" not in log
