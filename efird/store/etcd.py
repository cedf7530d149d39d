"""The fleet store: one domain's non-volatile variables in etcd, with exactly one writer.

`--store etcd://HOST:PORT[,HOST:PORT...]/PREFIX/DOMAIN` (efird/store/open.py). A domain can
then be served from any host that reaches the cluster, and migration or failover is an
ownership handoff instead of a copy. docs/etcd.md is the operator's side of this.

Keys, all under `/PREFIX/DOMAIN/`:

    format                      {"format": "efird-etcd-store", "version": 1}: written when
                                the store is created; a prefix holding keys without it is
                                not an efird store and is refused, never written to
    owner                       JSON naming the owning process (id, host, pid, control
                                socket, a write sequence number), attached to its lease
    var/<GUID hex>/<UCS-2 name hex>   one variable per key
    meta/<name>                 one metadata record per key (Secure Boot mode, clock)

A variable's value is versioned and checksummed: `EFV1`, attributes, GUID, timestamp,
the three lengths, the UCS-2 name, the data, the signer, then a BLAKE2b-128 over the
relative key and everything before it (the row checksum of the SQLite store, bound to
the key as well). A metadata value is `EFM1`, a length, the value and the same checksum.
Loading reads the whole prefix with one range request, which etcd answers at one
revision, and verifies every key and value before anything is served: a damaged value,
a value under the wrong key, a truncated encoding or an unknown key is a
StoreCorruptError naming the key, and the daemon does not start.

Writes. `commit` is one etcd transaction:

    compare  owner.create_revision == ours      the key is the one we created,
             owner.lease == our lease           still attached to our lease,
             owner.mod_revision == last known   and nothing landed since our last write
    success  the batch's puts and deletes, and `owner` again with seq + 1 (same lease)
    failure  read `owner`

Its success response comes after etcd committed it through raft, i.e. on a quorum, and
only then does SetVariable return SUCCESS to the guest. When the compare fails, the
`owner` read back says why: another creation, another lease or no key at all means this
process lost the domain (StoreFencedError, an `ownership-lost` event, and never a
write again until it takes the domain anew); our own create revision and lease with our
current sequence number means an earlier attempt of this very write landed (its answer
was lost: a member died mid-request), so the write is done. An attempt that gets no
answer (a member down, no leader, no quorum, a timeout) is retried on the next endpoint
until `timeout`; then the write fails with StoreIOError (DEVICE_ERROR for the guest),
nothing changes in memory, and reads go on from memory. Such a write may still land
later (raft may commit a proposal whose answer never came): because every write
compares the owner's mod revision, at most one of them can, and only before our next
write; the next write's compare then fails with that write's sequence number, and the
next transaction first puts back what the guest was told is there (the committed value
of each key that write touched) together with the new batch. So etcd always ends up
holding exactly what the guest was acknowledged.

Ownership. `take_ownership` grants a lease (`lease_ttl`) and creates `owner` with it in
a transaction that requires the key to be absent; a background thread renews the lease
every third of its TTL. If the renewal fails for a whole TTL, or etcd says the lease is
gone, the process considers itself fenced (writes refused, `ownership-lost`); the compare
in every transaction makes this safe even when the process does not notice in time (a
paused process, a partition). `release_ownership` revokes the lease, which deletes
`owner`, so another process can take the domain at once; it loads the variables from
etcd and no copy is ever made. A dead owner's lease expires after its TTL.

Why etcd3gw: `VariableStore` is synchronous and the daemon already runs every durable
write in a worker thread (efird/device.py: `may_block` requests go to trio.to_thread, as
do the control operations that write, efird/control/domain_handler.py), so a blocking
client never runs on the trio loop; the lease renewal has a thread of its own. etcd3gw is
a maintained OpenStack library for etcd's v3 JSON gateway on plain `requests`, with no
gRPC runtime to load into a sandboxed daemon (aetcd would bring grpcio and asyncio
into a trio process). It has no notion of several endpoints, so `_Cluster` fails over
between one client per endpoint. Transactions go through `Etcd3Client.transaction`, whose
compare list is passed as is to the gateway, so the CREATE, MOD and LEASE targets work
(etcd >= 3.3); leases through `lease()`, `Lease.refresh()` and `Lease.revoke()`. Ranges
go through the client's `post` helper (same session) on the gateway's /kv/range
endpoint, because `Etcd3Client.get` drops the response header, whose revision is the one
the whole snapshot was read at; the cluster's version through `status()`.

Sandbox: the daemon resolves every endpoint once here, before it locks itself down
(efird/sandbox.py then allows TCP sockets and connect, nothing more); its requests
session ignores the environment (proxies, .netrc, CA bundles), so nothing is opened on
the serving path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

from efird.efi.ucs2 import decode_units
from efird.log import get_logger
from efird.store.base import (
    StoreCorruptError,
    StoreError,
    StoreFencedError,
    StoreIOError,
    StoreLockedError,
    VariableStore,
)
from efird.store.open import DEFAULT_LEASE_TTL, DEFAULT_TIMEOUT, StoreSpec
from efird.variables.model import Key, Variable

log = get_logger("efird.store.etcd")

FORMAT = "efird-etcd-store"
FORMAT_VERSION = 1
MIN_ETCD = (3, 4)
VAR_MAGIC = b"EFV1"
META_MAGIC = b"EFM1"
_VAR = struct.Struct("<4sI16s16sIII")  # magic, attributes, guid, timestamp, 3 lengths
_META = struct.Struct("<4sI")  # magic, length
_DIGEST = 16
_META_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
#: Pause between two rounds over the endpoints when none answered.
_ROUND_PAUSE = 0.05

T = TypeVar("T")

# Ownership states.
STANDBY, OWNER, RELEASED, FENCED = "standby", "owner", "released", "fenced"


# -- encoding ------------------------------------------------------------------------------

def _checksum(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST, person=b"efird-etcd-v1")
    for p in parts:
        h.update(struct.pack("<Q", len(p)))
        h.update(p)
    return h.digest()


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-16-le", errors="surrogatepass")


def var_key(guid: bytes, name: str) -> str:
    """The key of a variable, relative to the domain's prefix."""
    return f"var/{guid.hex()}/{_name_bytes(name).hex()}"


