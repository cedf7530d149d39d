"""A real etcd cluster on loopback for the fleet-store tests and benchmark.

Each member is Debian's /usr/bin/etcd (package etcd-server, installed by
scripts/install-system-deps.sh) on free 127.0.0.1 ports, with its data in a temporary
directory; short heartbeat and election timeouts so that failovers take well under a
second. Nothing here uses the default ports, so a system etcd on 2379 does not matter.
Every process started is killed by `close()` (the fixtures call it whatever happens).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ETCD = os.environ.get("EFIRD_ETCD", "/usr/bin/etcd")
HEARTBEAT_MS = 50
ELECTION_MS = 500


class EtcdNotInstalled(AssertionError):
    """A failure, not a skip: CI installs etcd (scripts/install-system-deps.sh)."""


def etcd_binary() -> str:
    path = shutil.which(ETCD) or (ETCD if os.access(ETCD, os.X_OK) else None)
    if path is None:
        raise EtcdNotInstalled(
            f"etcd is not installed ({ETCD} not found): the fleet-store tests run a real "
            "cluster; install Debian's etcd-server (scripts/install-system-deps.sh, which "
            "`make setup` and `make test` run)")
    return path


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Member:
    def __init__(self, cluster: EtcdCluster, index: int, client_port: int, peer_port: int
                 ) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"m{index}"
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = cluster.directory / self.name
        self.log_path = cluster.directory / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, state: str = "new") -> None:
        assert self.proc is None or self.proc.poll() is not None
        argv = [
            etcd_binary(), "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://{self.endpoint}",
            "--advertise-client-urls", f"http://{self.endpoint}",
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.cluster.initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.cluster.token,
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--max-txn-ops", "1024",
            "--logger", "zap", "--log-level", "warn",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, as a clean shutdown."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.start(state="existing")

    def request(self, path: str, body: dict[str, Any] | None = None,
                timeout: float = 2.0) -> dict[str, Any]:
        req = urllib.request.Request(f"http://{self.endpoint}{path}",
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def status(self) -> dict[str, Any] | None:
        try:
            return self.request("/v3/maintenance/status", timeout=1.0)
        except (OSError, urllib.error.URLError, ValueError):
            return None


class EtcdCluster:
    """`size` members on loopback; `endpoints` is the URL's HOST:PORT list."""

    def __init__(self, size: int = 3, directory: Path | None = None) -> None:
        self.own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="efird-etcd-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.token = f"efird-test-{uuid.uuid4().hex[:12]}"
        ports = free_ports(2 * size)
        self.members = [Member(self, i, ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        etcd_binary()
        for m in self.members:
            m.start()
        self.wait_healthy(timeout)
        return self

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def url(self, domain: str, prefix: str = "efird") -> str:
        return f"etcd://{self.endpoints}/{prefix}/{domain}"

    def leader(self, timeout: float = 15.0) -> Member:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.running:
                    continue
                status = m.status()
                if status and status.get("leader") and \
                        status.get("leader") == status.get("header", {}).get("member_id"):
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no etcd leader within {timeout} s:\n{self.logs()}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running member answers and a linearizable read succeeds (a quorum)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.status() is not None for m in self.members if m.running):
                try:
                    self.any_running().request("/v3/kv/range", {"key": "AA=="}, timeout=2.0)
                    return
                except (OSError, urllib.error.URLError, ValueError):
                    pass
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None and m.proc.returncode > 0:
                    raise AssertionError(f"etcd {m.name} exited {m.proc.returncode}:\n"
                                         + m.log_path.read_text()[-3000:])
            time.sleep(0.05)
        raise AssertionError(f"etcd cluster not healthy within {timeout} s:\n{self.logs()}")

    def any_running(self) -> Member:
        return next(m for m in self.members if m.running)

    def client(self, member: Member | None = None) -> Any:
        """An etcd3gw client on one member (for reading and damaging keys in tests)."""
        import etcd3gw

        m = member or self.any_running()
        return etcd3gw.client(host="127.0.0.1", port=m.client_port, api_path="/v3/",
                              timeout=10)

    def logs(self) -> str:
        out = []
        for m in self.members:
            if m.log_path.exists():
                out.append(f"--- {m.name}\n" + m.log_path.read_text()[-1500:])
        return "\n".join(out)

    def close(self) -> None:
        for m in self.members:
            m.kill()
        if self.own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
