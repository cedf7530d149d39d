"""Target `store`: opening and loading a damaged store file (efird.store.sqlite).

Random bytes are almost never a SQLite file, so most inputs damage a real store instead:

    u8 mode   % 4: 0 the rest of the input is the store file, as is
                   1 an empty store, 2 a store with variables and metadata (checkpointed:
                   no WAL), 3 the same store as a crash leaves it: the main file and a WAL
                   holding the last commits; each then patched by:
    patches   each: u8 head (bits 0-6: length - 1, bit 7: patch the WAL, mode 3 only),
              u24 offset (% the file's size), then the bytes

The file is opened as the daemon opens it (SqliteStore(path): owner lock, WAL, quick_check,
WAL preallocation), then every variable is loaded, every metadata record read and the
data version checked.

Oracles: only efird.store.base.StoreError (and its subclasses) may be raised; a store that
opens and loads must hold exactly what was committed: for modes 1 and 2 the template's
variables and metadata, for mode 3 the state after one of its commits (a damaged WAL frame
ends the log, which is SQLite's crash recovery, not silent loss of a committed row).
Anything else (fewer rows, a changed value that passed the checksum) is served corruption.
"""

from __future__ import annotations

import os
import shutil
import struct
import traceback
from collections.abc import Sequence
from pathlib import Path

from efird.efi import guid as g
from efird.store.base import StoreError
from efird.store.sqlite import SqliteStore
from efird.variables.model import Variable
from efird.variables.secureboot import SecureBootState
from fuzz.harness.common import Finding, KnownIssues, Reader, quiet_logs, scratch_dir

VENDOR = g.guid_bytes("3b9a5d7e-1c2f-4a6b-8d9e-0f1a2b3c4d5e")
TS = bytes([0xE8, 0x07, 3, 14, 15, 9, 26, 0]) + bytes(8)
META_KEYS = (*SecureBootState().meta(), "time.offset", "fuzz.extra")

# Reported bugs in efird/store/sqlite.py (tests/test_fuzz_regressions.py), told apart by
# where they are raised:
# SQLite's message for a damaged schema quotes the damaged bytes, Python's sqlite3 cannot
# decode it, and SqliteStore._open lets the UnicodeDecodeError through.
KNOWN_UNDECODABLE_ERROR = "sqlite-error-message-not-utf8"
# A damaged schema can make SQLite answer SQLITE_NOMEM, which sqlite3 raises as
# MemoryError; SqliteStore._open lets it through (and leaves the connection open).
KNOWN_NOMEM = "sqlite-nomem-raises-memoryerror"
# A row whose columns no longer have the written types (a negative or non-integer
# attributes, a TEXT name...) makes the checksum computation itself raise struct.error or
# TypeError in load()/get_meta() instead of StoreCorruptError.
KNOWN_ROW_TYPES = "damaged-row-types-raise"
# get_meta looks a record up by key and checks only that row: damage to a record's key
# hides the record, and it reads as absent (its default: e.g. not Deployed Mode) without
# an error (reported; tests/test_fuzz_regressions.py).
KNOWN_META_KEY_DAMAGE = "meta-record-damage-reads-as-absent"

State = tuple[frozenset[Variable], tuple[tuple[str, bytes | None], ...]]


def template_variables() -> list[list[Variable]]:
    """The commits of the template store, one list of variables each."""
    return [
        [Variable(g.EFI_GLOBAL_VARIABLE, "BootOrder", 0x7, b"\x00\x00\x01\x00"),
         Variable(g.EFI_GLOBAL_VARIABLE, "Boot0000", 0x7, bytes(range(60)) * 2),
         Variable(VENDOR, "Big", 0x3, bytes(range(256)) * 12)],  # overflow pages
        [Variable(VENDOR, "Auth", 0x27, b"signed", TS, bytes(32) + b"\x30\x82" + bytes(40)),
         Variable(g.EFI_HARDWARE_ERROR_VARIABLE, "HwErrRec0001", 0xF, b"\xaa" * 100)],
        [Variable(VENDOR, "\udc00lone\u4e2d", 0x7, b"x"),
         Variable(VENDOR, "N" * 120, 0x7, b"long name")],
    ]


def _state(variables: Sequence[Variable], meta: dict[str, bytes]) -> State:
    return frozenset(variables), tuple((k, meta.get(k)) for k in META_KEYS)