def meta_key(name: str) -> str:
    if not _META_NAME.fullmatch(name):
        raise StoreError(f"metadata name {name!r} cannot be an etcd key")
    return f"meta/{name}"


def encode_variable(rel: str, v: Variable) -> bytes:
    if len(v.guid) != 16 or len(v.timestamp) != 16:
        raise StoreError(f"variable {v.name!r}: malformed GUID or timestamp")
    name = _name_bytes(v.name)
    body = _VAR.pack(VAR_MAGIC, v.attributes, v.guid, v.timestamp, len(name), len(v.data),
                     len(v.signer)) + name + v.data + v.signer
    return body + _checksum(rel.encode(), body)


def decode_variable(rel: str, raw: bytes) -> Variable:
    """ValueError saying what is wrong with the value (the caller names the key)."""
    if len(raw) < _VAR.size + _DIGEST:
        raise ValueError(f"is truncated ({len(raw)} bytes)")
    if raw[:4] != VAR_MAGIC:
        raise ValueError(f"is not an efird variable (it starts with {raw[:4]!r}, "
                         f"not {VAR_MAGIC!r})")
    body, digest = raw[:-_DIGEST], raw[-_DIGEST:]
    if _checksum(rel.encode(), body) != digest:
        raise ValueError("fails its checksum")
    _, attributes, guid, timestamp, name_len, data_len, signer_len = _VAR.unpack_from(body)
    if _VAR.size + name_len + data_len + signer_len != len(body):
        raise ValueError("has lengths that do not add up")
    at = _VAR.size
    name = decode_units(body[at : at + name_len])
    at += name_len
    data = body[at : at + data_len]
    signer = body[at + data_len :]
    if not name or name_len % 2:
        raise ValueError("has an empty or odd-sized name")
    if var_key(guid, name) != rel:
        raise ValueError(f"holds variable {name!r} of another key")
    return Variable(guid, name, attributes, data, timestamp, signer)


def encode_meta(rel: str, value: bytes) -> bytes:
    body = _META.pack(META_MAGIC, len(value)) + value
    return body + _checksum(rel.encode(), body)


