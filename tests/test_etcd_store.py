"""The fleet store on a real 3-member etcd cluster on loopback (tests/etcd_cluster.py).

The daemon tests run the real `efird serve` (sandboxed, as in production) with the Python
vhost-user frontend as the guest: a SetVariable storm while the etcd leader is killed
loses no acknowledged write; a daemon cut off from the quorum fails writes with
DEVICE_ERROR, keeps serving reads and writes again once the quorum is back; two daemons
racing for one domain end with exactly one writer; migration and failover are ownership
handoffs; `efird vars` moves variables between the SQLite and etcd stores. Bad input
(unreachable endpoints, a wrong prefix, an expired lease, corrupt values) gives a clear
error or an EFI status, and never a half-loaded store.

etcd missing is a failure, not a skip: CI installs it (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from efird.abi import client as c
from efird.control.client import ControlClient
from efird.control.protocol import ControlError
from efird.efi import guid as g
from efird.efi.status import Status
from efird.store.base import StoreCorruptError, StoreFencedError, StoreIOError, StoreLockedError
from efird.store.etcd import EtcdStore, encode_variable, var_key
from efird.store.open import StoreSpecError, open_etcd, open_store, parse_store_spec
from efird.variables.model import Variable

from .daemon import EfirdDaemon
from .daemon import attach as attach_frontend
from .etcd_cluster import EtcdCluster, free_ports
from .vhost.frontend import VhostUserFrontend

VENDOR = "9d3c6a5e-1b2f-4c8d-a7e6-5f4b3a2c1d0e"
VENDOR_B = g.guid_bytes(VENDOR)
NV_BS_RT = 7
MS_FD = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as running:
        yield running


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efird-etcd-t-"))  # short: unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- helpers -------------------------------------------------------------------------------

def serve(work: Path, name: str, url: str, *extra: str) -> EfirdDaemon:
    return EfirdDaemon(work / f"{name}.sock", url, "--control", str(work / f"{name}.ctl"),
                       *extra, log_level="info")  # type: ignore[arg-type]


def attach(daemon: EfirdDaemon) -> VhostUserFrontend:
    return attach_frontend(daemon, timeout=15.0)


def set_var(front: VhostUserFrontend, name: str, data: bytes, attributes: int = NV_BS_RT
            ) -> Status:
    req = c.set_variable(VENDOR_B, name, attributes, data)
    return c.return_status(front.request(0, req, len(req), timeout=30))


def get_var(front: VhostUserFrontend, name: str) -> tuple[Status, bytes]:
    req = c.get_variable(VENDOR_B, name, 4096)
    result = c.parse_get_variable(front.request(0, req, len(req)))
    return result.status, result.data


def stored(url: str) -> dict[str, bytes]:
    """What etcd holds for the domain (ours), read at one revision by a reader."""
    store = open_etcd(parse_store_spec(url), ownership="read")
    try:
        return {v.name: v.data for v in store.load() if v.guid == VENDOR_B}
    finally:
        store.close()


def events(daemon: EfirdDaemon, kind: str) -> list[dict[str, Any]]:
    return [line for line in daemon.events("event") if line.get("kind") == kind]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def efird(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "efird.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


def value(seq: int) -> bytes:
    """A storm value that names its sequence number; a torn value cannot pass check()."""
    return (b"%08d" % seq) * (1 + seq % 13)


def check(data: bytes) -> int:
    seq = int(data[:8])
    assert data == value(seq), "torn value"
    return seq


# -- --store parsing -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "endpoints", "prefix", "domain"), [
    ("etcd://127.0.0.1:2379/efird/vm1", (("127.0.0.1", 2379),), "efird", "vm1"),
    ("etcd://10.0.0.1:2379,10.0.0.2:2380/fleet/eu/vm-1.a", (("10.0.0.1", 2379),
                                                            ("10.0.0.2", 2380)),
     "fleet/eu", "vm-1.a"),
    ("etcd://[::1]:2379/p/d/", (("::1", 2379),), "p", "d"),
    ("etcd://etcd-1.example:2379/p/d", (("etcd-1.example", 2379),), "p", "d"),
])
def test_url_forms(text: str, endpoints: tuple[tuple[str, int], ...], prefix: str,
                   domain: str) -> None:
    spec = parse_store_spec(text)
    assert spec.is_etcd and (spec.endpoints, spec.prefix, spec.domain) == \
        (endpoints, prefix, domain)
    assert spec.name == domain and spec.base_key == f"/{prefix}/{domain}/"


@pytest.mark.parametrize(("text", "message"), [
    ("etcd://127.0.0.1:2379/vm1", "a PREFIX and a DOMAIN are needed"),
    ("etcd://127.0.0.1:2379", "no /PREFIX/DOMAIN"),
    ("etcd://127.0.0.1:2379/", "no /PREFIX/DOMAIN"),
    ("etcd://127.0.0.1/p/d", "give HOST:PORT"),
    ("etcd://127.0.0.1:http/p/d", "the port must be a number"),
    ("etcd://127.0.0.1:70000/p/d", "the port must be a number"),
    ("etcd://h_1:2379/p/d", "is not a host name"),
    ("etcd://[::1]2379/p/d", "[ADDRESS]:PORT"),
    ("etcd://a:1,,b:2/p/d", "empty endpoint"),
    ("etcd://a:1,a:1/p/d", "listed twice"),
    ("etcd://a:1/p/../d", "bad path segment '..'"),
    ("etcd://a:1/p//d", "bad path segment ''"),
    ("etcd://a:1/p q/d", "bad path segment 'p q'"),
    ("http://127.0.0.1:2379/p/d", "unsupported store URL scheme 'http://'"),
])
def test_bad_urls_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(StoreSpecError, match=message.replace("[", r"\[").replace(".", r"\.")
                       .replace("(", r"\(").replace(")", r"\)")):
        parse_store_spec(text)


def test_a_path_stays_a_path_and_bad_urls_are_usage_errors(work: Path) -> None:
    spec = parse_store_spec("vm1.efivars")
    assert spec.kind == "sqlite" and spec.path == Path("vm1.efivars") and spec.name == "vm1"
    proc = efird("serve", "--socket", str(work / "a.sock"), "--store", "etcd://h:1/vm1")
    assert proc.returncode == 2 and "a PREFIX and a DOMAIN are needed" in proc.stderr
    proc = efird("vars", "--store", "etcd://h:x/p/d", "list")
    assert proc.returncode == 2 and "the port must be a number" in proc.stderr
    proc = efird("serve", "--socket", str(work / "a.sock"), "--store",
                 str(work / "vm.efivars"), "--etcd-standby")
    assert proc.returncode == 2 and "--etcd-standby: only with an etcd:// --store" in proc.stderr
    assert list(work.iterdir()) == []


# -- bad input -----------------------------------------------------------------------------

def test_unreachable_endpoints_are_named(work: Path) -> None:
    ports = free_ports(2)
    url = f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/efird/vm1"
    started = time.monotonic()
    with pytest.raises(StoreIOError) as failed:
        open_store(parse_store_spec(url), timeout=1.0)
    assert time.monotonic() - started < 5
    for port in ports:
        assert f"127.0.0.1:{port}: connection refused" in str(failed.value)
    proc = efird("serve", "--socket", str(work / "a.sock"), "--store", url,
                 "--etcd-timeout", "1")
    assert proc.returncode == 2, proc.stderr
    assert "no etcd endpoint answered within 1 s" in proc.stderr
    assert f"127.0.0.1:{ports[0]}: connection refused" in proc.stderr
    assert '"ready"' not in proc.stderr and not (work / "a.sock").exists()
    proc = efird("vars", "--store", url, "list")
    assert proc.returncode == 2 and f"127.0.0.1:{ports[1]}" in proc.stderr


def test_wrong_prefix_is_refused_and_left_untouched(cluster: EtcdCluster, work: Path) -> None:
    etcd = cluster.client()
    etcd.put("/apps/vm1/config", "not efird's")
    proc = efird("serve", "--socket", str(work / "a.sock"), "--store", cluster.url("vm1", "apps"))
    assert proc.returncode == 2, proc.stderr
    assert "/apps/vm1/ holds keys but not the /apps/vm1/format marker" in proc.stderr
    assert "/apps/vm1/config" in proc.stderr
    assert [m["key"] for _, m in etcd.get_prefix("/apps/")] == [b"/apps/vm1/config"]
    # a URL that names the parent of domains instead of a domain
    store = open_store(parse_store_spec(cluster.url("vm1", "fleet/eu")))
    store.close()
    with pytest.raises(StoreCorruptError, match="check PREFIX and DOMAIN"):
        open_store(parse_store_spec(cluster.url("eu", "fleet")))
    # reading a domain that was never created
    proc = efird("vars", "--store", cluster.url("nothing"), "list")
    assert proc.returncode == 2 and "does not exist (no efird store under /efird/nothing/)" \
        in proc.stderr


def _damage(etcd: Any, base: str, case: str) -> str:
    """Damage the domain under base one way; the key whose name the error must carry."""
    rel = var_key(VENDOR_B, "Victim")
    key = base + rel
    raw = etcd.get(key)[0]
    if case == "flipped-bit":
        etcd.put(key, raw[:40] + bytes([raw[40] ^ 1]) + raw[41:])
    elif case == "truncated":
        etcd.put(key, raw[:30])
    elif case == "other-key":
        other = base + var_key(VENDOR_B, "Other")
        etcd.put(other, raw)
        return other
    elif case == "foreign-value":
        etcd.put(key, b"hello")
    elif case == "meta":
        key = base + "meta/time.offset_ns"
        value = etcd.get(key)[0]
        etcd.put(key, value[:-1] + bytes([value[-1] ^ 0x80]))
    elif case == "owner":
        key = base + "owner"
        etcd.put(key, b"{not json")
    elif case == "format":
        key = base + "format"
        etcd.put(key, json.dumps({"format": "efird-etcd-store", "version": 99}))
    elif case == "unknown-key":
        key = base + "var/zz"
        etcd.put(key, b"x")
    return key


@pytest.mark.parametrize("case", ["flipped-bit", "truncated", "other-key", "foreign-value",
                                  "meta", "owner", "format", "unknown-key"])
def test_corrupt_values_refuse_the_store_naming_the_key(cluster: EtcdCluster, case: str
                                                       ) -> None:
    url = cluster.url(f"vm-{case}")
    store = open_store(parse_store_spec(url))
    store.commit(puts=[Variable(VENDOR_B, "Victim", NV_BS_RT, b"precious")],
                 meta={"time.offset_ns": b"\x01" * 8})
    store.close()
    key = _damage(cluster.client(), f"/efird/vm-{case}/", case)
    with pytest.raises(StoreCorruptError) as failed:
        open_store(parse_store_spec(url), ownership="read")
    assert key in str(failed.value)


def test_the_daemon_never_serves_a_damaged_store(cluster: EtcdCluster, work: Path) -> None:
    url = cluster.url("vm1")
    store = open_store(parse_store_spec(url))
    store.commit(puts=[Variable(VENDOR_B, "Victim", NV_BS_RT, b"precious")])
    store.close()
    key = _damage(cluster.client(), "/efird/vm1/", "flipped-bit")
    proc = efird("serve", "--socket", str(work / "a.sock"), "--store", url)
    assert proc.returncode == 2
    assert f"key {key} fails its checksum" in proc.stderr and '"ready"' not in proc.stderr
    assert not (work / "a.sock").exists()
    assert cluster.client().get("/efird/vm1/owner") == []  # it did not take the domain


# -- semantics -----------------------------------------------------------------------------

def test_one_transaction_per_write_committed_and_readable_anywhere(cluster: EtcdCluster
                                                                  ) -> None:
    url = cluster.url("vm1")
    etcd = cluster.client()
    store = open_store(parse_store_spec(url))
    assert isinstance(store, EtcdStore)

    def revision() -> int:
        return int(etcd.status()["header"]["revision"])

    before = revision()
    store.commit(puts=[Variable(VENDOR_B, f"V{i}", NV_BS_RT, b"x" * i) for i in range(1, 6)],
                 meta={"sb.mode": b"\x01"})
    assert revision() == before + 1  # puts, meta and the ownership key: one transaction
    store.commit(deletes=[(VENDOR_B, "V1")], puts=[Variable(VENDOR_B, "V2", NV_BS_RT, b"y")])
    assert revision() == before + 2
    keys = sorted(m["key"].decode() for _, m in etcd.get_prefix("/efird/vm1/"))
    assert "/efird/vm1/format" in keys and "/efird/vm1/owner" in keys
    assert "/efird/vm1/meta/sb.mode" in keys
    assert f"/efird/vm1/{var_key(VENDOR_B, 'V2')}" in keys
    assert f"/efird/vm1/{var_key(VENDOR_B, 'V1')}" not in keys
    owner_value, owner_meta = etcd.get("/efird/vm1/owner", metadata=True)[0]
    holder = json.loads(owner_value)
    assert holder["role"] == "serve" and int(owner_meta["lease"]) != 0
    # committed on the quorum: every member answers with it (serializable reads)
    for m in cluster.members:
        member = cluster.client(m)
        raw = member.get(f"/efird/vm1/{var_key(VENDOR_B, 'V2')}", serializable=True)
        assert raw == [encode_variable(var_key(VENDOR_B, "V2"),
                                       Variable(VENDOR_B, "V2", NV_BS_RT, b"y"))]
    assert stored(url) == {"V2": b"y", "V3": b"xxx", "V4": b"xxxx", "V5": b"xxxxx"}
    store.close()
    assert etcd.get("/efird/vm1/owner") == []  # closing hands the domain back at once


def test_a_second_store_cannot_write_until_it_takes_ownership(cluster: EtcdCluster) -> None:
    url = cluster.url("vm1")
    first = open_etcd(parse_store_spec(url))
    seen: list[tuple[str, dict[str, object]]] = []
    first.on_event = lambda kind, data: seen.append((kind, data))
    first.commit(puts=[Variable(VENDOR_B, "A", NV_BS_RT, b"first")])
    with pytest.raises(StoreLockedError, match="is owned by efird pid"):
        open_etcd(parse_store_spec(url))
    second = open_etcd(parse_store_spec(url), ownership="standby")
    with pytest.raises(StoreFencedError, match="standby"):
        second.commit(puts=[Variable(VENDOR_B, "A", NV_BS_RT, b"second")])
    assert first.release_ownership() is True
    second.take_ownership()
    assert {v.name: v.data for v in second.load()} == {"A": b"first"}  # no copy: etcd's
    second.commit(puts=[Variable(VENDOR_B, "A", NV_BS_RT, b"second")])
    with pytest.raises(StoreFencedError, match="handed the domain's ownership over"):
        first.commit(puts=[Variable(VENDOR_B, "A", NV_BS_RT, b"stale")])
    assert stored(url) == {"A": b"second"}
    assert [kind for kind, _ in seen] == ["ownership-released"]
    first.close()
    second.close()


# -- the daemon: leader killed, quorum lost ------------------------------------------------

def test_no_acknowledged_write_is_lost_when_the_leader_is_killed_in_a_storm(
        cluster: EtcdCluster, work: Path) -> None:
    url = cluster.url("vm1")
    names = 16
    acked: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    stop = threading.Event()
    daemon = serve(work, "a", url, "--nv-write-rate", "0", "--etcd-timeout", "5").start()
    try:
        front = attach(daemon)

        def storm() -> None:
            seq = 0
            while not stop.is_set():
                name = f"S{seq % names}"
                status = set_var(front, name, value(seq))
                outcomes[status.name] = outcomes.get(status.name, 0) + 1
                if status is Status.SUCCESS:
                    acked[name] = seq
                seq += 1

        storm_thread = threading.Thread(target=storm)
        storm_thread.start()
        for _ in range(2):  # kill the leader twice, each time mid-storm
            time.sleep(0.7)
            leader = cluster.leader()
            leader.kill()
            before = outcomes.get("SUCCESS", 0)
            wait_until(lambda before=before: outcomes.get("SUCCESS", 0) > before + 20, 15,
                       "acknowledged writes again after the leader died")
            leader.restart()
            cluster.wait_healthy()
        time.sleep(0.5)
        stop.set()
        storm_thread.join(60)
        assert outcomes.get("SUCCESS", 0) > 50, outcomes
        # nothing the guest saw acknowledged is missing or older, in the daemon or in etcd
        for name, last in acked.items():
            status, data = get_var(front, name)
            assert status is Status.SUCCESS and check(data) >= last, name
        in_etcd = stored(url)
        for name, last in acked.items():
            assert check(in_etcd[name]) >= last, f"acknowledged {name}={last} lost"
        front.close()
        assert daemon.stop() == 0
    finally:
        stop.set()
        daemon.kill()
    # a new daemon (no copying: it loads from etcd) serves every acknowledged write
    with serve(work, "b", url) as again, attach(again) as front:
        for name, last in acked.items():
            status, data = get_var(front, name)
            assert status is Status.SUCCESS and check(data) >= last


def test_cut_off_from_the_quorum_writes_fail_cleanly_reads_go_on_then_recover(
        cluster: EtcdCluster, work: Path) -> None:
    url = cluster.url("vm1")
    with serve(work, "a", url, "--etcd-timeout", "1.5") as daemon, attach(daemon) as front:
        assert set_var(front, "Before", b"kept") is Status.SUCCESS
        survivor = cluster.leader()
        others = [m for m in cluster.members if m is not survivor]
        for m in others:
            m.stop()
        started = time.monotonic()
        assert set_var(front, "During", b"lost") is Status.DEVICE_ERROR
        assert time.monotonic() - started < 5
        assert set_var(front, "Before", b"changed") is Status.DEVICE_ERROR
        # reads are served from memory, unchanged by the failed writes
        assert get_var(front, "Before") == (Status.SUCCESS, b"kept")
        assert get_var(front, "During")[0] is Status.NOT_FOUND
        req = c.get_next_variable_name(bytes(16), "")
        assert c.parse_get_next(front.request(0, req, len(req)))[0] is Status.SUCCESS
        status = ControlClient(work / "a.ctl").status()
        assert status["store_errors"] >= 2 and status["ownership"]["state"] == "owner"
        for m in others:
            m.restart()
        cluster.wait_healthy()
        # writes work again (the lease outlived the outage); what the guest was told
        # failed is not in etcd, even if raft committed it late
        deadline = time.monotonic() + 10
        while set_var(front, "After", b"back") is not Status.SUCCESS:
            assert time.monotonic() < deadline, "writes did not recover"
            time.sleep(0.2)
        assert stored(url) == {"Before": b"kept", "After": b"back"}
        assert get_var(front, "Before") == (Status.SUCCESS, b"kept")
        assert not events(daemon, "ownership-lost")


def test_an_outage_longer_than_the_lease_fences_until_take_ownership(
        cluster: EtcdCluster, work: Path) -> None:
    url = cluster.url("vm1")
    with serve(work, "a", url, "--etcd-timeout", "1", "--etcd-lease-ttl", "2") as daemon, \
            attach(daemon) as front:
        assert set_var(front, "Kept", b"1") is Status.SUCCESS
        survivor = cluster.leader()
        others = [m for m in cluster.members if m is not survivor]
        for m in others:
            m.stop()
        wait_until(lambda: events(daemon, "ownership-lost"), 10, "ownership-lost event")
        assert "presumed expired" in events(daemon, "ownership-lost")[0]["reason"]
        for m in others:
            m.restart()
        cluster.wait_healthy()
        assert set_var(front, "Kept", b"2") is Status.DEVICE_ERROR  # fenced, not retried
        assert get_var(front, "Kept") == (Status.SUCCESS, b"1")
        ctl = ControlClient(work / "a.ctl")
        assert ctl.status()["ownership"]["state"] == "fenced"
        result = ctl.take_ownership(wait=10)
        assert result["ownership"]["state"] == "owner"
        assert set_var(front, "Kept", b"3") is Status.SUCCESS
        assert stored(url) == {"Kept": b"3"}


# -- the daemon: fencing, races, handoffs ---------------------------------------------------

def test_an_expired_lease_fences_the_old_owner_which_never_overwrites_the_new(
        cluster: EtcdCluster, work: Path) -> None:
    url = cluster.url("vm1")
    old = serve(work, "a", url, "--etcd-lease-ttl", "2").start()
    new: EfirdDaemon | None = None
    try:
        front = attach(old)
        assert set_var(front, "X", b"old") is Status.SUCCESS
        assert old.proc is not None
        old.proc.send_signal(signal.SIGSTOP)  # paused: its lease runs out
        new = serve(work, "b", url, "--etcd-wait", "20").start(timeout=40)
        with attach(new) as front_b:
            assert get_var(front_b, "X") == (Status.SUCCESS, b"old")
            assert set_var(front_b, "X", b"new") is Status.SUCCESS
        old.proc.send_signal(signal.SIGCONT)
        # the woken owner's write is refused: etcd's compare fails, or its renewal found
        # the lease gone first
        assert set_var(front, "X", b"stale") is Status.DEVICE_ERROR
        assert get_var(front, "X") == (Status.SUCCESS, b"old")  # reads go on
        wait_until(lambda: events(old, "ownership-lost"), 10, "ownership-lost on the old one")
        assert ControlClient(work / "a.ctl").status()["ownership"]["state"] == "fenced"
        assert stored(url) == {"X": b"new"}
        front.close()
    finally:
        if old.proc is not None and old.proc.poll() is None:
            old.proc.send_signal(signal.SIGCONT)
        old.kill()
        if new is not None:
            new.kill()


def test_two_daemons_racing_for_a_domain_end_with_exactly_one_writer(
        cluster: EtcdCluster, work: Path) -> None:
    url = cluster.url("vm1")
    a, b = serve(work, "a", url), serve(work, "b", url)
    for d in (a, b):  # both at once, without waiting for the first one's readiness
        d.log_path.write_bytes(b"")
        d.proc = subprocess.Popen(d.argv, stdout=subprocess.DEVNULL,
                                  stderr=open(d.log_path, "ab"))  # noqa: SIM115
    try:
        assert a.proc is not None and b.proc is not None
        wait_until(lambda: a.proc.poll() is not None or b.proc.poll() is not None, 30,
                   "the loser to exit")
        loser, winner = (a, b) if a.proc.poll() is not None else (b, a)
        assert loser.proc is not None and loser.proc.returncode == 2
        assert "is owned by efird pid" in loser.log_path.read_text()
        winner.wait_for("ready", 20)
        # the loser as a standby: it serves, but its writes are refused
        standby = serve(work, "c", url, "--etcd-standby").start()
        try:
            with attach(winner) as fw, attach(standby) as fs:
                for i in range(10):
                    assert set_var(fw, f"W{i}", b"winner") is Status.SUCCESS
                    assert set_var(fs, f"W{i}", b"standby") is Status.DEVICE_ERROR
                    assert set_var(fs, f"S{i}", b"standby") is Status.DEVICE_ERROR
            assert stored(url) == {f"W{i}": b"winner" for i in range(10)}
            assert winner.stop() == 0  # hands the domain back for the second race
        finally:
            standby.kill()
    finally:
        a.kill()
        b.kill()
    # the same race through the control socket: two standbys take at once
    x = serve(work, "x", url, "--etcd-standby").start()
    y = serve(work, "y", url, "--etcd-standby").start()
    try:
        results: dict[str, str] = {}

        def take(name: str) -> None:
            try:
                ControlClient(work / f"{name}.ctl").take_ownership(wait=0)
                results[name] = "owner"
            except ControlError as exc:
                results[name] = exc.code

        threads = [threading.Thread(target=take, args=(n,)) for n in ("x", "y")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results.values()) == ["owned", "owner"], results
        owner = x if results["x"] == "owner" else y
        other = y if owner is x else x
        with attach(owner) as fo, attach(other) as ft:
            assert set_var(fo, "Race", b"won") is Status.SUCCESS
            assert set_var(ft, "Race", b"lost") is Status.DEVICE_ERROR
        assert stored(url)["Race"] == b"won"
    finally:
        x.kill()
        y.kill()


def test_migration_is_an_ownership_handoff_without_copying(cluster: EtcdCluster,
                                                          work: Path) -> None:
    url = cluster.url("vm1")
    with serve(work, "src", url) as src, serve(work, "dst", url, "--etcd-standby") as dst:
        src_ctl, dst_ctl = ControlClient(work / "src.ctl"), ControlClient(work / "dst.ctl")
        assert dst_ctl.status()["ownership"]["state"] == "standby"
        monotonic = c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", 5, 0) + bytes(8))
        with attach(src) as front:
            assert set_var(front, "Persistent", b"nv") is Status.SUCCESS
            assert set_var(front, "Volatile", b"ram", attributes=6) is Status.SUCCESS
            for _ in range(3):
                front.request(0, monotonic, len(monotonic))
        with pytest.raises(ControlError) as busy:
            dst_ctl.take_ownership(wait=0)
        assert busy.value.code == "owned"
        # the handoff, as a toolstack does it with efird ctl: release on the source, take
        # on the target, then the volatile state
        import subprocess
        import sys

        def ctl(name: str, *argv: str) -> dict:
            done = subprocess.run([sys.executable, "-m", "efird.cli.main", "ctl", "--control",
                                   str(work / f"{name}.ctl"), "--json", *argv],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            result: dict = json.loads(done.stdout)
            return result

        assert ctl("src", "release-ownership")["revoked"] is True
        taken = ctl("dst", "take-ownership", "--wait", "5")
        assert taken["ownership"]["state"] == "owner"
        dst_ctl.restore_state(src_ctl.save_state())
        with attach(dst) as front:
            assert get_var(front, "Persistent") == (Status.SUCCESS, b"nv")
            assert get_var(front, "Volatile") == (Status.SUCCESS, b"ram")
            assert set_var(front, "AfterMove", b"dst") is Status.SUCCESS
            count = front.request(0, monotonic, len(monotonic))
            assert struct.unpack_from("<I", count, 40)[0] == 4  # carried on, not restarted
        with attach(src) as front:
            assert set_var(front, "Late", b"src") is Status.DEVICE_ERROR
        assert stored(url) == {"Persistent": b"nv", "AfterMove": b"dst"}
        assert events(src, "ownership-released") and events(dst, "ownership-taken")
        assert src_ctl.status()["ownership"]["state"] == "released"


def test_failover_after_the_owner_dies_takes_over_when_its_lease_expires(
        cluster: EtcdCluster, work: Path) -> None:
    url = cluster.url("vm1")
    first = serve(work, "a", url, "--etcd-lease-ttl", "2").start()
    try:
        with attach(first) as front:
            for i in range(5):
                assert set_var(front, f"F{i}", b"%d" % i) is Status.SUCCESS
        first.kill()  # SIGKILL: no release, the lease has to expire
        started = time.monotonic()
        with serve(work, "b", url, "--etcd-wait", "20") as second, attach(second) as front:
            assert time.monotonic() - started < 15
            for i in range(5):
                assert get_var(front, f"F{i}") == (Status.SUCCESS, b"%d" % i)
            assert set_var(front, "F0", b"again") is Status.SUCCESS
    finally:
        first.kill()


# -- efird vars ----------------------------------------------------------------------------

def test_vars_moves_variables_between_the_sqlite_and_etcd_stores(cluster: EtcdCluster,
                                                                work: Path) -> None:
    url = cluster.url("vm1")
    sqlite_store = work / "vm1.efivars"
    assert MS_FD.exists(), "ovmf is a system dependency (scripts/install-system-deps.sh)"
    assert efird("vars", "--store", str(sqlite_store), "import", str(MS_FD)).returncode == 0
    assert efird("vars", "--store", str(sqlite_store), "set", "Demo", "--guid", VENDOR,
                 "--string", "hello").returncode == 0
    exported = work / "vm1.json"
    assert efird("vars", "--store", str(sqlite_store), "export", str(exported), "--format",
                 "qemu-json").returncode == 0
    result = efird("vars", "--store", url, "import", str(exported))
    assert result.returncode == 0, result.stderr
    assert cluster.client().get("/efird/vm1/owner") == []  # taken for the command only

    def listing(store: str) -> list[dict[str, Any]]:
        proc = efird("vars", "--store", store, "list", "--json")
        assert proc.returncode == 0, proc.stderr
        return sorted(json.loads(proc.stdout)["variables"],
                      key=lambda v: (v["guid"], v["name"]))

    from_sqlite = listing(str(sqlite_store))
    assert listing(url) == from_sqlite
    sb = efird("vars", "--store", url, "sb-state", "--json")
    assert sb.returncode == 0 and json.loads(sb.stdout)["mode"] in ("user", "deployed")
    # and back: etcd -> edk2 .fd -> a new SQLite store
    fd = work / "back.fd"
    assert efird("vars", "--store", url, "export", str(fd), "--format", "edk2-fd"
                 ).returncode == 0
    back = work / "back.efivars"
    assert efird("vars", "--store", str(back), "import", str(fd)).returncode == 0
    assert [(v["name"], v["guid"], v["size"]) for v in listing(str(back))] == \
        [(v["name"], v["guid"], v["size"]) for v in from_sqlite]
    got = subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "--store", url,
                          "get", "Demo", "--guid", VENDOR, "--raw"], capture_output=True,
                         timeout=60, check=True)
    assert got.stdout == "hello".encode("utf-16-le") + b"\0\0"


def test_vars_goes_through_the_owning_daemon_or_names_it(cluster: EtcdCluster,
                                                        work: Path) -> None:
    url = cluster.url("vm1")
    with serve(work, "a", url) as daemon, attach(daemon) as front:
        proc = efird("vars", "--store", url, "set", "FromHost", "--guid", VENDOR,
                     "--string", "hi")
        assert proc.returncode == 0, proc.stderr
        assert get_var(front, "FromHost") == (Status.SUCCESS, "hi".encode("utf-16-le") + b"\0\0")
        assert events(daemon, "variables-changed")
        listed = efird("vars", "--store", url, "list", "--json")
        assert any(v["name"] == "FromHost" for v in json.loads(listed.stdout)["variables"])
        front.close()
        assert daemon.stop() == 0  # SIGTERM: it hands the domain back as it exits
    # a daemon without a control socket: refused, naming it
    bare = EfirdDaemon(work / "b.sock", url, log_level="info")  # type: ignore[arg-type]
    with bare:
        proc = efird("vars", "--store", url, "set", "X", "--guid", VENDOR, "--string", "x")
        assert proc.returncode == 2
        assert "is owned by efird pid" in proc.stderr and "control socket" in proc.stderr
        # reading needs no ownership: the committed variables
        listed = efird("vars", "--store", url, "list", "--json")
        assert listed.returncode == 0
        assert any(v["name"] == "FromHost" for v in json.loads(listed.stdout)["variables"])



def test_the_embedded_store_has_no_ownership_to_hand_over(work: Path) -> None:
    with EfirdDaemon(work / "a.sock", work / "a.efivars", "--control", str(work / "a.ctl"),
                     log_level="info"):
        ctl = ControlClient(work / "a.ctl")
        for op in (lambda: ctl.take_ownership(wait=0), ctl.release_ownership):
            with pytest.raises(ControlError) as refused:
                op()
            assert refused.value.code == "unsupported"
        assert "ownership" not in ctl.status()
