"""Crash consistency of the real daemon: SIGKILL at a random moment of a SetVariable storm
sent over vhost-user, then a restart, over and over. After each restart the store opens,
every write the guest saw acknowledged is there, no variable is torn, and enumeration
through the restarted daemon is consistent with the store.

CI runs EFIRD_CRASH_ITERATIONS (default 200) kills; the documented long run sets it to
2,000 or more (README, "Hostile guests and faults")."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import Status
from efird.store.sqlite import SqliteStore

from .daemon import EfirdDaemon
from .vhost.frontend import VhostUserError, VhostUserFrontend

VENDOR = g.guid_bytes("c4a1e5f2-7b3d-4e9a-8c6f-0d1e2f3a4b5c")
NAMES = 40
ITERATIONS = int(os.environ.get("EFIRD_CRASH_ITERATIONS", "200"))


def value(seq: int) -> bytes:
    """Each value repeats its sequence number, with a length that depends on it: a torn
    or mixed write cannot pass `check`."""
    return (b"%08d" % seq) * (1 + seq % 97)


def check(name: str, data: bytes) -> int:
    seq = int(data[:8])
    assert data == value(seq), f"{name} is torn"
    assert name == f"S{seq % NAMES}", f"{name} holds {seq}'s value"
    return seq


def enumerate_all(front: VhostUserFrontend) -> list[tuple[bytes, str]]:
    seen: list[tuple[bytes, str]] = []
    guid, name = bytes(16), ""
    while True:
        req = c.get_next_variable_name(guid, name)
        status, guid, name, _ = c.parse_get_next(front.request(0, req, len(req)))
        if status is Status.NOT_FOUND:
            return seen
        assert status is Status.SUCCESS, status
        seen.append((guid, name))
        assert len(seen) < 10_000, "enumeration does not end"


def test_sigkill_during_a_setvariable_storm(tmp_path: Path) -> None:
    rng = random.Random(0xEF1D)
    store_path = tmp_path / "vm.efivars"
    acked: dict[str, int] = {}  # name -> newest acknowledged sequence number
    seq = 0
    for iteration in range(ITERATIONS):
        daemon = EfirdDaemon(tmp_path / "vm.sock", store_path, log_level="info").start()
        try:
            seq = _round(daemon, rng, acked, seq)
        except Exception as exc:
            raise AssertionError(f"iteration {iteration} of {ITERATIONS}: {exc!r}\n"
                                 f"daemon log:\n{daemon.log_path.read_text()[-2000:]}") from exc
        finally:
            daemon.kill()
        # the store itself, opened directly: every acknowledged write, nothing torn
        store = SqliteStore(store_path, exclusive=False)
        stored = {v.name: v.data for v in store.load() if v.guid == VENDOR}
        store.close()
        for name, last in acked.items():
            assert check(name, stored[name]) >= last, f"acknowledged {name}={last} lost"
        for name, data in stored.items():
            check(name, data)
    assert seq > ITERATIONS


def _round(daemon: EfirdDaemon, rng: random.Random, acked: dict[str, int], seq: int) -> int:
    """Check the restarted daemon against what was acknowledged, then storm until a
    SIGKILL lands at a random moment. Returns the next sequence number."""
    front = VhostUserFrontend(timeout=10.0)
    front.connect(daemon.socket)
    front.handshake()
    # the restarted daemon enumerates exactly what the store holds, once each
    listed = enumerate_all(front)
    assert len(listed) == len(set(listed))
    ours = {n for gd, n in listed if gd == VENDOR}
    assert set(acked) <= ours <= {f"S{i}" for i in range(NAMES)}
    for name, last in acked.items():
        req = c.get_variable(VENDOR, name, 8 * 100)
        result = c.parse_get_variable(front.request(0, req, len(req)))
        assert result.status is Status.SUCCESS, name
        assert check(name, result.data) >= last, f"acknowledged {name}={last} lost"
    delay = rng.uniform(0.0, 0.08)
    assert daemon.proc is not None
    killed_at: list[float] = []
    proc = daemon.proc

    def kill() -> None:
        killed_at.append(time.monotonic())
        proc.send_signal(signal.SIGKILL)

    killer = threading.Timer(delay, kill)
    killer.start()
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            name = f"S{seq % NAMES}"
            req = c.set_variable(VENDOR, name, 7, value(seq))
            if c.return_status(front.request(0, req, len(req), timeout=5)) is Status.SUCCESS:
                acked[name] = seq
            seq += 1
        raise AssertionError("the daemon was not killed")
    except (VhostUserError, OSError) as exc:
        # killed mid-storm: the point. The error must be the kill, seen promptly; a request
        # that timed out before or long after it would be a hang, not a crash.
        failed_at = time.monotonic()
        assert killed_at, f"the storm failed before the SIGKILL: {exc!r}"
        late = failed_at - killed_at[0]
        assert late < 2.0, f"the frontend noticed the SIGKILL only {late:.1f} s later: {exc!r}"
    finally:
        killer.join()
        front.close()
    assert daemon.proc.wait(10) == -signal.SIGKILL
    return seq
