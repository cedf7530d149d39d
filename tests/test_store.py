"""The embedded store: durability, crash safety, corruption detection, locking."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from efird.store.base import StoreCorruptError, StoreError, StoreLockedError
from efird.store.sqlite import SqliteStore
from efird.variables.model import Variable

GUID = b"\x01" * 16


def var(name: str, data: bytes, attrs: int = 7) -> Variable:
    return Variable(GUID, name, attrs, data)


def test_round_trip_and_meta(tmp_path: Path) -> None:
    """efird store requirement (an acknowledged SetVariable is kept): committed puts, deletes
    and metadata load back exactly, names with lone surrogates included."""
    s = SqliteStore(tmp_path / "s")
    s.commit(puts=[var("A", b"1"), var("B\udc00", b"2")], meta={"k": b"v"})
    s.commit(deletes=[(GUID, "A")])
    assert {v.name for v in s.load()} == {"B\udc00"}
    assert s.get_meta("k") == b"v" and s.get_meta("missing") is None
    s.close()


def test_a_served_store_refuses_every_other_opener(tmp_path: Path) -> None:
    """efird store requirement: a second process gets a consistent view or a clear lock error;
    here the lock error, naming the serving process's pid."""
    s = SqliteStore(tmp_path / "s")
    s.commit(puts=[var("A", b"1")])
    owner = rf"in use by another efird process \(pid {os.getpid()}\)"
    with pytest.raises(StoreLockedError, match=owner):
        SqliteStore(tmp_path / "s")
    with pytest.raises(StoreLockedError, match="in use by another efird process"):
        SqliteStore(tmp_path / "s", exclusive=False)
    s.close()


def test_idle_store_readers_see_consistent_snapshots(tmp_path: Path) -> None:
    """efird store requirement: a second process gets a consistent view or a clear lock error;
    here a non-exclusive reader sees whole commits and notices newer ones."""
    s = SqliteStore(tmp_path / "s", exclusive=False)
    s.commit(puts=[var("A", b"1")])
    reader = SqliteStore(tmp_path / "s", exclusive=False)
    assert [v.name for v in reader.load()] == ["A"]
    s.commit(puts=[var("B", b"2")])
    assert reader.changed_since_load()
    assert sorted(v.name for v in reader.load()) == ["A", "B"]
    assert not reader.changed_since_load()
    reader.close()
    s.close()


def test_empty_file_is_corrupt_not_empty_store(tmp_path: Path) -> None:
    """efird store requirement: corruption is detected on open with a clear error, never an
    empty store; a 0-byte file is StoreCorruptError, not a fresh store."""
    path = tmp_path / "s"
    path.write_bytes(b"")
    with pytest.raises(StoreCorruptError, match="0 bytes"):
        SqliteStore(path)


def test_garbage_file_is_corrupt(tmp_path: Path) -> None:
    """efird store requirement: corruption is detected on open with a clear error, here one
    naming the file."""
    path = tmp_path / "s"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreCorruptError, match=str(path)):
        SqliteStore(path)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    """efird store requirement: corruption is detected on open with a clear error; a valid
    SQLite file that is not an efird store is refused as such."""
    path = tmp_path / "s"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreCorruptError, match="not an efird store"):
        SqliteStore(path)


def test_flipped_value_is_detected_by_its_checksum(tmp_path: Path) -> None:
    """efird store requirement: corruption is detected with a clear error, never served: a
    value changed behind efird's back fails its checksum on load, naming the variable."""
    path = tmp_path / "s"
    s = SqliteStore(path)
    s.commit(puts=[var("Victim", b"A" * 64)])
    s.close()
    db = sqlite3.connect(path)  # damage a value behind efird's back
    db.execute("UPDATE variables SET data = ?", (b"B" + b"A" * 63,))
    db.commit()
    db.close()
    s = SqliteStore(path)
    with pytest.raises(StoreCorruptError, match="Victim"):
        list(s.load())
    s.close()


def test_missing_store_without_create(tmp_path: Path) -> None:
    """efird store requirement (a clear error, never an empty store): opening a missing store
    without create fails instead of creating an empty one."""
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(tmp_path / "nope", create=False)


WRITER = textwrap.dedent("""
    import sys
    from efird.store.sqlite import SqliteStore
    from efird.variables.model import Variable
    s = SqliteStore(sys.argv[1])
    i = int(sys.argv[2])
    while True:
        # each variable's data repeats its sequence number: a torn write would show
        data = (b"%08d" % i) * (1 + i % 64)
        s.commit(puts=[Variable(b"\\x01" * 16, "V%d" % (i % 50), 7, data)],
                 meta={"last": b"%d" % i})
        print(i, flush=True)   # acknowledged only after commit returned
        i += 1
""")


@pytest.mark.parametrize("round_", range(5))
def test_kill_9_never_loses_an_acknowledged_write(tmp_path: Path, round_: int) -> None:
    """efird store requirement: an acknowledged SetVariable survives kill -9, and a crash
    mid-write never loses older data (no torn value; the newest acknowledged write is there).
    Also UEFI 2.10 §8.2.3: saved before EFI_SUCCESS is returned, never a partial save."""
    path = tmp_path / "s"
    start = 0
    for _cycle in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        acked = -1
        deadline = time.monotonic() + 0.05 + 0.03 * round_
        while time.monotonic() < deadline or acked < start:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        s = SqliteStore(path)
        found = {v.name: v.data for v in s.load()}
        last = int(s.get_meta("last") or b"-1")
        assert last >= acked, "an acknowledged write was lost"
        for name, data in found.items():
            seq = int(data[:8])
            assert data == data[:8] * (1 + seq % 64), f"{name} is torn"
            assert f"V{seq % 50}" == name
        # the newest acknowledged write is there with its exact value
        assert found[f"V{acked % 50}"][:8] == b"%08d" % acked or int(
            found[f"V{acked % 50}"][:8]) > acked
        s.close()
        start = last + 1


def test_a_new_store_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        s = SqliteStore(tmp_path / "vm.efivars")
        s.commit(puts=[Variable(b"\x01" * 16, "V", 7, b"x")])
        s.close()
    finally:
        os.umask(old)
    for path in tmp_path.iterdir():
        if path.name.startswith("vm.efivars") and path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path


def test_a_failed_reload_leaves_the_service_as_it_was(tmp_path: Path) -> None:
    from efird.variables.service import VariableService

    store = SqliteStore(tmp_path / "vm.efivars")
    store.commit(puts=[Variable(b"\x01" * 16, "Kept", 7, b"x")])
    service = VariableService(store)

    def broken() -> list[Variable]:
        raise StoreCorruptError("store: damaged")

    store.load = broken  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        service.reload()
    assert service.find(b"\x01" * 16, "Kept") is not None
    store.close()
