"""The embedded store: one SQLite file per domain, WAL mode, full sync.

Why SQLite: it is in the standard library, its WAL commit is one append plus one fsync
(a write costs O(variable), not O(store)), a crash mid-commit leaves the previous
state intact, and readers in other processes get consistent snapshots while the daemon
writes. On top of what SQLite guarantees, every row carries a checksum so that damage
SQLite cannot see (a flipped bit inside a value) is reported on open instead of being
served to the guest.

A serving process owns its store outright: an exclusive lock on `<store>.lock` keeps
a second daemon (or any other opener) out with a clear error naming the owner's pid, and
SQLite runs in EXCLUSIVE locking mode, which skips the shared-memory index and the lock
calls on every commit. Tools reach a served store through the daemon; an idle store they
open themselves.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import sqlite3
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from efird.efi.ucs2 import decode_units
from efird.store.base import (
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    VariableStore,
)
from efird.variables.model import Key, Variable

APPLICATION_ID = int.from_bytes(b"EFId", "big")
SCHEMA_VERSION = 1
# Small pages keep the WAL frame a commit writes (24 + page_size bytes) within one
# filesystem block most of the time, and a variable is small.
PAGE_SIZE = 1024
# The WAL is kept allocated (written with zeros once) up to this size, so a commit
# overwrites blocks the file already has instead of growing it: fdatasync then has no
# file-size change to journal. It covers SQLite's autocheckpoint threshold (1000 pages).
WAL_PREALLOCATE = 2 << 20

_SCHEMA = """
CREATE TABLE variables (
    guid BLOB NOT NULL,
    name BLOB NOT NULL,          -- UCS-2 LE without the NUL: exact for any CHAR16 name
    attributes INTEGER NOT NULL,
    data BLOB NOT NULL,
    timestamp BLOB NOT NULL,
    signer BLOB NOT NULL,
    checksum BLOB NOT NULL,
    PRIMARY KEY (guid, name)
) WITHOUT ROWID;
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    checksum BLOB NOT NULL
) WITHOUT ROWID;
"""


_PUT = "INSERT OR REPLACE INTO variables VALUES (?, ?, ?, ?, ?, ?, ?)"


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-16-le", errors="surrogatepass")


_name_str = decode_units


def _checksum(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(struct.pack("<Q", len(p)))
        h.update(p)
    return h.digest()


def _row_checksum(guid: bytes, name: bytes, attributes: int, data: bytes, timestamp: bytes,
                  signer: bytes) -> bytes:
    return _checksum(guid, name, struct.pack("<Q", attributes), data, timestamp, signer)


def _classify(path: Path, exc: Exception) -> StoreError:
    """Turn a sqlite3/OS failure into the StoreError the service maps to an EFI status."""
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in text:
        return StoreFullError(f"store {path}: medium full ({exc})")
    if "locked" in text or "busy" in text:
        return StoreLockedError(f"store {path}: locked by another process ({exc})")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StoreCorruptError(f"store {path}: corrupt ({exc})")
    return StoreIOError(f"store {path}: I/O failure ({exc})")


class SqliteStore(VariableStore):
    """One domain's non-volatile variables in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 exclusive: bool = True, busy_timeout_ms: int = 2000) -> None:
        self.path = Path(path)
        self.description = f"sqlite:{self.path}"
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        if exclusive:
            self._take_owner_lock()
        else:
            self._check_not_served()
        try:
            if not self.path.exists():
                if not create:
                    raise StoreError(f"store {self.path} does not exist")
                self._create()
            self._db = self._open(busy_timeout_ms)
            self._data_version = self._read_data_version()
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------
    def _take_owner_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(
                f"store {self.path}: cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._locked_error(fd)
            os.close(fd)
            raise error from None
        self._lock_fd = fd
        self.advertise()

    def advertise(self, control: str | None = None) -> None:
        """Record the owner in the lock file: this pid and, when given, the control socket
        through which `efird vars` reaches the store while this process serves it."""
        if self._lock_fd is None:
            return
        text = f"{os.getpid()}\n"
        if control is not None:
            text += f"control={os.path.abspath(control)}\n"
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, text.encode(), 0)

    def _locked_error(self, fd: int) -> StoreLockedError:
        lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
        owner = lines[0].strip() if lines and lines[0].strip() else "unknown"
        control = next((line[len("control="):] for line in lines[1:]
                        if line.startswith("control=")), None)
        return StoreLockedError(
            f"store {self.path} is in use by another efird process (pid {owner})",
            owner, control)

    def _check_not_served(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"store {self.path}: cannot open lock file {lock_path}: {exc}"
                             ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._locked_error(fd) from None
        finally:
            os.close(fd)

    def _create(self) -> None:
        """Create the file whole: a half-created store never appears under the real name."""
        tmp = self.path.with_name(f".{self.path.name}.creating.{os.getpid()}")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        try:
            # Secure Boot keys and boot entries are the domain's own: owner-only, whatever
            # the umask (SQLite gives the -wal file the mode of the database file).
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            os.chmod(tmp, 0o600)
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.executescript(_SCHEMA)
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"store {self.path}: cannot create it: {exc}") from exc
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(str(tmp) + suffix).unlink(missing_ok=True)

    def _open(self, busy_timeout_ms: int) -> sqlite3.Connection:
        if self.path.stat().st_size == 0:
            raise StoreCorruptError(
                f"store {self.path} is empty (0 bytes), which efird never leaves behind: "
                "refusing to serve it as an empty store; remove it to start afresh"
            )
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc
        try:
            if self._lock_fd is not None:
                # before the first read, so SQLite never sets up the shared-memory index
                db.execute("PRAGMA locking_mode = EXCLUSIVE")
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise StoreCorruptError(f"store {self.path} is not an efird store "
                                        f"(SQLite application_id {app_id:#x})")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise StoreCorruptError(
                    f"store {self.path} has schema version {version}; this efird reads "
                    f"version {SCHEMA_VERSION}")
            db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreIOError(f"store {self.path}: cannot use WAL mode (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA journal_size_limit = -1")  # never shrink the WAL
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise StoreCorruptError(f"store {self.path} failed its integrity check: {result}")
            if self._lock_fd is not None:
                self._preallocate_wal()
        except StoreError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            raise _classify(self.path, exc) from exc
        except (UnicodeDecodeError, MemoryError) as exc:
            # a damaged schema: SQLite's message quotes undecodable bytes, or it answers
            # SQLITE_NOMEM reading a record whose sizes are garbage
            db.close()
            raise StoreCorruptError(f"store {self.path}: corrupt ({type(exc).__name__})"
                                    ) from exc
        return db

    def _preallocate_wal(self) -> None:
        """Extend the WAL with zeros past its valid frames (only the owner does this, before
        its first write). SQLite reads frames until the first invalid one, so trailing
        zeros are never taken for content."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreIOError(f"store {self.path}: cannot open {wal}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if size < WAL_PREALLOCATE:
                zeros = bytes(64 << 10)
                for offset in range(size, WAL_PREALLOCATE, len(zeros)):
                    os.pwrite(fd, zeros[: WAL_PREALLOCATE - offset], offset)
                os.fsync(fd)
        except OSError as exc:
            raise _classify(self.path, exc) from exc
        finally:
            os.close(fd)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"store {self.path} is closed")
        return self._db

    def _read_data_version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # -- the interface ---------------------------------------------------------------
    def load(self) -> Iterator[Variable]:
        try:
            rows = self.db.execute(
                "SELECT guid, name, attributes, data, timestamp, signer, checksum FROM variables"
            ).fetchall()
            metas = self.db.execute("SELECT key, value, checksum FROM meta").fetchall()
            self._data_version = self._read_data_version()
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc
        # every metadata record is verified here too: damage to a record's key would
        # otherwise hide it, and get_meta would answer "absent" (its default) silently
        for key, value, checksum in metas:
            if not (isinstance(key, str) and isinstance(value, bytes)
                    and checksum == _checksum(key.encode(errors="surrogatepass"), value)):
                raise StoreCorruptError(f"store {self.path}: a metadata record fails its "
                                        "checksum")
        for guid, name, attributes, data, timestamp, signer, checksum in rows:
            if not (isinstance(attributes, int) and 0 <= attributes < 1 << 32
                    and all(isinstance(x, bytes)
                            for x in (guid, name, data, timestamp, signer, checksum))):
                raise StoreCorruptError(f"store {self.path}: a variable row has columns of "
                                        "the wrong type")
            if _row_checksum(guid, name, attributes, data, timestamp, signer) != checksum:
                raise StoreCorruptError(
                    f"store {self.path}: variable {_name_str(name)!r} fails its checksum")
            if len(guid) != 16 or len(timestamp) != 16:
                raise StoreCorruptError(f"store {self.path}: malformed row {_name_str(name)!r}")
            yield Variable(guid, _name_str(name), attributes, data, timestamp, signer)

    def commit(self, puts: Sequence[Variable] = (), deletes: Sequence[Key] = (),
               meta: Mapping[str, bytes] | None = None) -> None:
        db = self.db
        statements: list[tuple[str, tuple[object, ...]]] = [
            ("DELETE FROM variables WHERE guid = ? AND name = ?", (guid, _name_bytes(name)))
            for guid, name in deletes]
        for v in puts:
            raw_name = _name_bytes(v.name)
            statements.append((_PUT, (v.guid, raw_name, v.attributes, v.data, v.timestamp,
                                      v.signer, _row_checksum(v.guid, raw_name, v.attributes,
                                                              v.data, v.timestamp, v.signer))))
        for key, value in (meta or {}).items():
            statements.append(("INSERT OR REPLACE INTO meta VALUES (?, ?, ?)",
                               (key, value, _checksum(key.encode(), value))))
        try:
            if len(statements) == 1:
                # one statement is its own atomic transaction in autocommit mode
                db.execute(*statements[0])
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    db.execute(sql, args)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            # (data_version only moves for other connections' commits: nothing to re-read)
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc

    def get_meta(self, key: str) -> bytes | None:
        try:
            row = self.db.execute("SELECT value, checksum FROM meta WHERE key = ?",
                                  (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc
        if row is None:
            return None
        value, checksum = row
        if _checksum(key.encode(), value) != checksum:
            raise StoreCorruptError(f"store {self.path}: metadata {key!r} fails its checksum")
        return bytes(value)

    def changed_since_load(self) -> bool:
        try:
            return self._read_data_version() != self._data_version
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc

    def sync(self) -> None:
        try:
            self.db.execute("PRAGMA wal_checkpoint(FULL)")
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
