"""`efird vars` on a store that `efird serve` is serving: the command goes through the
daemon's control socket (named in the store's lock file), the guest sees the change at
once, nothing is lost, and the rules refuse what they refuse the guest."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import Status

from .cli import efird_vars
from .daemon import EfirdDaemon, attach
from .vhost.frontend import VhostUserFrontend

VENDOR = "5c2d1b7e-8f3a-4e61-9d0c-2b4a6e8f1c3d"
VENDOR_B = g.guid_bytes(VENDOR)


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efird-live-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve(work: Path, *extra: str) -> EfirdDaemon:
    return EfirdDaemon(work / "vm.sock", work / "vm.efivars", "--domain", "vm1", *extra)


def guest_get(front: VhostUserFrontend, name: str) -> tuple[Status, bytes]:
    req = c.get_variable(VENDOR_B, name, 4096)
    result = c.parse_get_variable(front.request(0, req, len(req)))
    return result.status, result.data


def guest(front: VhostUserFrontend, request: bytes) -> Status:
    return c.return_status(front.request(0, request, len(request)))


def test_cli_goes_through_the_daemon_and_the_guest_sees_it_at_once(work: Path) -> None:
    with serve(work, "--control", str(work / "vm.ctl")) as daemon, attach(daemon) as front:
        assert efird_vars(daemon.store, "set", "FromHost", "--guid", VENDOR,
                          "--string", "hi").returncode == 0
        assert guest_get(front, "FromHost") == (Status.SUCCESS,
                                                "hi".encode("utf-16-le") + b"\0\0")
        changed = [e for e in daemon.events("event") if e.get("kind") == "variables-changed"]
        assert changed and changed[0]["status"] == "SUCCESS"  # published to the toolstack
        # the guest writes, the operator reads it back through the daemon
        assert guest(front, c.set_variable(VENDOR_B, "FromGuest", 7, b"\x2a")) is Status.SUCCESS
        got = json.loads(efird_vars(daemon.store, "get", "FromGuest", "--guid", VENDOR,
                                    "--json").stdout)
        assert got["data"] == "2a"
        # import through the daemon: atomic, and the guest sees the imported variable
        exported = work / "export.json"
        assert efird_vars(daemon.store, "export", str(exported), "--format",
                          "qemu-json").returncode == 0
        doc = json.loads(exported.read_text())
        for var in doc["variables"]:
            if var["name"] == "FromHost":
                var["name"] = "Imported"
        exported.write_text(json.dumps(doc))
        result = efird_vars(daemon.store, "import", str(exported))
        assert result.returncode == 0, result.stderr
        assert guest_get(front, "Imported")[0] is Status.SUCCESS
        # the rules: a firmware-owned variable is refused as for the guest
        refused = efird_vars(daemon.store, "set", "SecureBoot", "--attributes", "bs,rt",
                             "--data", "01")
        assert refused.returncode == 3 and "WRITE_PROTECTED" in refused.stderr
        # after ExitBootServices, creating a boot-services-only variable is refused alike
        event = c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b"")
        front.request(0, event, len(event))
        late = c.set_variable(VENDOR_B, "BsOnly", 3, b"\x01")
        guest_status = guest(front, late)
        cli = efird_vars(daemon.store, "set", "BsOnly", "--guid", VENDOR,
                         "--attributes", "nv,bs", "--data", "01")
        assert guest_status is not Status.SUCCESS
        assert cli.returncode == 3 and guest_status.name in cli.stderr


def test_concurrent_guest_and_operator_writes_lose_nothing(work: Path) -> None:
    with serve(work, "--control", str(work / "vm.ctl")) as daemon, attach(daemon) as front:
        acknowledged: list[int] = []
        stop = threading.Event()

        def storm() -> None:
            i = 0
            while not stop.is_set():
                if guest(front, c.set_variable(VENDOR_B, f"G{i}", 7, bytes([i % 256]))) \
                        is Status.SUCCESS:
                    acknowledged.append(i)
                i += 1

        thread = threading.Thread(target=storm)
        thread.start()
        try:
            for n in range(5):
                assert efird_vars(daemon.store, "set", f"H{n}", "--guid", VENDOR,
                                  "--data", f"{n:02x}").returncode == 0
        finally:
            stop.set()
            thread.join()
    names = {v["name"] for v in json.loads(
        efird_vars(work / "vm.efivars", "list", "--json").stdout)["variables"]}
    assert {f"H{n}" for n in range(5)} <= names
    assert {f"G{i}" for i in acknowledged} <= names and len(acknowledged) > 5


def test_a_daemon_without_control_socket_is_named(work: Path) -> None:
    with serve(work) as daemon:
        result = efird_vars(daemon.store, "list")
        assert result.returncode == 2
        assert "in use by another efird process" in result.stderr
        assert "--control" in result.stderr


def test_explicit_control_socket_and_a_dead_one(work: Path) -> None:
    with serve(work, "--control", str(work / "vm.ctl")) as daemon:
        import subprocess
        import sys

        listed = subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "--control",
                                 str(work / "vm.ctl"), "list", "--json"],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "SecureBoot" in listed.stdout
        assert daemon.store.exists()
    dead = subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "--control",
                           str(work / "vm.ctl"), "list"], capture_output=True, text=True,
                          timeout=60)
    assert dead.returncode == 2 and str(work / "vm.ctl") in dead.stderr
