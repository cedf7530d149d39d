"""Fleet-store benchmarks (issue: fleet store on etcd), against one 3-member etcd cluster on
loopback started for this run (tests/etcd_cluster.py; Debian's etcd-server).

* durable SetVariable (NV) through the variable service on the etcd store, median,
  against the floor: a bare etcd3gw put of a value of the same size on the same cluster,
  alternated call by call so both see the same cluster and disk weather. Goal: <= 3x.
* GetVariable through the service on the etcd store against the same on the SQLite
  store (reads come from memory either way). Goal: the same (ratio about 1).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Figure, median, per_call_ns
from efird.abi import client as c
from efird.domain import Domain
from efird.efi import guid as g
from efird.store.etcd import encode_variable, var_key
from efird.store.open import open_store, parse_store_spec
from efird.store.sqlite import SqliteStore
from efird.variables.limits import Limits
from efird.variables.model import Variable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.etcd_cluster import EtcdCluster  # noqa: E402

VENDOR = g.guid_bytes("0b3b0e44-5a3f-4b0b-9bb4-6b1c3c1d0e03")
BIG = Limits(nv_storage=1 << 30, volatile_storage=1 << 30, nv_write_rate=0)
ROUNDS = 400
SIZE = 64


def durable_set(cluster: EtcdCluster) -> list[Figure]:
    domain = Domain(open_store(parse_store_spec(cluster.url("bench-set"))), limits=BIG)
    try:
        for i in range(100):  # a store with something in it
            domain.variables.set_variable(VENDOR, f"Fill{i:03d}", 7, os.urandom(SIZE))
        flip = [c.set_variable(VENDOR, "Durable", 7, os.urandom(SIZE)) for _ in range(2)]
        # the floor: what etcd itself costs for a value of this size, through the same
        # client library, on a connection of its own
        floor_value = encode_variable(var_key(VENDOR, "Durable"),
                                      Variable(VENDOR, "Durable", 7, os.urandom(SIZE)))
        etcd = cluster.client()
        for i in range(20):  # warm up both paths (connections, caches)
            domain.dispatcher.dispatch(flip[i % 2])
            etcd.put("/bench/floor", floor_value)
        values, floors = [], []
        for i in range(ROUNDS):
            request = flip[i % 2]
            values += per_call_ns(lambda r=request: domain.dispatcher.dispatch(r), calls=1)
            floors += per_call_ns(lambda: etcd.put("/bench/floor", floor_value), calls=1)
        status = c.return_status(bytes(domain.dispatcher.dispatch(flip[0])))
        assert status == 0, status
    finally:
        domain.close()
    return [Figure("etcd: durable SetVariable (NV), median", median(values) / 1000, "us",
                   median(floors) / 1000, "<= 3x bare etcd put, same size")]


def get_variable(cluster: EtcdCluster, tmp: Path) -> list[Figure]:
    results = {}
    for kind, store in (("etcd", open_store(parse_store_spec(cluster.url("bench-get")))),
                        ("sqlite", SqliteStore(tmp / "get.efivars"))):
        domain = Domain(store, limits=BIG)
        try:
            domain.variables.set_variable(VENDOR, "BenchVar", 7, b"\x01\x02\x03\x04")
            req = c.get_variable(VENDOR, "BenchVar", 16)
            assert c.parse_get_variable(bytes(domain.dispatcher.dispatch(req))).data == \
                b"\x01\x02\x03\x04"
            for _ in range(2000):
                domain.dispatcher.dispatch(req)
            results[kind] = median(per_call_ns(lambda d=domain, r=req: d.dispatcher.dispatch(r),
                                               calls=3000, batch=10))
        finally:
            domain.close()
    return [Figure("etcd: GetVariable (in-process), median", results["etcd"] / 1000, "us",
                   results["sqlite"] / 1000, "the same as the SQLite store (ratio ~1)")]


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("EFIRD_BENCH_DIR", ".")) as tmp, \
            EtcdCluster(3, Path(tmp) / "etcd") as cluster:
        return durable_set(cluster) + get_variable(cluster, Path(tmp))