class Templates:
    """The template files, made once with SqliteStore itself."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        empty = directory / "empty.efivars"
        SqliteStore(empty).close()
        self.empty = empty.read_bytes()
        self.empty_state = _state([], {})

        full = directory / "full.efivars"
        store = SqliteStore(full)
        variables: list[Variable] = []
        meta: dict[str, bytes] = {}
        for i, batch in enumerate(template_variables()):
            meta = {**meta, **{k: bytes([i]) for k in META_KEYS[i::3]}}
            store.commit(puts=batch, meta=meta)
            variables += batch
        store.close()
        self.full = full.read_bytes()
        self.full_state = _state(variables, meta)

        # a crash state: the WAL is copied while the store is open (no checkpoint yet)
        crash = directory / "crash.efivars"
        SqliteStore(crash).close()
        store = SqliteStore(crash, exclusive=False)
        variables, meta = [], {}
        self.crash_states = {_state([], {})}
        for i, batch in enumerate(template_variables()):
            meta = {**meta, **{k: bytes([i]) for k in META_KEYS[i::3]}}
            store.commit(puts=batch, meta=meta)
            variables += batch
            self.crash_states.add(_state(variables, meta))
        self.crash_main = crash.read_bytes()
        self.crash_wal = crash.with_name(crash.name + "-wal").read_bytes()
        store.close()


def known_store_bug(exc: BaseException) -> str | None:
    frames = {frame.f_code.co_name for frame, _line in traceback.walk_tb(exc.__traceback__)
              if frame.f_code.co_filename.endswith("efird/store/sqlite.py")}
    if isinstance(exc, UnicodeDecodeError) and "_open" in frames:
        return KNOWN_UNDECODABLE_ERROR
    if isinstance(exc, MemoryError) and "_open" in frames:
        return KNOWN_NOMEM
    if isinstance(exc, struct.error | TypeError) and frames & {"_row_checksum", "get_meta"}:
        return KNOWN_ROW_TYPES
    return None


def _patch(image: bytearray, offset: int, chunk: bytes) -> None:
    if not image:
        return
    offset %= len(image)
    image[offset : offset + len(chunk)] = chunk[: len(image) - offset]


def build_files(data: bytes, t: Templates) -> tuple[bytes, bytes | None, set[State] | None]:
    """(main file, WAL or None, the states a successful load may show, None: any)."""
    r = Reader(data)
    mode = r.u8() % 4
    if mode == 0:
        return r.rest(), None, None
    main = bytearray((t.empty, t.full, t.crash_main)[mode - 1])
    wal = bytearray(t.crash_wal) if mode == 3 else None
    while r.left():
        head = r.u8()
        offset = r.u8() | r.u8() << 8 | r.u8() << 16
        chunk = r.take((head & 0x7F) + 1)
        _patch(wal if wal is not None and head & 0x80 else main, offset, chunk)
    states = ({t.empty_state}, {t.full_state}, t.crash_states)[mode - 1]
    return bytes(main), None if wal is None else bytes(wal), states


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def open_and_load(path: Path) -> State:
    """Open as the daemon does, read everything; StoreError is the only allowed failure."""
    store = SqliteStore(path)
    try:
        variables = list(store.load())
        meta = {k: value for k in META_KEYS if (value := store.get_meta(k)) is not None}
        store.changed_since_load()
    finally:
        store.close()
    for v in variables:
        if not isinstance(v, Variable):
            raise Finding(f"load() yielded {type(v).__name__}")
    keys = [v.key for v in variables]
    if len(set(keys)) != len(keys):
        raise Finding("load() yielded a variable twice")
    return _state(variables, meta)


class Harness:
    def __init__(self) -> None:
        quiet_logs()
        self.dir = scratch_dir("store")
        self.templates = Templates(self.dir)
        self.path = self.dir / "fuzz.efivars"
        self.known = KnownIssues("store")

    def __call__(self, data: bytes) -> None:
        main, wal, states = build_files(data, self.templates)
        try:
            check(self.path, main, wal, states)
        except ServedDamage as damage:
            if not (damage.only_missing_meta and self.known.allow(KNOWN_META_KEY_DAMAGE)):
                raise
        except (UnicodeDecodeError, MemoryError, struct.error, TypeError) as exc:
            known = known_store_bug(exc)
            if known is None or not self.known.allow(known):
                raise


def check(path: Path, main: bytes, wal: bytes | None, states: set[State] | None) -> None:
    _remove(path)
    path.write_bytes(main)
    if wal is not None:
        path.with_name(path.name + "-wal").write_bytes(wal)
    try:
        state = open_and_load(path)
    except StoreError:
        return
    if states is not None and state not in states:
        raise ServedDamage(state, states)


class ServedDamage(Finding):
    def __init__(self, state: State, states: set[State]) -> None:
        super().__init__(describe_difference(state, states))
        # the variables are those of a committed state, and metadata records only went
        # missing (none changed)
        self.only_missing_meta = any(
            s[0] == state[0] and all(v is None or v == w
                                     for (_k, v), (_k2, w) in zip(state[1], s[1], strict=True))
            for s in states)


def describe_difference(state: State, states: set[State]) -> str:
    expected = max(states, key=lambda s: len(s[0]))
    missing = len(expected[0] - state[0])
    extra = len(state[0] - expected[0])
    meta = [k for (k, v), (_k, w) in zip(state[1], expected[1], strict=True) if v != w]
    return (f"damaged store served without an error: {missing} variables missing, "
            f"{extra} changed or new, metadata differing: {meta}")


def copy_template_files(directory: Path) -> None:
    """For debugging: the template files next to a crash (not used while fuzzing)."""
    t = Templates(scratch_dir("store-templates"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "full.efivars").write_bytes(t.full)
    (directory / "crash.efivars").write_bytes(t.crash_main)
    (directory / "crash.efivars-wal").write_bytes(t.crash_wal)
    shutil.rmtree(t.dir, ignore_errors=True)
    os.sync()
