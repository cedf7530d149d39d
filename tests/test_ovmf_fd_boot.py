"""An exported ``.fd`` variable store booted by real OVMF under QEMU 10, then read back.

`efird vars export --format edk2-fd` must produce an image the firmware takes as-is: OVMF
reformats a variable store it does not like, which would silently drop everything we
wrote. So the test puts a distinctive variable in an efird store, exports it, boots
Debian's OVMF_CODE_4M.fd with the export as the writable VARS pflash, lets the boot
manager fall through to the built-in UEFI Shell (no disks, no network), stops QEMU
cleanly, and imports the image OVMF wrote: our variable must still be there, next to the
variables OVMF adds on every first boot (BootOrder and its Boot#### entries, Lang, ...).

The machine: q35 without SMM enforcement (the non-secboot OVMF_CODE_4M.fd does not use
SMM; only the .secboot build needs ``smm=on``), TCG, 256 MiB, serial to a file, QMP on
stdio for a clean ``quit`` (QEMU flushes pflash to the file on the way out). The boot
reaches ``Shell>`` after the Shell's 5 s startup.nsh countdown, about 10 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .cli import efird_vars
from .qemu.vm import find_qemu

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
PROBE_NAME = "EfirdProbe"
PROBE_GUID = "3f1e7a2c-9b4d-4e8a-a5c6-0d2b7f9e1c44"
PROBE_TEXT = "efird → OVMF ✓"  # non-ASCII on purpose: UCS-2, not Latin-1
PROBE_DATA = PROBE_TEXT.encode("utf-16-le") + b"\0\0"
NV_BS_RT = 0x7
SHELL_PROMPT = b"Shell>"
BOOT_TIMEOUT = 120.0
QUIT_TIMEOUT = 30.0


def _check(result: subprocess.CompletedProcess[str], what: str) -> str:
    assert result.returncode == 0, f"{what}: exit {result.returncode}: {result.stderr}"
    return result.stdout


def _get(store: Path, name: str, guid: str = "EfiGlobalVariable") -> dict[str, Any]:
    out = _check(efird_vars(store, "get", name, "--guid", guid, "--json"), f"get {name}")
    got: dict[str, Any] = json.loads(out)
    return got


def _export_probe_store(tmp_path: Path) -> Path:
    store = tmp_path / "source.efivars"
    _check(efird_vars(store, "set", PROBE_NAME, "--guid", PROBE_GUID,
                      "--attributes", "nv,bs,rt", "--string", PROBE_TEXT), "set")
    fd = tmp_path / "vars.fd"
    _check(efird_vars(store, "export", str(fd), "--format", "edk2-fd"), "export")
    return fd


def _launcher() -> list[str]:
    """`setpriv --pdeathsig KILL` so QEMU dies with pytest (as tests/qemu/vm.py does)."""
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL"]
    return []


def boot_to_shell(qemu: str, vars_fd: Path, workdir: Path) -> float:
    """Boot OVMF with vars_fd as its variable store until the UEFI Shell prompt shows on
    the serial port, then quit QEMU through QMP. Returns the seconds until the prompt."""
    serial = workdir / "serial.log"
    stderr = workdir / "qemu.stderr"
    cmd = [
        *_launcher(), qemu,
        "-nodefaults", "-no-user-config",
        "-machine", "q35", "-accel", "tcg", "-m", "256",
        "-display", "none", "-monitor", "none", "-net", "none",
        "-serial", f"file:{serial}",
        "-qmp", "stdio",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
    ]  # fmt: skip

    def log() -> str:
        text = serial.read_bytes().decode(errors="replace") if serial.exists() else ""
        err = stderr.read_text(errors="replace") if stderr.exists() else ""
        return f"serial (last 2000 chars): {text[-2000:]!r}; stderr: {err.strip()!r}"

    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    try:
        start = time.monotonic()
        while True:
            if serial.exists() and SHELL_PROMPT in serial.read_bytes():
                elapsed = time.monotonic() - start
                break
            if proc.poll() is not None:
                pytest.fail(f"QEMU exited with status {proc.returncode} before the UEFI "
                            f"Shell prompt; {log()}")
            if time.monotonic() - start > BOOT_TIMEOUT:
                pytest.fail(f"no UEFI Shell prompt within {BOOT_TIMEOUT:g}s; {log()}")
            time.sleep(0.2)
        # A clean exit: QEMU stops the guest and flushes and closes the pflash backend.
        qmp = b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
        try:
            out, _ = proc.communicate(qmp, timeout=QUIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"QEMU did not quit within {QUIT_TIMEOUT:g}s of QMP quit; {log()}")
        assert proc.returncode == 0, f"QEMU exited with {proc.returncode}; {log()}"
        assert b'"host-qmp-quit"' in out, out
        return elapsed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.qemu
@pytest.mark.slow
def test_ovmf_boots_an_exported_store_and_keeps_our_variable(
    tmp_path: Path, record_property: Any
) -> None:
    qemu = find_qemu()  # raises QemuNotFoundError: a missing QEMU fails the test, never skips
    assert OVMF_CODE.is_file(), f"{OVMF_CODE} is missing (Debian package ovmf)"
    vars_fd = _export_probe_store(tmp_path)
    exported = vars_fd.read_bytes()

    elapsed = boot_to_shell(qemu, vars_fd, tmp_path)
    record_property("ovmf_boot_seconds", round(elapsed, 1))
    print(f"OVMF reached the UEFI Shell prompt in {elapsed:.1f}s")
    booted = vars_fd.read_bytes()
    assert len(booted) == len(exported)
    assert booted != exported, "OVMF wrote nothing to the variable store"

    store = tmp_path / "booted.efivars"
    out = _check(efird_vars(store, "import", str(vars_fd)), "import")
    assert out.startswith("imported ") and out.rstrip().endswith("(edk2-fd)"), out

    # Ours, untouched: OVMF accepted the store rather than reformatting it.
    probe = _get(store, PROBE_NAME, PROBE_GUID)
    assert probe["attributes"] == NV_BS_RT
    assert bytes.fromhex(probe["data"]) == PROBE_DATA

    # What OVMF writes on a first boot.
    names = {v["name"] for v in json.loads(
        _check(efird_vars(store, "list", "--json"), "list"))["variables"]
        if v["guid_name"] == "EfiGlobalVariable"}
    for name in ("BootOrder", "Timeout", "PlatformLang", "Lang", "ConIn", "ConOut", "ErrOut"):
        assert name in names, f"{name} missing after boot; have {sorted(names)}"
    assert bytes.fromhex(_get(store, "PlatformLang")["data"]) == b"en\0"
    assert bytes.fromhex(_get(store, "Lang")["data"]) == b"eng\0"
    mtc = _get(store, "MTC", "eb704011-1402-11d3-8e77-00a0c969723b")  # MonotonicCounter
    assert mtc["attributes"] == NV_BS_RT and len(bytes.fromhex(mtc["data"])) == 4

    order = _get(store, "BootOrder")
    assert order["attributes"] == NV_BS_RT
    entries = order["decoded"]
    assert entries, "BootOrder is empty"
    descriptions = []
    for entry in entries:
        assert entry in names, f"{entry} is in BootOrder but not in the store"
        boot = _get(store, entry)
        assert boot["attributes"] == NV_BS_RT
        descriptions.append(boot["decoded"]["description"])
    assert any("Shell" in d for d in descriptions), descriptions


def _break_checksum(image: bytearray) -> None:
    image[0x2C] ^= 0x01  # a bit of the FV Attributes: the header no longer sums to 0


def _break_first_record(image: bytearray) -> None:
    # The authenticated store header (28 bytes) follows the FV header (HeaderLength at 0x30);
    # the first record's DataSize is at +40 in its 60-byte AUTHENTICATED_VARIABLE_HEADER.
    (header_length,) = struct.unpack_from("<H", image, 0x30)
    first = header_length + 28
    assert image[first : first + 2] == b"\xaa\x55"
    struct.pack_into("<I", image, first + 40, 0x7FFFFFFF)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [(_break_checksum, "bad firmware volume header checksum"),
     (_break_first_record, "run past the variable store end")],
    ids=["fv-checksum", "record-size"],
)
def test_a_corrupted_export_is_refused(tmp_path: Path, corrupt: Any, message: str) -> None:
    vars_fd = _export_probe_store(tmp_path)
    image = bytearray(vars_fd.read_bytes())
    corrupt(image)
    vars_fd.write_bytes(image)
    store = tmp_path / "target.efivars"
    refused = efird_vars(store, "import", str(vars_fd), "--format", "edk2-fd")
    assert refused.returncode == 2, refused
    assert str(vars_fd) in refused.stderr and message in refused.stderr, refused.stderr
    # auto-detection refuses it too, and nothing reached the store
    assert efird_vars(store, "import", str(vars_fd)).returncode == 2
    assert efird_vars(store, "get", PROBE_NAME, "--guid", PROBE_GUID).returncode == 1