def decode_meta(rel: str, raw: bytes) -> bytes:
    if len(raw) < _META.size + _DIGEST or raw[:4] != META_MAGIC:
        raise ValueError("is not an efird metadata record")
    body, digest = raw[:-_DIGEST], raw[-_DIGEST:]
    if _checksum(rel.encode(), body) != digest:
        raise ValueError("fails its checksum")
    (_, length) = _META.unpack_from(body)
    if _META.size + length != len(body):
        raise ValueError("has a length that does not add up")
    return body[_META.size :]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Holder:
    """Who owns a domain, as its `owner` key says."""

    id: str
    host: str
    pid: int
    role: str
    control: str | None
    since: str
    seq: int

    @classmethod
    def parse(cls, raw: bytes) -> Holder:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        holder = cls(str(obj["id"]), str(obj["host"]), int(obj["pid"]),
                     str(obj.get("role", "?")), obj.get("control"), str(obj.get("since", "?")),
                     int(obj["seq"]))
        if holder.control is not None and not isinstance(holder.control, str):
            raise ValueError("control must be a string")
        return holder

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "host": self.host, "pid": self.pid,
                           "role": self.role, "control": self.control, "since": self.since,
                           "seq": self.seq}, sort_keys=True).encode()

    def describe(self) -> str:
        return f"efird pid {self.pid} on host {self.host} ({self.role}, since {self.since})"

    def as_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "role": self.role,
                "control": self.control, "since": self.since}


@dataclass(frozen=True)
class _OwnerKey:
    holder: Holder
    create_revision: int
    mod_revision: int
    lease: int


# -- talking to the cluster ----------------------------------------------------------------

class _NoAnswer(Exception):
    """No endpoint answered in time: whether a write was applied is unknown."""


class _Refused(Exception):
    """The cluster answered and refused the request: nothing was applied."""


def _etcd_message(exc: etcd_exc.Etcd3Exception) -> str:
    text = exc.detail_text or str(exc) or type(exc).__name__
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return str(obj.get("message") or obj.get("error") or text)
    except ValueError:
        pass
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found.group(1).strip().lower()
    if isinstance(exc, etcd_exc.ConnectionTimeoutError):
        return "no answer in time"
    return text[:200]


class _Cluster:
    """One etcd3gw client per endpoint, on one requests session; a call goes to the
    endpoint that answered last and fails over to the others until its deadline."""

    def __init__(self, endpoints: Sequence[tuple[str, str, int]], attempt_timeout: float
                 ) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies, .netrc or CA bundles from the env
        self.labels = [label for label, _, _ in endpoints]
        self.clients = [etcd3gw.client(host=host, port=port, api_path="/v3/",
                                       session=self.session)
                        for _, host, port in endpoints]
        self.attempt_timeout = attempt_timeout
        self.current = 0

    def call(self, op: Callable[[etcd3gw.Etcd3Client], T], deadline: float) -> T:
        errors: dict[str, str] = {}
        count = len(self.clients)
        while True:
            for step in range(count):
                index = (self.current + step) % count
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _NoAnswer("; ".join(f"{k}: {v}" for k, v in errors.items())
                                    or "no time left")
                client = self.clients[index]
                client.timeout = max(0.05, min(remaining, self.attempt_timeout))
                try:
                    result = op(client)
                except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                        etcd_exc.InternalServerError) as exc:
                    errors[self.labels[index]] = _etcd_message(exc)
                    continue
                except etcd_exc.Etcd3Exception as exc:
                    raise _Refused(f"{self.labels[index]}: {_etcd_message(exc)}") from None
                except (ValueError, KeyError, TypeError) as exc:
                    errors[self.labels[index]] = f"not an etcd gateway answer ({exc})"
                    continue
                self.current = index
                return result
            time.sleep(max(0.0, min(_ROUND_PAUSE, deadline - time.monotonic())))

    def close(self) -> None:
        self.session.close()


def _resolve(spec: StoreSpec) -> list[tuple[str, str, int]]:
    """(label, address, port) per endpoint: names resolved now, once."""
    out = []
    for host, port in spec.endpoints:
        label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise StoreIOError(f"etcd store {spec}: cannot resolve endpoint {label}: "
                               f"{exc.strerror or exc}") from None
        out.append((label, str(infos[0][4][0]), port))
    return out


# -- the store -----------------------------------------------------------------------------

