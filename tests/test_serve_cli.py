"""`efird serve` as a toolstack runs it: readiness, signals, socket handling, errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon import EfirdDaemon


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return Path("/tmp") / f"efird-t-{os.getpid()}-{tmp_path.name[-12:]}.sock"


def test_readiness_via_log_line_and_notify_socket(tmp_path: Path, sock: Path) -> None:
    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(20)
    daemon = EfirdDaemon(sock, tmp_path / "vm.efivars", "--domain", "vm7")
    os.environ["NOTIFY_SOCKET"] = str(notify)
    try:
        daemon.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        message = listener.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={daemon.proc.pid}" in message  # type: ignore[union-attr]
        ready = daemon.events("ready")[0]
        assert ready["domain"] == "vm7" and ready["socket"] == str(sock)
        assert all(line.get("domain") == "vm7" for line in daemon.lines())
        assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
        assert daemon.stop(signal.SIGTERM) == 0
        assert "STOPPING=1" in listener.recv(4096).decode()
        assert not sock.exists()
    finally:
        daemon.kill()
        listener.close()


def test_sigint_also_stops_cleanly(tmp_path: Path, sock: Path) -> None:
    pidfile = tmp_path / "efird.pid"
    with EfirdDaemon(sock, tmp_path / "vm.efivars", "--pidfile", str(pidfile)) as daemon:
        assert daemon.proc is not None and pidfile.read_text() == f"{daemon.proc.pid}\n"
        assert daemon.stop(signal.SIGINT) == 0
        assert daemon.events("stopped")
    assert not pidfile.exists()


def test_socket_in_use_is_a_clear_error(tmp_path: Path, sock: Path) -> None:
    with EfirdDaemon(sock, tmp_path / "a.efivars"):
        proc = subprocess.run([sys.executable, "-m", "efird.cli.main", "serve", "--socket",
                               str(sock), "--store", str(tmp_path / "b.efivars")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert f"{sock} is in use by another process" in proc.stderr


def test_stale_socket_is_replaced(tmp_path: Path, sock: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens
    with EfirdDaemon(sock, tmp_path / "vm.efivars") as daemon:
        assert daemon.events("ready")


def test_store_in_use_is_a_clear_error(tmp_path: Path, sock: Path) -> None:
    store = tmp_path / "vm.efivars"
    with EfirdDaemon(sock, store):
        other = Path(str(sock) + "2")
        proc = subprocess.run([sys.executable, "-m", "efird.cli.main", "serve", "--socket",
                               str(other), "--store", str(store)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert "in use by another efird process" in proc.stderr and str(store) in proc.stderr


def test_corrupt_store_is_refused_with_its_name(tmp_path: Path, sock: Path) -> None:
    store = tmp_path / "vm.efivars"
    store.write_bytes(b"garbage" * 100)
    proc = subprocess.run([sys.executable, "-m", "efird.cli.main", "serve", "--socket",
                           str(sock), "--store", str(store)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and str(store) in proc.stderr


def test_bad_flags_are_usage_errors(tmp_path: Path, sock: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "efird.cli.main", "serve", "--socket",
                           str(sock), "--store", str(tmp_path / "s"), "--queues", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--queues" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "efird.cli.main", "serve"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--socket" in proc.stderr


def test_exit_on_reset_exits_with_the_documented_status(tmp_path: Path, sock: Path) -> None:
    import struct

    from efird.abi import client as c
    from efird.efi import guid as g

    from .vhost.frontend import VhostUserFrontend

    for kind, expected in ((1, 10), (2, 11)):
        daemon = EfirdDaemon(sock, tmp_path / "vm.efivars", "--exit-on-reset").start()
        with VhostUserFrontend(timeout=10.0) as front:
            front.connect(sock)
            front.handshake()
            req = c.envelope(g.EFIRD_RESET_SERVICE,
                             struct.pack("<QQ", 1, 0) + struct.pack("<IIQQ", kind, 0, 0, 0))
            assert c.return_status(front.request(0, req, len(req))) == 0
        assert daemon.proc is not None and daemon.proc.wait(20) == expected
        event = daemon.events("event")[-1]
        assert event["kind"] == ("shutdown" if kind == 2 else "reset")
