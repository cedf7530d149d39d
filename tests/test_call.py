"""`efird call` end to end (the real CLI in a subprocess), and the binary test vectors in
protocols/vectors/ replayed through it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import Status

from .conftest import VENDOR

VECTORS = sorted((Path(__file__).parent.parent / "protocols" / "vectors").glob("*.vec"))


def efird_call(store: Path, requests: list[str], *extra: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "efird.cli.main", "call", "--store", str(store), *extra],
        input="\n".join(requests) + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_vectors_exist() -> None:
    assert len(VECTORS) >= 9


@pytest.mark.parametrize("vector", VECTORS, ids=lambda p: p.stem)
def test_vector_replays_exactly(vector: Path, tmp_path: Path) -> None:
    lines = vector.read_text().splitlines()
    requests = [ln[2:] for ln in lines if ln.startswith("> ")]
    expected = [ln[2:] for ln in lines if ln.startswith("< ")]
    assert len(requests) == len(expected) > 0
    assert efird_call(tmp_path / "vm.efivars", requests) == expected


def test_state_persists_and_restart_is_a_platform_reset(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    first = efird_call(store, [
        c.set_variable(VENDOR, "Nv", 7, b"kept").hex(),
        c.set_variable(VENDOR, "Vol", 6, b"gone").hex(),
        c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b"").hex(),
        c.set_variable(VENDOR, "Vol", 6, b"x").hex(),  # volatile is read-only at runtime
    ])
    assert c.return_status(bytes.fromhex(first[0])) is Status.SUCCESS
    assert c.return_status(bytes.fromhex(first[3])) is Status.WRITE_PROTECTED
    second = efird_call(store, [
        c.get_variable(VENDOR, "Nv", 16).hex(),
        c.get_variable(VENDOR, "Vol", 16).hex(),
        c.set_variable(VENDOR, "New", 6, b"boot phase again").hex(),
    ])
    assert c.parse_get_variable(bytes.fromhex(second[0])).data == b"kept"
    assert c.parse_get_variable(bytes.fromhex(second[1])).status is Status.NOT_FOUND
    assert c.return_status(bytes.fromhex(second[2])) is Status.SUCCESS


def test_bad_lines_get_err_and_serving_continues(tmp_path: Path) -> None:
    out = efird_call(tmp_path / "s", ["zz-not-hex", "00", c.query_variable_info(7).hex()])
    assert out[0].startswith("ERR ") and out[1].startswith("ERR ")
    assert c.parse_query(bytes.fromhex(out[2]))[0] is Status.SUCCESS


def test_store_in_use_is_a_clear_error(tmp_path: Path) -> None:
    from efird.store.sqlite import SqliteStore

    store = tmp_path / "s"
    held = SqliteStore(store)
    proc = subprocess.run([sys.executable, "-m", "efird.cli.main", "call", "--store", str(store)],
                          input="", capture_output=True, text=True, timeout=60)
    held.close()
    assert proc.returncode != 0
    assert "in use by another efird process" in proc.stderr and str(store) in proc.stderr