class EtcdStore(VariableStore):
    """One domain's non-volatile variables under `/PREFIX/DOMAIN/` in an etcd cluster."""

    def __init__(self, spec: StoreSpec, *, lease_ttl: int = DEFAULT_LEASE_TTL,
                 timeout: float = DEFAULT_TIMEOUT, role: str = "serve") -> None:
        if not spec.is_etcd:
            raise ValueError("not an etcd store URL")
        if lease_ttl < 1 or timeout <= 0:
            raise ValueError("the lease TTL and the timeout must be positive")
        self.spec = spec
        self.description = spec.text
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.role = role
        self._base = spec.base_key
        self._owner_key = _b64((self._base + "owner").encode())
        self._id = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._control: str | None = None
        self._log = log.bind(store=spec.text, domain=spec.domain)
        # Told about ownership changes (the daemon turns them into toolstack events).
        self.on_event: Callable[[str, dict[str, object]], None] | None = None
        self._write_lock = threading.RLock()  # one write, take or release at a time
        self._state_lock = threading.Lock()  # the ownership state (the renewal thread)
        self._state = STANDBY
        self._lost_reason = ""
        self._lease = 0
        self._create_revision = 0
        self._owner_mod = 0
        self._seq = 0  # the sequence number of the last write sent
        self._settled_seq = 0  # ... and of the last one known to have landed
        self._since = ""
        self._uncertain: dict[int, frozenset[str]] = {}  # unanswered writes: seq -> keys
        self._renewal: _Renewal | None = None
        # The committed state: relative key -> value, as verified at load and then kept
        # up to date by every write that landed. Reads (load, get_meta) come from here.
        self._raw: dict[str, bytes] = {}
        self._exists = False
        self._revision = 0
        self._owner_seen: Holder | None = None
        resolved = _resolve(spec)
        # One attempt waits at most this long before the next endpoint is tried: a request
        # a follower forwarded to a leader that died is never answered (etcd gives up on
        # it only after its own request timeout, several seconds); a retry is safe.
        attempt = min(max(0.5, timeout / 4), 1.5)
        self._cluster = _Cluster(resolved, attempt)
        self._renewal_cluster = _Cluster(resolved, attempt)
        try:
            self._check_version()
            self.refresh()
        except BaseException:
            self._cluster.close()
            self._renewal_cluster.close()
            raise

    # -- helpers -------------------------------------------------------------------------
    def _call(self, op: Callable[[etcd3gw.Etcd3Client], T], what: str,
              timeout: float | None = None) -> T:
        """A read or an idempotent request: StoreIOError when it cannot be done."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            return self._cluster.call(op, deadline)
        except _NoAnswer as exc:
            raise StoreIOError(f"etcd store {self.spec}: cannot {what}: no etcd endpoint "
                               f"answered within {self.timeout:g} s ({exc})") from None
        except _Refused as exc:
            raise StoreIOError(f"etcd store {self.spec}: cannot {what}: etcd refused: {exc}"
                               ) from None

    def _check_version(self) -> None:
        status = self._call(lambda c: c.status(), "reach the cluster")
        version = str(status.get("version", "0"))
        try:
            found = tuple(int(part) for part in version.split(".")[:2])
        except ValueError:
            found = (0, 0)
        if found < MIN_ETCD:
            raise StoreIOError(f"etcd store {self.spec}: etcd {version} is too old; efird "
                               "needs etcd >= 3.4")

    def _emit(self, kind: str, **data: object) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)

    def _key(self, rel: str) -> str:
        return _b64((self._base + rel).encode())

    def _corrupt(self, key: str, problem: str) -> StoreCorruptError:
        return StoreCorruptError(f"etcd store {self.spec}: key {key} {problem}")

    # -- reading -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the whole domain at one revision and verify it; only then replace what
        this process serves. StoreCorruptError naming the key, StoreIOError without a
        quorum: then nothing changes."""
        base = self._base.encode()
        with self._write_lock:
            answer = self._call(lambda c: c.post(c.get_url("/kv/range"), json={
                "key": _b64(base), "range_end": _b64(_prefix_end(base))}),
                "read the domain")
            raw, exists, owner = self._verify(answer)
            lost = ""
            with self._state_lock:
                if self._state == OWNER:
                    if owner is None or owner.create_revision != self._create_revision \
                            or owner.lease != self._lease:
                        lost = self._fence_locked("the ownership key changed hands")
                    else:
                        self._owner_mod = owner.mod_revision
                        if owner.holder.seq != self._settled_seq:
                            # an unanswered write landed: it is in what was just read, and
                            # no other can land any more (they compared an older revision)
                            self._uncertain.clear()
                            self._settled_seq = owner.holder.seq
                self._raw, self._exists = raw, exists
                self._owner_seen = owner.holder if owner is not None else None
                self._revision = int(answer.get("header", {}).get("revision", 0))
        if lost:
            self._announce_loss(lost)

    def _verify(self, answer: Mapping[str, Any]
                ) -> tuple[dict[str, bytes], bool, _OwnerKey | None]:
        raw: dict[str, bytes] = {}
        owner: _OwnerKey | None = None
        exists = False
        foreign: list[str] = []
        for kv in answer.get("kvs", []):
            key_bytes = base64.b64decode(kv["key"])
            key = key_bytes.decode("utf-8", errors="backslashreplace")
            rel = key[len(self._base):]
            value = base64.b64decode(kv.get("value", ""))
            if rel == "owner":
                try:
                    owner = _OwnerKey(Holder.parse(value), int(kv.get("create_revision", 0)),
                                      int(kv.get("mod_revision", 0)), int(kv.get("lease", 0)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise self._corrupt(key, f"(the ownership key) is unreadable: {exc}"
                                        ) from None
            elif rel == "format":
                try:
                    marker = json.loads(value)
                    ok = marker.get("format") == FORMAT
                    version = marker.get("version")
                except (ValueError, AttributeError):
                    ok, version = False, None
                if not ok:
                    raise self._corrupt(key, "is not efird's format marker: the prefix is "
                                             "not an efird store")
                if version != FORMAT_VERSION:
                    raise self._corrupt(key, f"says format version {version!r}; this efird "
                                             f"reads version {FORMAT_VERSION}")
                exists = True
            elif rel.startswith("var/"):
                parts = rel.split("/")
                if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{32}", parts[1]) \
                        or not _HEX.fullmatch(parts[2]):
                    foreign.append(key)
                    continue
                try:
                    decode_variable(rel, value)
                except ValueError as exc:
                    raise self._corrupt(key, str(exc)) from None
                raw[rel] = value
            elif rel.startswith("meta/") and _META_NAME.fullmatch(rel[5:]):
                try:
                    decode_meta(rel, value)
                except ValueError as exc:
                    raise self._corrupt(key, str(exc)) from None
                raw[rel] = value
            else:
                foreign.append(key)
        if (raw or foreign) and not exists:
            first = foreign[0] if foreign else self._base + next(iter(raw))
            raise StoreCorruptError(
                f"etcd store {self.spec}: {self._base} holds keys but not the "
                f"{self._base}format marker every efird store has (first: {first}): "
                "refusing a prefix that is not an efird store; check PREFIX and DOMAIN")
        if foreign:
            raise self._corrupt(foreign[0], "is not an efird key: refusing to serve a store "
                                            "with unknown content under its prefix")
        return raw, exists, owner

    @property
    def exists(self) -> bool:
        """Whether the domain has been created (its format marker is there)."""
        return self._exists

    def load(self) -> list[Variable]:
        return [decode_variable(rel, value) for rel, value in sorted(self._raw.items())
                if rel.startswith("var/")]

    def get_meta(self, key: str) -> bytes | None:
        rel = meta_key(key)
        value = self._raw.get(rel)
        return None if value is None else decode_meta(rel, value)

    # -- writing -------------------------------------------------------------------------
    def commit(self, puts: Sequence[Variable] = (), deletes: Sequence[Key] = (),
               meta: Mapping[str, bytes] | None = None) -> None:
        ops: dict[str, bytes | None] = {}
        for guid, name in deletes:
            ops[var_key(guid, name)] = None
        for v in puts:
            rel = var_key(v.guid, v.name)
            ops[rel] = encode_variable(rel, v)
        for name, value in (meta or {}).items():
            rel = meta_key(name)
            ops[rel] = encode_meta(rel, bytes(value))
        if not ops:
            return
        with self._write_lock:
            self._require_owner()
            self._write(ops)

    def _require_owner(self) -> None:
        with self._state_lock:
            state, reason = self._state, self._lost_reason
        if state == OWNER:
            return
        why = {STANDBY: "is a standby: it has not taken the domain's ownership",
               RELEASED: "handed the domain's ownership over",
               FENCED: f"lost the domain's ownership ({reason})"}[state]
        raise StoreFencedError(f"etcd store {self.spec}: this efird {why}; writes are "
                               "refused until it takes the ownership again")

    def _txn(self, ops: Mapping[str, bytes | None], seq: int) -> dict[str, Any]:
        owner_value = self._holder(seq).encode()
        success: list[dict[str, Any]] = []
        for rel, value in ops.items():
            if value is None:
                success.append({"request_delete_range": {"key": self._key(rel)}})
            else:
                success.append({"request_put": {"key": self._key(rel), "value": _b64(value)}})
        success.append({"request_put": {"key": self._owner_key, "value": _b64(owner_value),
                                        "lease": str(self._lease)}})
        return {
            "compare": [
                {"key": self._owner_key, "target": "CREATE", "result": "EQUAL",
                 "create_revision": str(self._create_revision)},
                {"key": self._owner_key, "target": "LEASE", "result": "EQUAL",
                 "lease": str(self._lease)},
                {"key": self._owner_key, "target": "MOD", "result": "EQUAL",
                 "mod_revision": str(self._owner_mod)},
            ],
            "success": success,
            "failure": [{"request_range": {"key": self._owner_key}}],
        }

    def _holder(self, seq: int) -> Holder:
        return Holder(self._id, self._host, os.getpid(), self.role, self._control,
                      self._since, seq)

    def _write(self, ops: dict[str, bytes | None]) -> None:
        """One transaction fenced by the ownership key (the module docstring)."""
        self._seq += 1
        seq = self._seq
        deadline = time.monotonic() + self.timeout
        while True:
            txn = self._txn(ops, seq)
            try:
                answer = self._send(txn, deadline)
            except _NoAnswer as exc:
                self._uncertain[seq] = frozenset(ops)
                raise StoreIOError(f"etcd store {self.spec}: the write was not confirmed "
                                   f"within {self.timeout:g} s, so it is not acknowledged "
                                   f"(no etcd quorum reached: {exc})") from None
            except _Refused as exc:
                raise StoreIOError(f"etcd store {self.spec}: etcd refused the write: {exc}"
                                   + _hint(str(exc), len(ops) + 1)) from None
            if answer.get("succeeded"):
                self._settle(int(answer["header"]["revision"]), seq, ops)
                return
            owner = self._owner_from(answer)
            if owner is None or owner.create_revision != self._create_revision \
                    or owner.lease != self._lease:
                holder = f": now {owner.holder.describe()}" if owner is not None else ""
                reason = ("the ownership key is gone (the lease expired or was revoked)"
                          if owner is None else "another process owns the domain") + holder
                with self._state_lock:
                    lost = self._fence_locked(reason)
                self._announce_loss(lost)
                raise StoreFencedError(f"etcd store {self.spec}: write refused: this efird "
                                       f"lost the domain's ownership ({reason})")
            if owner.holder.seq == seq:  # an earlier attempt of this write landed
                self._settle(owner.mod_revision, seq, ops)
                return
            landed = self._uncertain.get(owner.holder.seq)
            if landed is None or owner.holder.id != self._id:
                with self._state_lock:
                    lost = self._fence_locked("the ownership key was changed by someone else")
                self._announce_loss(lost)
                raise StoreFencedError(f"etcd store {self.spec}: write refused: the "
                                       "ownership key was changed by another writer")
            # A write the guest was told failed has landed after all: put back what the
            # guest was told is there, in this same transaction, then retry it.
            self._log.warning("an unacknowledged write landed late; undoing it",
                              seq=owner.holder.seq, keys=len(landed))
            self._uncertain.clear()  # the others compared an older revision: dead
            self._owner_mod = owner.mod_revision
            self._settled_seq = owner.holder.seq
            undo: dict[str, bytes | None] = {rel: self._raw.get(rel) for rel in landed}
            undo.update(ops)
            ops = undo

    def _send(self, txn: dict[str, Any], deadline: float) -> Mapping[str, Any]:
        return self._cluster.call(lambda c: c.transaction(txn), deadline)

    def _owner_from(self, answer: Mapping[str, Any]) -> _OwnerKey | None:
        responses = answer.get("responses") or []
        kvs = responses[0].get("response_range", {}).get("kvs", []) if responses else []
        if not kvs:
            return None
        kv = kvs[0]
        try:
            holder = Holder.parse(base64.b64decode(kv.get("value", "")))
        except (ValueError, KeyError, TypeError):
            holder = Holder("?", "?", 0, "?", None, "?", -1)
        return _OwnerKey(holder, int(kv.get("create_revision", 0)),
                         int(kv.get("mod_revision", 0)), int(kv.get("lease", 0)))

    def _settle(self, revision: int, seq: int, ops: Mapping[str, bytes | None]) -> None:
        self._owner_mod = revision
        self._settled_seq = seq
        self._revision = revision
        self._uncertain.clear()  # they all compared an older revision: none can land now
        for rel, value in ops.items():
            if value is None:
                self._raw.pop(rel, None)
            else:
                self._raw[rel] = value

    def advertise(self, control: str | None) -> None:
        """Record the control socket in the ownership key, for `efird vars` on this host."""
        self._control = os.path.abspath(control) if control is not None else None
        with self._write_lock:
            with self._state_lock:
                if self._state != OWNER:
                    return
            try:
                self._write({})
            except StoreError as exc:
                self._log.warning("cannot advertise the control socket", error=str(exc))

    def sync(self) -> None:
        """Every write is committed on a quorum when commit returns: nothing to flush."""

    # -- ownership -------------------------------------------------------------------------
    def take_ownership(self, wait: float = 0.0, poll: float = 0.2) -> None:
        """Own the domain, waiting up to `wait` seconds for its owner to let go.

        StoreLockedError (naming the owner) if it is still owned then. Afterwards the
        domain has been read anew (refresh): load() is what the previous owner left.
        """
        deadline = time.monotonic() + wait
        while True:
            holder = self.try_take()
            if holder is None:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                control = holder.control if holder.host == self._host else None
                raise StoreLockedError(
                    f"etcd store {self.spec}: domain {self.spec.domain} is owned by "
                    f"{holder.describe()}: stop it, hand the domain over (release-ownership "
                    "on it), or wait for its lease to expire", f"{holder.pid} on host "
                    f"{holder.host}", control)
            time.sleep(min(poll, remaining))

    def try_take(self) -> Holder | None:
        """Take the domain if nobody owns it: None once owned, else the current owner."""
        with self._write_lock:
            with self._state_lock:
                if self._state == OWNER:
                    return None
            current = self._read_owner()
            if current is not None:
                if current.holder.id != self._id:
                    return current.holder
                # our own earlier ownership, still alive (presumed lost, or released and
                # the revoke went unanswered): end it, then take the domain anew
                self._revoke(current.lease)
            lease = self._call(lambda c: c.lease(self.lease_ttl), "grant a lease").id
            since = _now()
            holder = Holder(self._id, self._host, os.getpid(), self.role, self._control, since, 0)
            txn = {"compare": [{"key": self._owner_key, "target": "CREATE", "result": "EQUAL",
                                "create_revision": "0"}],
                   "success": [{"request_put": {"key": self._owner_key,
                                                "value": _b64(holder.encode()),
                                                "lease": str(lease)}}],
                   "failure": [{"request_range": {"key": self._owner_key}}]}
            try:
                answer = self._call(lambda c: c.transaction(txn), "take the domain's ownership")
            except StoreError:
                self._revoke(lease)  # had it landed, the key goes with the lease
                raise
            if not answer.get("succeeded"):
                self._revoke(lease)
                owner = self._owner_from(answer)
                return owner.holder if owner is not None else self._read_owner_holder()
            revision = int(answer["header"]["revision"])
            with self._state_lock:
                self._state, self._lost_reason = OWNER, ""
                self._lease, self._create_revision, self._owner_mod = lease, revision, revision
                self._seq = self._settled_seq = 0
                self._since = since
                self._uncertain.clear()
            try:
                self.refresh()
                if not self._exists:
                    marker = json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                                         "created": since}).encode()
                    self._write({"format": marker})
                    self._exists = True
            except BaseException:
                self.release_ownership(announce=False)
                raise
            self._renewal = _Renewal(self, lease)
            self._renewal.start()
        self._log.info("etcd ownership taken", lease=f"{lease:x}", revision=revision,
                       variables=sum(1 for rel in self._raw if rel.startswith("var/")))
        self._emit("ownership-taken", revision=revision)
        return None

    def _read_owner(self) -> _OwnerKey | None:
        answer = self._call(lambda c: c.post(c.get_url("/kv/range"),
                                             json={"key": self._owner_key}),
                            "read the ownership key")
        kvs = answer.get("kvs", [])
        if not kvs:
            return None
        kv = kvs[0]
        try:
            holder = Holder.parse(base64.b64decode(kv.get("value", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise self._corrupt(self._base + "owner", f"(the ownership key) is unreadable: "
                                                      f"{exc}") from None
        return _OwnerKey(holder, int(kv.get("create_revision", 0)),
                         int(kv.get("mod_revision", 0)), int(kv.get("lease", 0)))

    def _read_owner_holder(self) -> Holder | None:
        owner = self._read_owner()
        return owner.holder if owner is not None else None

    def owner(self) -> Holder | None:
        """The domain's owner as etcd says now (a request), or None."""
        return self._read_owner_holder()

    def _revoke(self, lease: int, timeout: float | None = None) -> bool:
        if not lease:
            return True
        try:
            self._call(lambda c: etcd3gw.Lease(lease, c).revoke(), "revoke the lease",
                       timeout)
        except StoreIOError as exc:
            if "lease not found" in str(exc):
                return True
            self._log.warning("cannot revoke the lease; it expires within its TTL",
                              lease=f"{lease:x}", error=str(exc))
            return False
        return True

    def release_ownership(self, *, announce: bool = True, timeout: float | None = None
                          ) -> bool:
        """Hand the domain over: stop writing, stop renewing and revoke the lease (which
        deletes the ownership key). True when etcd confirmed the revoke; False when it
        could not be reached, and then the lease expires within its TTL. No write is
        accepted from here on either way."""
        with self._write_lock:
            with self._state_lock:
                if self._state != OWNER:
                    return True
                self._state = RELEASED
                lease = self._lease
            self._stop_renewal()
            revoked = self._revoke(lease, timeout)
        self._log.info("etcd ownership released", revoked=revoked)
        if announce:
            self._emit("ownership-released", revoked=revoked)
        return revoked

    def _stop_renewal(self) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.stop.set()

    def _fence_locked(self, reason: str) -> str:
        """(state lock held) Become fenced; the reason, or "" if it was not the owner."""
        if self._state != OWNER:
            return ""
        self._state, self._lost_reason = FENCED, reason
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.stop.set()
        return reason

    def _announce_loss(self, reason: str) -> None:
        if not reason:
            return
        self._log.error("etcd ownership lost: writes are refused", reason=reason)
        self._emit("ownership-lost", reason=reason)

    def _lease_lost(self, lease: int, reason: str) -> None:
        """The renewal thread's verdict."""
        with self._state_lock:
            lost = self._fence_locked(reason) if self._lease == lease else ""
        self._announce_loss(lost)

    def ownership(self) -> dict[str, Any]:
        """For `efird ctl status`: this process's state and the owner it last saw."""
        with self._state_lock:
            state, reason = self._state, self._lost_reason
        out: dict[str, Any] = {"state": state, "lease_ttl_s": self.lease_ttl,
                               "endpoints": self._cluster.labels}
        if state == OWNER:
            out["lease"] = f"{self._lease:x}"
        if state == FENCED:
            out["reason"] = reason
        seen = self._owner_seen
        if seen is not None and state != OWNER:
            out["owner_seen"] = seen.as_json()
        return out

    @property
    def owner_seen(self) -> Holder | None:
        """The owner as of the last read of the domain (refresh), or None."""
        return self._owner_seen

    @property
    def local_host(self) -> str:
        return self._host

    @property
    def owned(self) -> bool:
        with self._state_lock:
            return self._state == OWNER

    def close(self) -> None:
        """Give the domain up (revoking the lease lets the next owner in at once)."""
        try:
            self.release_ownership(announce=False, timeout=min(self.timeout, 2.0))
        finally:
            self._cluster.close()
            self._renewal_cluster.close()


def _hint(message: str, operations: int) -> str:
    if "too many operations" in message:
        return (f" (this write is one transaction of {operations} operations: raise etcd's "
                "--max-txn-ops)")
    if "too large" in message:
        return " (raise etcd's --max-request-bytes)"
    return ""


class _Renewal(threading.Thread):
    """Keeps the lease alive: a refresh every third of its TTL, on its own session.

    When no refresh has succeeded for a whole TTL, the lease may have expired and another
    process may own the domain: the store then fences itself."""

    def __init__(self, store: EtcdStore, lease: int) -> None:
        super().__init__(name="efird-etcd-lease", daemon=True)
        self.store = store
        self.lease = lease
        self.stop = threading.Event()

    def run(self) -> None:
        ttl = self.store.lease_ttl
        period = max(0.2, ttl / 3)
        last_ok = time.monotonic()
        pause = period
        while not self.stop.wait(pause):
            sent = time.monotonic()
            try:
                left = self.store._renewal_cluster.call(
                    lambda c: etcd3gw.Lease(self.lease, c).refresh(), sent + period)
            except (_NoAnswer, _Refused) as exc:
                if time.monotonic() - last_ok >= ttl:
                    self.store._lease_lost(self.lease, f"the lease could not be renewed for "
                                                       f"{ttl} s ({exc}): presumed expired")
                    return
                pause = min(period, 0.5)
                continue
            if left <= 0:
                self.store._lease_lost(self.lease, "the lease expired")
                return
            last_ok, pause = sent, period

