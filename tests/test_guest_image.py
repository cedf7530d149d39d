"""The guest image of the boot tests: packages, initramfs, init script and markers.

The packages are Debian's, fetched once into the cache (tests/guest/image.py); the init
script's steps run here under the fetched busybox against a plain directory standing in
for efivarfs, and the last test boots the whole image under Debian's OVMF, through both
stages, so that a failing shim test can be told apart from a broken guest.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from .cli import efird_vars
from .guest import image
from .guest.image import CpioEntry, GuestPackages, Marker
from .qemu.vm import find_qemu

GLOBAL = image.EFI_GLOBAL_VARIABLE
VENDOR = "3f1e7a2c-9b4d-4e8a-a5c6-0d2b7f9e1c44"
NV_BS_RT = b"\x07\0\0\0"


@pytest.fixture(scope="module")
def pkgs() -> GuestPackages:
    return image.fetch_packages()


# --- newc ---------------------------------------------------------------------------------

SAMPLE = [
    CpioEntry("bin", stat.S_IFDIR | 0o755),
    *(CpioEntry(f"bin/f{n}", stat.S_IFREG | 0o644, bytes(range(n))) for n in range(6)),
    CpioEntry("bin/tool", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
    CpioEntry("bin/link", stat.S_IFLNK | 0o777, b"tool"),
    CpioEntry("d/" + "n" * 61, stat.S_IFREG | 0o600, b"long name"),
]


def test_newc_round_trips_plain_and_gzipped() -> None:
    entries = [*SAMPLE, CpioEntry("console", stat.S_IFCHR | 0o600, rdev=(5, 1))]
    archive = image.write_newc(entries)
    assert archive[:6] == b"070701" and len(archive) % 4 == 0
    assert image.read_newc(archive) == entries
    assert image.read_newc(gzip.compress(archive)) == entries
    big = image.write_newc([CpioEntry("f", stat.S_IFREG | 0o644, bytes(100))])
    with pytest.raises(ValueError, match="truncated"):
        image.read_newc(big[:150])
    with pytest.raises(ValueError, match="no newc header at offset 116"):
        image.read_newc(archive[:200])


def test_newc_is_what_busybox_cpio_extracts(pkgs: GuestPackages, tmp_path: Path) -> None:
    (tmp_path / "in.cpio").write_bytes(image.write_newc(SAMPLE))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([str(pkgs.busybox), "cpio", "-i", "-d", "-F", str(tmp_path / "in.cpio")],
                   cwd=out, check=True, capture_output=True)
    for entry in SAMPLE:
        path = out / entry.path
        if stat.S_ISLNK(entry.mode):
            assert os.readlink(path) == entry.data.decode()
        elif stat.S_ISREG(entry.mode):
            assert path.read_bytes() == entry.data
            assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(entry.mode)
        else:
            assert path.is_dir()


# --- the packages -------------------------------------------------------------------------


def _pe_certificate_table(pe: bytes) -> tuple[int, int]:
    (lfanew,) = struct.unpack_from("<I", pe, 0x3C)
    assert pe[lfanew:lfanew + 4] == b"PE\0\0"
    optional = lfanew + 24
    assert struct.unpack_from("<H", pe, optional)[0] == 0x20B  # PE32+
    offset, size = struct.unpack_from("<II", pe, optional + 112 + 4 * 8)  # directory 4
    return offset, size


def test_packages_are_debian_12s_signed_kernel_and_tools(pkgs: GuestPackages) -> None:
    assert pkgs.kernel_version.startswith("6.1.") and pkgs.kernel_version.endswith("-amd64")
    name, _, version = pkgs.kernel_package.partition("=")
    assert name == f"linux-image-{pkgs.kernel_version}" and pkgs.versions[name] == version
    assert "bpo" not in version  # the candidate, not backports

    vmlinuz = pkgs.vmlinuz.read_bytes()
    assert vmlinuz[:2] == b"MZ" and vmlinuz[0x202:0x206] == b"HdrS"  # an EFI-stub bzImage
    offset, size = _pe_certificate_table(vmlinuz)
    assert size > 0 and offset + size <= len(vmlinuz), "the kernel carries no signature"

    assert [m.name for m in pkgs.modules][-1] == "efivarfs.ko"
    for module in pkgs.modules:
        data = module.read_bytes()
        info = image.modinfo(data)
        assert info["vermagic"].split()[0] == pkgs.kernel_version
        assert data.endswith(b"~Module signature appended~\n")  # loadable under lockdown

    applets = subprocess.run([str(pkgs.busybox), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in ("sh", "mount", "insmod", "od", "tr", "sed", "rm", "poweroff", "uname"):
        assert applet in applets


def test_kexec_and_chattr_run_with_only_the_copied_libraries(pkgs: GuestPackages) -> None:
    guest = dict(pkgs.libraries)
    loader = guest["/lib64/ld-linux-x86-64.so.2"]
    assert any(p.startswith("/lib/x86_64-linux-gnu/libc.so.") for p in guest)
    assert any("libxenctrl.so" in p for p in guest)  # Debian's kexec links Xen's libxenctrl
    dirs = sorted({str(path.parent) for path in guest.values()})
    run = [str(loader), "--inhibit-cache", "--library-path", ":".join(dirs)]
    kexec = subprocess.run([*run, str(pkgs.kexec), "--version"], capture_output=True, text=True)
    assert kexec.returncode == 0 and kexec.stdout.startswith("kexec-tools"), kexec
    chattr = subprocess.run([*run, str(pkgs.chattr)], capture_output=True, text=True)
    assert "Usage" in chattr.stderr, chattr


def test_a_warm_cache_is_reused(pkgs: GuestPackages) -> None:
    assert image.fetch_packages(pkgs.vmlinuz.parents[2].parent) == pkgs


# --- the initramfs ------------------------------------------------------------------------


def _members(archive: bytes) -> dict[str, CpioEntry]:
    entries = image.read_newc(archive)
    seen: set[str] = set()
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        assert not parent or parent in seen, f"{entry.path} comes before its directory"
        seen.add(entry.path)
    return {e.path: e for e in entries}


def test_the_initramfs_holds_both_stages(pkgs: GuestPackages, tmp_path: Path) -> None:
    out = image.build_initramfs(pkgs, tmp_path / "initrd.cpio.gz")
    outer = _members(out.read_bytes())
    inner = _members(outer["boot/initrd2.cpio"].data)
    for members in (outer, inner):
        assert members["init"].data == image.INIT_SCRIPT.read_bytes()
        assert members["init"].mode == stat.S_IFREG | 0o755
        assert members["bin/busybox"].data == pkgs.busybox.read_bytes()
        assert members["bin/sh"] == CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
        assert members["dev/console"].rdev == (5, 1)
        assert stat.S_ISCHR(members["dev/console"].mode)
        assert members["dev/null"] == CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
        assert members["lib/modules/load-order"].data == b"".join(
            f"{m.name}\n".encode() for m in pkgs.modules)
        for module in pkgs.modules:
            assert members[f"lib/modules/{module.name}"].data == module.read_bytes()
        for directory in ("proc", "sys", "dev"):
            assert stat.S_ISDIR(members[directory].mode)
    assert outer["boot/vmlinuz"].data == pkgs.vmlinuz.read_bytes()
    assert outer["sbin/kexec"].data == pkgs.kexec.read_bytes()
    assert outer["usr/bin/chattr"].data == pkgs.chattr.read_bytes()
    for guest, source in pkgs.libraries:
        assert outer[guest.lstrip("/")].data == source.read_bytes()
    for stage1_only in ("boot/vmlinuz", "boot/initrd2.cpio", "sbin/kexec", "usr/bin/chattr"):
        assert stage1_only not in inner


def test_the_init_script_parses_under_busybox(pkgs: GuestPackages) -> None:
    check = subprocess.run([str(pkgs.busybox), "sh", "-n", str(image.INIT_SCRIPT)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


# --- the init script's steps, on a directory standing in for efivarfs -----------------------


def _run_steps(pkgs: GuestPackages, tmp_path: Path, cmdline: str, steps: str,
               files: dict[str, bytes | None]) -> subprocess.CompletedProcess[str]:
    """Source init.sh under busybox and run ``steps``; a ``None`` file is a directory, which
    a write fails on, as efivarfs fails a write the firmware refuses."""
    bindir, efivars = tmp_path / "bin", tmp_path / "efivars"
    bindir.mkdir()
    efivars.mkdir()
    subprocess.run([str(pkgs.busybox), "--install", "-s", str(bindir)], check=True)
    for name, data in files.items():
        if data is None:
            (efivars / name).mkdir()
        else:
            (efivars / name).write_bytes(data)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    env = {"PATH": str(bindir), "EFIRD_INIT_LIB": "1", "EFIRD_EFIVARS": str(efivars),
           "EFIRD_CMDLINE": str(tmp_path / "cmdline")}
    return subprocess.run([str(pkgs.busybox), "sh", "-c", f'. "$0"; {steps}',
                           str(image.INIT_SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=60)


def _results(proc: subprocess.CompletedProcess[str]) -> dict[str, Marker]:
    """The last PASS or FAIL marker of each step."""
    return {m.step: m for m in image.parse_markers(proc.stdout) if m.result != "INFO"}


STAGE1 = "step_list; step_secureboot; step_read_host; step_write; step_delete; step_pk_write"


def test_stage1_steps(pkgs: GuestPackages, tmp_path: Path) -> None:
    newdata = b"\x00%\\\xff\x07"  # a NUL, printf's and echo's escape characters, a high byte
    cmdline = image.kernel_cmdline(
        hostvar=f"Host-{VENDOR}", newvar=f"New-{VENDOR}", newdata=newdata,
        delvar=f"Old-{VENDOR}", kexec=False, trypk=True)
    files: dict[str, bytes | None] = {
        f"SecureBoot-{GLOBAL}": b"\x06\0\0\0\x01", f"SetupMode-{GLOBAL}": b"\x06\0\0\0\0",
        f"Host-{VENDOR}": b"\x27\0\0\0\x00\xffhost", f"Old-{VENDOR}": NV_BS_RT + b"x",
        f"PK-{GLOBAL}": None,
    }
    proc = _run_steps(pkgs, tmp_path, cmdline, f"{STAGE1}; finish", files)
    markers = image.parse_markers(proc.stdout)
    assert markers and all(m.stage == 1 for m in markers), proc
    assert [m.details for m in markers if m.step == "list" and m.result == "INFO"] == sorted(files)
    assert Marker(1, "secureboot", "INFO", "SecureBoot=01 SetupMode=00") in markers
    results = _results(proc)
    assert results["list"].fields() == {"count": "5"}
    assert results["read-host"].fields() == {
        "var": f"Host-{VENDOR}", "attrs": "0x00000027", "data": "00ff686f7374"}
    assert results["write"].fields() == {
        "var": f"New-{VENDOR}", "attrs": "0x00000007", "data": newdata.hex()}
    efivars = tmp_path / "efivars"
    assert (efivars / f"New-{VENDOR}").read_bytes() == NV_BS_RT + newdata
    assert results["delete"].result == "PASS" and not (efivars / f"Old-{VENDOR}").exists()
    assert results["pk-write"].result == "PASS"
    assert results["pk-write"].fields()["error"] == "Is a directory"  # the refusal
    assert results["done"] == Marker(1, "done", "PASS", "failures=0"), proc


def test_stage1_failures_are_reported(pkgs: GuestPackages, tmp_path: Path) -> None:
    cmdline = (f"console=ttyS0 efird.hostvar=Gone-{VENDOR} efird.newvar=New-{VENDOR} "
               f"efird.newdata=zz efird.delvar=Gone-{VENDOR} efird.trypk=1")
    proc = _run_steps(pkgs, tmp_path, cmdline, f"{STAGE1}; finish", {})
    results = _results(proc)
    assert results["list"].fields() == {"count": "0", "error": "no variables"}
    assert results["read-host"].fields()["error"] == "missing or unreadable"
    assert results["write"].fields()["error"] == "data is not hex: 'zz'"
    assert results["delete"].fields()["error"] == "absent before the delete"
    assert results["pk-write"].fields()["error"] == "the unsigned write was accepted"
    assert results["done"] == Marker(1, "done", "FAIL", "failures=5"), proc


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "lost"])
def test_stage2_checks_what_stage1_left(pkgs: GuestPackages, tmp_path: Path,
                                        kept: bool) -> None:
    cmdline = (f"efird.stage=2 efird.newvar=New-{VENDOR} efird.newdata=C0FFEE "
               f"efird.delvar=Old-{VENDOR}")
    files: dict[str, bytes | None] = (
        {f"New-{VENDOR}": NV_BS_RT + bytes.fromhex("c0ffee")} if kept
        else {f"New-{VENDOR}": NV_BS_RT + b"\0", f"Old-{VENDOR}": NV_BS_RT + b"x"})
    proc = _run_steps(pkgs, tmp_path, cmdline,
                      'STAGE=$(param efird.stage 1); step_check_stage1; finish', files)
    results = _results(proc)
    assert {m.stage for m in results.values()} == {2}
    if kept:
        assert results["check-newvar"].result == "PASS"
        assert results["check-delvar"].result == "PASS"
        assert results["done"].result == "PASS", proc
    else:
        assert results["check-newvar"].fields()["error"] == "differs after kexec"
        assert results["check-delvar"].fields()["error"] == "present again after kexec"
        assert results["done"].details == "failures=2", proc


def test_stage2_command_line(pkgs: GuestPackages, tmp_path: Path) -> None:
    cmdline = "console=ttyS0 efird.stage=1 initrd=\\initrd efird.kexec=1 BOOT_IMAGE=/x q=*"
    proc = _run_steps(pkgs, tmp_path, cmdline, "stage2_cmdline", {})
    assert proc.stdout == "console=ttyS0 efird.kexec=1 q=* efird.stage=2\n", proc


# --- the command line and the markers -------------------------------------------------------


def test_kernel_cmdline() -> None:
    line = image.kernel_cmdline(hostvar=f"A-{VENDOR}", newvar=f"B-{VENDOR}", newdata=b"\x01\xab",
                                delvar=f"C-{GLOBAL}", kexec=True, trypk=False, timeout=90)
    words = line.split()
    for word in ("console=ttyS0", "panic=-1", "efird.stage=1", f"efird.hostvar=A-{VENDOR}",
                 "efird.newdata=01ab", f"efird.delvar=C-{GLOBAL}", "efird.kexec=1",
                 "efird.trypk=0", "efird.timeout=90"):
        assert word in words
    with pytest.raises(ValueError, match="hostvar"):
        image.kernel_cmdline(hostvar="NoGuid", newvar=f"B-{VENDOR}", newdata=b"x",
                             delvar=f"C-{VENDOR}", kexec=False, trypk=False)
    with pytest.raises(ValueError, match="newdata"):
        image.kernel_cmdline(hostvar=f"A-{VENDOR}", newvar=f"B-{VENDOR}", newdata=b"",
                             delvar=f"C-{VENDOR}", kexec=False, trypk=False)


def test_parse_markers_from_a_noisy_console() -> None:
    log = (
        "[    3.1] Run /init as init process\r\n"
        "EFIRD-TEST 1 mount PASS kernel=6.1.0-56-amd64 lockdown=[none],integrity\r\n"
        "[    3.5] efivarfs: something EFIRD-TEST 1 list PASS count=3\n"
        "EFIRD-TEST 1 write FAIL var=X-y attrs=0x00000007 error=sh: can't create X: a=b c\n"
        "EFIRD-TEST 2 done PASS failures=0\n"
        "EFIRD-TEST 1 nonsense MAYBE\n"
    )
    markers = image.parse_markers(log)
    assert [(m.stage, m.step, m.result) for m in markers] == [
        (1, "mount", "PASS"), (1, "list", "PASS"), (1, "write", "FAIL"), (2, "done", "PASS")]
    assert markers[0].fields() == {"kernel": "6.1.0-56-amd64", "lockdown": "[none],integrity"}
    assert markers[1].details == "count=3"
    assert markers[2].fields() == {"var": "X-y", "attrs": "0x00000007",
                                   "error": "sh: can't create X: a=b c"}


# --- the whole guest under a reference firmware ---------------------------------------------

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
BOOT_TIMEOUT = 300.0  # both stages take about 30 s of TCG on 2 cores


def _launcher() -> list[str]:
    """`setpriv --pdeathsig KILL` so QEMU dies with pytest (as tests/qemu/vm.py does)."""
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL"]
    return []


@pytest.mark.qemu
@pytest.mark.slow
def test_both_stages_pass_under_ovmf(pkgs: GuestPackages, tmp_path: Path,
                                     record_property: Any) -> None:
    """Debian's OVMF serves the variables (from an efird export) and loads the kernel."""
    qemu = find_qemu()
    assert OVMF_CODE.is_file(), f"{OVMF_CODE} is missing (Debian package ovmf)"
    hostvar, newvar, delvar = f"EfirdHost-{VENDOR}", f"EfirdNew-{VENDOR}", f"EfirdOld-{VENDOR}"
    store, vars_fd = tmp_path / "source.efivars", tmp_path / "vars.fd"
    for name, data in ((hostvar, "00ff0102"), (delvar, "01")):  # both immutable in efivarfs
        done = efird_vars(store, "set", name.split("-")[0], "--guid", VENDOR, "--data", data)
        assert done.returncode == 0, done.stderr
    done = efird_vars(store, "export", str(vars_fd), "--format", "edk2-fd")
    assert done.returncode == 0, done.stderr
    initrd = image.build_initramfs(pkgs, tmp_path / "initrd.cpio.gz")
    cmdline = image.kernel_cmdline(hostvar=hostvar, newvar=newvar, newdata=b"\x00stage1\xff",
                                   delvar=delvar, kexec=True, trypk=True)
    serial = tmp_path / "serial.log"
    cmd = [
        *_launcher(), qemu, "-nodefaults", "-no-user-config", "-no-reboot",
        "-machine", "q35", "-accel", "tcg", "-m", "1024",
        "-display", "none", "-monitor", "none", "-net", "none",
        "-serial", f"file:{serial}",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-kernel", str(pkgs.vmlinuz), "-initrd", str(initrd), "-append", cmdline,
    ]  # fmt: skip
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the guest did not power off within {BOOT_TIMEOUT:g}s; "
                    f"serial: {serial.read_text(errors='replace')[-3000:]}")
    log = serial.read_bytes().decode(errors="replace")
    assert run.returncode == 0, f"QEMU exited {run.returncode}: {run.stderr}; {log[-3000:]}"
    markers = image.parse_markers(log)
    failed = [m for m in markers if m.result == "FAIL"]
    assert not failed, f"{failed}; serial: {log[-3000:]}"
    passed = {(m.stage, m.step): m for m in markers if m.result == "PASS"}
    for stage, step in ((1, "mount"), (1, "list"), (1, "write"), (1, "delete"), (1, "pk-write"),
                        (1, "kexec-load"), (1, "done"), (2, "mount"), (2, "list"),
                        (2, "check-newvar"), (2, "check-delvar"), (2, "done")):
        assert (stage, step) in passed, f"no PASS for stage {stage} {step}; {markers}"
    for stage in (1, 2):
        assert passed[stage, "read-host"].fields()["data"] == "00ff0102"
        assert passed[stage, "read-host"].fields()["attrs"] == "0x00000007"
    assert "/init: " not in log, "the init script hit a shell error"
    record_property("kexec_syscall", passed[1, "kexec-load"].fields()["syscall"])
