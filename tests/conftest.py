"""Shared fixtures: a fresh domain on a real SQLite store, driven through envelopes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.domain import Domain
from efird.efi import guid as g
from efird.efi.status import Status
from efird.store.sqlite import SqliteStore
from efird.variables.limits import Limits
from efird.variables.service import Options

GV = g.EFI_GLOBAL_VARIABLE
VENDOR = g.guid_bytes("11111111-2222-3333-4444-555555555555")
NV_BS_RT, BS_RT, NV_BS, BS = 0x7, 0x6, 0x3, 0x2


class Guest:
    """Talks to a domain only through envelopes, as a guest would."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def raw(self, request: bytes) -> bytes:
        response = bytes(self.domain.dispatcher.dispatch(request))
        assert len(response) == len(request), "response length must equal request length"
        return response

    def set(self, name: str, data: bytes, attrs: int = NV_BS_RT, guid: bytes = VENDOR) -> Status:
        return c.return_status(self.raw(c.set_variable(guid, name, attrs, data)))

    def get(self, name: str, guid: bytes = VENDOR, size: int = 4096) -> c.GetResult:
        return c.parse_get_variable(self.raw(c.get_variable(guid, name, size)))

    def next(self, name: str, guid: bytes = VENDOR,
             size: int = 512) -> tuple[Status, bytes, str, int]:
        return c.parse_get_next(self.raw(c.get_next_variable_name(guid, name, size)))

    def names(self) -> list[tuple[bytes, str]]:
        out, guid, name = [], bytes(16), ""
        while True:
            status, guid, name, _ = self.next(name, guid)
            if status is Status.NOT_FOUND:
                return out
            assert status is Status.SUCCESS, status
            out.append((guid, name))

    def query(self, attrs: int) -> tuple[Status, int, int, int]:
        return c.parse_query(self.raw(c.query_variable_info(attrs)))

    def event(self, guid: bytes) -> None:
        self.raw(c.envelope(guid, b""))

    def exit_boot_services(self) -> None:
        self.event(g.EVENT_EXIT_BOOT_SERVICES)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "vm.efivars"


def open_domain(path: Path, limits: Limits | None = None, **options: bool) -> Domain:
    return Domain(SqliteStore(path), limits=limits, options=Options(**options))


@pytest.fixture
def domain(store_path: Path) -> Iterator[Domain]:
    d = open_domain(store_path)
    yield d
    d.close()


@pytest.fixture
def guest(domain: Domain) -> Guest:
    return Guest(domain)


def reopen(domain: Domain, path: Path, **kw: object) -> Domain:
    """Close and reopen the store: what a daemon restart (a platform reset) does."""
    domain.close()
    return open_domain(path, **kw)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    from efird import log

    log.configure("warning", json=False)
