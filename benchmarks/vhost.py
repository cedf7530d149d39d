"""Transport benchmarks (issue: vhost-user): the doorbell round trip through the Python
frontend against a C floor, batched throughput, and the daemon's start-up and memory."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, median, percentile
from efird.abi import client as c
from efird.efi import guid as g

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.daemon import EfirdDaemon  # noqa: E402
from tests.vhost.frontend import VhostUserFrontend  # noqa: E402

VENDOR = g.guid_bytes("0b3b0e44-5a3f-4b0b-9bb4-6b1c3c1d0e02")


def doorbell_floor(work: Path) -> tuple[float, float]:
    """(median, p99) in ns of the C eventfd + shared-memory round trip."""
    exe = work / "doorbell_floor"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "benchmarks/doorbell_floor.c")],
                   check=True)
    out = subprocess.run([str(exe), "20000"], check=True, capture_output=True, text=True)
    med, p99 = out.stdout.split()
    return float(med), float(p99)


class LeanGuest:
    """The Python frontend's guest memory and ring, driven the way the C floor's client
    works: one pre-built chain, publish it, kick, spin on used->idx (no interrupt asked
    for), so the figure is efird's doorbell path, not the test frontend's bookkeeping."""

    def __init__(self, front: VhostUserFrontend, request: bytes) -> None:
        self.front, self.mem = front, front.memory
        self.layout = front.vring(0)
        self.kick_fd = front.eventfds(0)[0]
        self.heads = front.alloc_descs(0, 128)
        self.responses = []
        for i in range(0, 128, 2):
            rq, rs = front.alloc(len(request)), front.alloc(len(request))
            self.mem.write(rq, request)
            front.write_desc(0, self.heads[i], rq, len(request), 1, self.heads[i + 1])
            front.write_desc(0, self.heads[i + 1], rs, len(request), 2, 0)
            self.responses.append(rs)
        self.size = len(request)
        self.mem.write_u16(self.layout.avail, 1)  # VRING_AVAIL_F_NO_INTERRUPT: we poll
        self.idx = self.mem.read_u16(self.layout.avail_idx_addr)
        region, off = self.mem.locate(self.layout.used_idx_addr, 2)
        self.used = region.view[off : off + 2].cast("H")

    def publish(self, count: int) -> int:
        ring, qsize = self.layout.avail + 4, self.layout.queue_size
        for n in range(count):
            self.mem.write_u16(ring + 2 * ((self.idx + n) % qsize), self.heads[2 * n])
        self.idx = (self.idx + count) & 0xFFFF
        return self.idx

    def kick_and_wait(self, target: int) -> None:
        self.mem.write_u16(self.layout.avail_idx_addr, target)
        os.eventfd_write(self.kick_fd, 1)
        while self.used[0] != target:
            pass

    def response(self, n: int = 0) -> bytes:
        return self.mem.read(self.responses[n], self.size)

    def close(self) -> None:
        self.used.release()  # let the frontend unmap guest memory


def round_trips(work: Path) -> list[Figure]:
    daemon = EfirdDaemon(work / "vu.sock", work / "vm.efivars", log_level="info")
    with daemon, VhostUserFrontend(timeout=10.0) as front:
        front.connect(daemon.socket)
        front.handshake(queue_size=256, event_idx=False)
        set_req = c.set_variable(VENDOR, "Bench", 7, b"\x01\x02\x03\x04")
        front.request(0, set_req, len(set_req))
        guest = LeanGuest(front, c.get_variable(VENDOR, "Bench", 16))
        samples = []
        for i in range(6000):
            t0 = time.perf_counter_ns()
            guest.kick_and_wait(guest.publish(1))
            if i >= 500:
                samples.append(time.perf_counter_ns() - t0)
        assert c.parse_get_variable(guest.response()).data == b"\x01\x02\x03\x04"
        rates = []
        for _ in range(40):  # 64 queued per kick, timed from the kick to the last used
            target = guest.publish(64)
            t0 = time.perf_counter()
            guest.kick_and_wait(target)
            rates.append(64 / (time.perf_counter() - t0))
        assert all(c.parse_get_variable(guest.response(n)).data == b"\x01\x02\x03\x04"
                   for n in range(64))
        guest.close()
    floor_med, floor_p99 = doorbell_floor(work)
    return [
        Figure("GetVariable round trip via Python frontend, median", median(samples) / 1000,
               "us", floor_med / 1000, "<= 4x C eventfd+shm floor"),
        Figure("GetVariable round trip via Python frontend, p99", percentile(samples, 99) / 1000,
               "us", floor_p99 / 1000, "<= 15x floor p99"),
        Figure("GetVariable throughput, 64 queued per kick", statistics.median(rates), "/s",
               None, ">= 50,000/s on one core"),
    ]


def startup(work: Path) -> list[Figure]:
    ready, rss = [], []
    for i in range(5):
        sock = work / f"s{i}.sock"
        t0 = time.perf_counter()
        d = EfirdDaemon(sock, work / f"s{i}.efivars", log_level="info").start()
        ready.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.5)
        assert d.proc is not None
        with open(f"/proc/{d.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        rss.append(kb / 1024)
        d.stop()
    # floors: the interpreter with just the libraries the daemon must load
    floor_ms, floor_rss = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", "import trio, structlog, sqlite3, resource;"
                              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                             check=True, capture_output=True, text=True)
        floor_ms.append((time.perf_counter() - t0) * 1000)
        floor_rss.append(int(out.stdout) / 1024)
    return [
        Figure("efird serve ready after exec, median", statistics.median(ready), "ms",
               statistics.median(floor_ms), "<= 200 ms (floor: python + trio + structlog)"),
        Figure("efird serve idle RSS, median", statistics.median(rss), "MiB",
               statistics.median(floor_rss), "<= 30 MiB (floor: same imports)"),
    ]


def run() -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="efird-bench-"))
    try:
        return round_trips(work) + startup(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

