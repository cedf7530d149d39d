"""Run `efird serve` as a real subprocess for tests: wait for its readiness line, read its
JSON log lines, stop it with a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .vhost.frontend import VhostUserFrontend


class EfirdDaemon:
    def __init__(self, socket: Path, store: Path, *args: str, log_level: str = "debug") -> None:
        self.socket, self.store = socket, store
        self.log_path = socket.with_suffix(".log")
        self.argv = [sys.executable, "-m", "efird.cli.main", "--log-level", log_level, "serve",
                     "--socket", str(socket), "--store", str(store), *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EfirdDaemon:
        self.log_path.write_bytes(b"")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.wait_for("ready", timeout)
        return self

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"event": "(not json)", "text": raw})
        return out

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]

    def wait_for(self, event: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(event)
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"efird exited ({self.proc.returncode}) before {event!r}:\n"
                                     + self.log_path.read_text()[-3000:])
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} log line within {timeout} s:\n"
                             + self.log_path.read_text()[-3000:])

    def messages(self) -> list[str]:
        """The vhost-user requests efird received, in order (debug log)."""
        return [line["request"] for line in self.events("message")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> EfirdDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def attach(daemon: EfirdDaemon, timeout: float = 10.0) -> VhostUserFrontend:
    """A Python vhost-user frontend connected to the daemon, brought up as QEMU does."""
    front = VhostUserFrontend(timeout=timeout)
    front.connect(daemon.socket)
    front.handshake()
    return front
