"""The toolstack's view of a running daemon through its control socket: status, the event
stream, save-state/restore-state between two daemons (migration), reload, stop."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.control.client import ControlClient
from efird.control.protocol import ControlError
from efird.efi import guid as g
from efird.efi.status import Status

from .daemon import EfirdDaemon, attach
from .vhost.frontend import VhostUserError, VhostUserFrontend

VENDOR = g.guid_bytes("3b8f5c1e-2d4a-4c6b-9e7f-1a2b3c4d5e6f")


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efird-lc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(work: Path, name: str, domain: str = "vm1") -> EfirdDaemon:
    return EfirdDaemon(work / f"{name}.sock", work / f"{name}.efivars", "--domain", domain,
                       "--control", str(work / f"{name}.ctl")).start()


def call(front: VhostUserFrontend, request: bytes) -> bytes:
    return front.request(0, request, len(request))


def test_status_events_and_stop(work: Path) -> None:
    daemon = start(work, "a")
    ctl = ControlClient(work / "a.ctl")
    status = ctl.status()
    assert status["domain"] == "vm1" and status["phase"]["runtime"] is False
    received: list[dict[str, object]] = []
    ready = threading.Event()

    def listen() -> None:
        stream = ControlClient(work / "a.ctl").events()
        ready.set()
        for event in stream:
            received.append(event)
            if len(received) == 2:
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(10)
    with attach(daemon) as front:
        call(front, c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b""))
        reset = c.envelope(g.EFIRD_RESET_SERVICE, struct.pack("<QQ", 1, 0)
                           + struct.pack("<IIQQ", 0, 0, 0, 0))
        for _ in range(2):
            assert c.return_status(call(front, reset)) is Status.SUCCESS
            listener.join(0.2)
    listener.join(10)
    assert [e["event"] for e in received] == ["reset", "reset"]
    assert received[0]["data"]["type"] == "cold"  # type: ignore[index]
    assert ctl.status()["requests"] >= 3
    ctl.stop()
    assert daemon.proc is not None and daemon.proc.wait(20) == 0


def test_migration_moves_volatile_state_and_phase(work: Path) -> None:
    source, target = start(work, "src"), start(work, "dst")
    monotonic = c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", 5, 0) + bytes(8))
    with attach(source) as front:
        for _ in range(5):
            call(front, monotonic)
        call(front, c.set_variable(VENDOR, "Volatile", 6, b"moving"))
        call(front, c.set_variable(VENDOR, "BootOnly", 2, b"boot"))
        call(front, c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b""))
    blob = ControlClient(work / "src.ctl").save_state()
    ControlClient(work / "dst.ctl").restore_state(blob)
    assert ControlClient(work / "dst.ctl").status()["phase"]["runtime"] is True
    with attach(target) as front:
        got = c.parse_get_variable(call(front, c.get_variable(VENDOR, "Volatile", 16)))
        assert (got.status, got.data) == (Status.SUCCESS, b"moving")
        # runtime phase came along: the boot-services-only variable stays hidden
        assert c.parse_get_variable(call(front, c.get_variable(VENDOR, "BootOnly", 16))
                                    ).status is Status.NOT_FOUND
        # the high monotonic count carries on from where the source left it
        assert struct.unpack_from("<I", call(front, monotonic), 40)[0] == 6
    for d in (source, target):
        d.stop()


def test_restore_refuses_foreign_old_or_damaged_state(work: Path) -> None:
    source, other = start(work, "src"), start(work, "oth", domain="vm2")
    blob = ControlClient(work / "src.ctl").save_state()
    with pytest.raises(ControlError) as wrong:
        ControlClient(work / "oth.ctl").restore_state(blob)
    assert wrong.value.code == "wrong-domain"
    outer = json.loads(blob)
    outer["state"]["phase"]["runtime"] = True  # tampered: the checksum no longer holds
    with pytest.raises(ControlError) as damaged:
        ControlClient(work / "src.ctl").restore_state(json.dumps(outer).encode())
    assert damaged.value.code == "bad-state"
    outer = json.loads(blob)
    outer["state"]["version"] = 99
    import hashlib

    outer["sha256"] = hashlib.sha256(json.dumps(outer["state"], sort_keys=True).encode()
                                     ).hexdigest()
    with pytest.raises(ControlError, match="unsupported state version"):
        ControlClient(work / "src.ctl").restore_state(json.dumps(outer).encode())
    assert ControlClient(work / "src.ctl").status()["phase"]["runtime"] is False  # untouched
    for d in (source, other):
        d.stop()


def test_reload_store(work: Path) -> None:
    daemon = start(work, "a")
    result = ControlClient(work / "a.ctl").reload_store()
    assert result["variables"] >= 6
    daemon.stop()


def test_shutdown_under_load_keeps_every_acknowledged_write(work: Path) -> None:
    """SIGTERM during a SetVariable storm: efird finishes the request in flight, exits 0,
    and every write the guest saw acknowledged is in the store."""
    import signal
    import time

    from efird.store.sqlite import SqliteStore

    daemon = start(work, "a")
    acknowledged = []
    with attach(daemon) as front:
        stop_at = time.monotonic() + 0.4
        i = 0
        try:
            while True:
                req = c.set_variable(VENDOR, f"Storm{i}", 7, i.to_bytes(4, "little"))
                if time.monotonic() > stop_at and daemon.proc is not None:
                    daemon.proc.send_signal(signal.SIGTERM)
                    stop_at = float("inf")
                resp = front.request(0, req, len(req), timeout=5)
                if resp and c.return_status(resp) is Status.SUCCESS:
                    acknowledged.append(i)
                i += 1
        except (VhostUserError, OSError):  # the daemon went away mid-storm: the point
            pass
    assert daemon.proc is not None and daemon.proc.wait(20) == 0
    assert len(acknowledged) > 10
    store = SqliteStore(work / "a.efivars", exclusive=False)
    stored = {v.name: v.data for v in store.load()}
    store.close()
    for n in acknowledged:
        assert stored[f"Storm{n}"] == n.to_bytes(4, "little")


def test_toolstack_soft_reset_is_a_kexec(work: Path) -> None:
    """Xen's SHUTDOWN_soft_reset through the control socket: variables and the runtime
    phase stay, the boot path is fresh, the toolstack sees a kexec event."""
    from efird.bootmem.description import q35

    memmap = work / "q35.memmap"
    memmap.write_text("".join(f"{a:#x} {s:#x} {k}\n" for a, s, k in q35(512)))
    daemon = EfirdDaemon(work / "a.sock", work / "a.efivars", "--domain", "vm1",
                         "--control", str(work / "a.ctl"), "--memmap", str(memmap)).start()
    ctl = ControlClient(work / "a.ctl")
    with pytest.raises(ControlError):  # soft-reset takes no arguments
        ctl.request("soft-reset", unexpected=1)
    with attach(daemon) as front:
        call(front, c.set_variable(VENDOR, "Volatile", 6, b"survives kexec"))
        key = c.parse_get_memory_map(call(front, c.get_memory_map(4096)))[2]
        assert c.return_status(call(front, c.exit_boot_services(key))) is Status.SUCCESS
        assert ctl.soft_reset() == {"status": "SUCCESS"}
        got = c.parse_get_variable(call(front, c.get_variable(VENDOR, "Volatile", 32)))
        assert got.data == b"survives kexec"
        assert ctl.status()["phase"]["runtime"] is True
        assert ctl.status()["phase"]["boot_services_exited"] is False  # a fresh boot path
        assert c.parse_get_memory_map(call(front, c.get_memory_map(4096)))[0] is Status.SUCCESS
    assert [e["kind"] for e in daemon.events("event")] == ["kexec"]
    daemon.stop()


def test_toolstack_platform_reset_gives_a_restarted_vm_a_fresh_boot(work: Path) -> None:
    """A guest went past ExitBootServices and its VM was restarted without ResetSystem: the
    next boot's InitMemoryMap is refused until the toolstack says `platform-reset`, which
    clears what a cold reset clears and keeps the non-volatile variables."""
    daemon = EfirdDaemon(work / "a.sock", work / "a.efivars", "--domain", "vm1",
                         "--control", str(work / "a.ctl")).start()
    ctl = ControlClient(work / "a.ctl")
    layout = [(0, 0x9F000, 1), (0x100000, 0x7F00000, 1)]
    with attach(daemon) as front:
        assert c.return_status(call(front, c.init_memory_map(layout))) is Status.SUCCESS
        call(front, c.set_variable(VENDOR, "Volatile", 6, b"gone after reset"))
        call(front, c.set_variable(VENDOR, "Durable", 7, b"kept"))
        key = c.parse_get_memory_map(call(front, c.get_memory_map(4096)))[2]
        assert c.return_status(call(front, c.exit_boot_services(key))) is Status.SUCCESS
        # the VM is restarted; its new boot path is refused while efird is in runtime
        assert c.return_status(call(front, c.init_memory_map(layout))) is Status.UNSUPPORTED
        assert ctl.platform_reset() == {}
        assert ctl.status()["phase"]["runtime"] is False
        assert c.return_status(call(front, c.init_memory_map(layout))) is Status.SUCCESS
        gone = c.parse_get_variable(call(front, c.get_variable(VENDOR, "Volatile", 32)))
        assert gone.status is Status.NOT_FOUND
        kept = c.parse_get_variable(call(front, c.get_variable(VENDOR, "Durable", 32)))
        assert kept.data == b"kept"
    assert [(e["kind"], e.get("type")) for e in daemon.events("event")] == [("reset", "toolstack")]
    daemon.stop()
