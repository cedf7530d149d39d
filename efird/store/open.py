"""`--store`: a path (the embedded SQLite store) or an etcd URL (the fleet store).

    PATH                                      the embedded store, one SQLite file
    etcd://HOST:PORT[,HOST:PORT...]/PREFIX/DOMAIN   the fleet store (efird/store/etcd.py)

PREFIX is one or more path segments and DOMAIN the last one: the domain's keys live
under `/PREFIX/DOMAIN/`. HOST is an IPv4 address, a bracketed IPv6 address or a name;
names are resolved once, when the store is opened (before `efird serve` locks itself
down, after which it cannot read /etc/hosts or /etc/resolv.conf). The three commands
that take --store (serve, call, vars) parse it here and open it with `open_store`, so a
URL is never mistaken for a relative path and a plain path behaves as it always has.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from efird.store.base import VariableStore

if TYPE_CHECKING:
    from efird.store.etcd import EtcdStore

ETCD_SCHEME = "etcd://"
URL_FORM = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX/DOMAIN"
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")

#: Defaults of the etcd flags (efird serve --etcd-lease-ttl, --etcd-timeout).
DEFAULT_LEASE_TTL = 10
DEFAULT_TIMEOUT = 5.0


class StoreSpecError(ValueError):
    """--store is neither a usable path nor a well-formed etcd URL; says what is wrong."""


@dataclass(frozen=True)
class StoreSpec:
    """A parsed --store. `text` is what the operator wrote."""

    text: str
    kind: Literal["sqlite", "etcd"]
    path: Path | None = None
    endpoints: tuple[tuple[str, int], ...] = field(default=())
    prefix: str = ""
    domain: str = ""

    def __str__(self) -> str:
        return self.text

    @property
    def is_etcd(self) -> bool:
        return self.kind == "etcd"

    @property
    def name(self) -> str:
        """The default domain name: the file's stem, or the URL's DOMAIN."""
        if self.path is not None:
            return self.path.stem
        return self.domain

    @property
    def base_key(self) -> str:
        """The etcd key prefix of the domain, with its trailing slash."""
        return f"/{self.prefix}/{self.domain}/"


def parse_store_spec(text: str) -> StoreSpec:
    """A path, or an etcd URL checked for form (not for reachability)."""
    if not text:
        raise StoreSpecError("empty store: give a path or " + URL_FORM)
    if not text.startswith(ETCD_SCHEME):
        scheme = _SCHEME.match(text)
        if scheme is not None:
            raise StoreSpecError(
                f"{text}: unsupported store URL scheme {scheme.group(0)!r}: give a path "
                f"(the embedded store) or {URL_FORM}")
        return StoreSpec(text, "sqlite", path=Path(text))
    rest = text[len(ETCD_SCHEME):]
    authority, slash, path = rest.partition("/")
    if not slash or not path.strip("/"):
        raise StoreSpecError(f"{text}: no /PREFIX/DOMAIN after the endpoints (the form is "
                             f"{URL_FORM})")
    endpoints = tuple(_endpoint(text, item) for item in authority.split(","))
    if len(set(endpoints)) != len(endpoints):
        raise StoreSpecError(f"{text}: an endpoint is listed twice")
    segments = path.split("/")
    if path.endswith("/"):
        segments = segments[:-1]
    if len(segments) < 2:
        raise StoreSpecError(f"{text}: a PREFIX and a DOMAIN are needed, got only "
                             f"{path.strip('/')!r} (the form is {URL_FORM})")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise StoreSpecError(f"{text}: bad path segment {segment!r}: PREFIX and DOMAIN "
                                 "segments are letters, digits, '_', '-' and '.'")
    return StoreSpec(text, "etcd", endpoints=endpoints, prefix="/".join(segments[:-1]),
                     domain=segments[-1])


def _endpoint(text: str, item: str) -> tuple[str, int]:
    if not item:
        raise StoreSpecError(f"{text}: empty endpoint (the form is {URL_FORM})")
    if item.startswith("["):
        host, close, port_text = item[1:].partition("]")
        if not close or not port_text.startswith(":"):
            raise StoreSpecError(f"{text}: bad endpoint {item!r}: an IPv6 address is "
                                 "written [ADDRESS]:PORT")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise StoreSpecError(f"{text}: bad endpoint {item!r}: {host!r} is not an IPv6 "
                                 "address") from None
    else:
        host, colon, port_text = item.rpartition(":")
        if not colon or not host:
            raise StoreSpecError(f"{text}: bad endpoint {item!r}: give HOST:PORT")
        if not _HOSTNAME.fullmatch(host):
            raise StoreSpecError(f"{text}: bad endpoint {item!r}: {host!r} is not a host "
                                 "name or IPv4 address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise StoreSpecError(f"{text}: bad endpoint {item!r}: the port must be a number "
                             "from 1 to 65535")
    return host, int(port_text)


def store_argument(text: str) -> StoreSpec:
    """argparse `type=` for --store: a usage error (exit 2) naming the problem."""
    try:
        return parse_store_spec(text)
    except StoreSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


Ownership = Literal["take", "standby", "read"]


def open_store(spec: StoreSpec, *, ownership: Ownership = "take", wait: float = 0.0,
               lease_ttl: int = DEFAULT_LEASE_TTL, timeout: float = DEFAULT_TIMEOUT,
               role: str = "serve") -> VariableStore:
    """Open the store `spec` names.

    A path opens the embedded SQLite store (created if missing, locked for this process).
    An etcd URL connects to the cluster and loads the domain at one revision, verified,
    and then: "take" takes the domain's ownership (waiting up to `wait` seconds for
    another owner to let go; StoreLockedError naming it otherwise), "standby" leaves it
    to a later take-ownership, "read" only reads. Errors are StoreError subclasses whose
    message names the endpoints, the key or the owner.
    """
    if spec.kind == "sqlite":
        from efird.store.sqlite import SqliteStore

        assert spec.path is not None
        return SqliteStore(spec.path)
    return open_etcd(spec, ownership=ownership, wait=wait, lease_ttl=lease_ttl,
                     timeout=timeout, role=role)


def open_etcd(spec: StoreSpec, *, ownership: Ownership = "take", wait: float = 0.0,
              lease_ttl: int = DEFAULT_LEASE_TTL, timeout: float = DEFAULT_TIMEOUT,
              role: str = "serve") -> EtcdStore:
    from efird.store.etcd import EtcdStore

    store = EtcdStore(spec, lease_ttl=lease_ttl, timeout=timeout, role=role)
    try:
        if ownership == "take":
            store.take_ownership(wait)
    except BaseException:
        store.close()
        raise
    return store
