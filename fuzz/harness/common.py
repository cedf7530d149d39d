"""Pieces shared by the harnesses: the oracle's exception, an input cursor, scratch space.

Nothing here imports efird at module level: the target entry point (fuzz/target.py) imports
the harness inside atheris.instrument_imports, and efird must be first imported there so
that its bytecode is instrumented.
"""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
from collections import deque
from pathlib import Path

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Finding(AssertionError):
    """An oracle violation that raised no exception of its own (wrong response length,
    a write outside the allowed range, a leaked fd...): the fuzzer reports it as a crash."""


class Reader:
    """A cursor over the fuzz input; reads past the end give zeros / short slices, so every
    input decodes to something."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def _fixed(self, size: int) -> bytes:
        return self.take(size).ljust(size, b"\0")

    def u8(self) -> int:
        return self._fixed(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self._fixed(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._fixed(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._fixed(8))[0])

    def rest(self) -> bytes:
        return self.take(self.left())


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def open_fds() -> set[int]:
    """The process's open fds (the listing's own directory fd is closed by the time it is
    checked, so it is left out)."""
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if is_open(fd)}


class KnownIssues:
    """Bugs already found and reported to the owner of the file they are in: while
    FUZZ_STRICT is not 1, an input hitting one is counted instead of being a crash, so a
    run goes on to find other bugs. libFuzzer ends the process without running Python's
    exit handlers, so the counts are rewritten to FUZZ_KNOWN_FILE (set by fuzz/run.py)
    as they change, one line per issue."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.strict = os.environ.get("FUZZ_STRICT") == "1"
        self.path = os.environ.get("FUZZ_KNOWN_FILE")
        self.counts: dict[str, int] = {}

    def allow(self, name: str) -> bool:
        """True (and counted) unless strict: the caller then swallows the failure."""
        if self.strict:
            return False
        self.counts[name] = self.counts.get(name, 0) + 1
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as out:
                out.writelines(f"{k} {v}\n" for k, v in sorted(self.counts.items()))
            os.replace(tmp, self.path)
        return True


_scratch: Path | None = None


def scratch_dir(name: str) -> Path:
    """A private directory, on tmpfs when there is one (stores fsync a lot), under
    FUZZ_SCRATCH when set. libFuzzer exits without running Python's exit handlers, so
    fuzz/run.py sets FUZZ_SCRATCH and removes it; the handler covers other callers."""
    global _scratch
    if _scratch is None:
        parent = os.environ.get("FUZZ_SCRATCH") or (
            "/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
        _scratch = Path(tempfile.mkdtemp(prefix="efird-fuzz-", dir=parent))
        atexit.register(shutil.rmtree, _scratch, True)
    path = _scratch / name
    path.mkdir(exist_ok=True)
    return path


def quiet_logs() -> None:
    """efird logs a line per refused request; at fuzzing rates that is all the time spent.
    Only critical lines are kept (efird logs none on these paths)."""
    from efird.log import configure

    configure(level="critical", json=True)


class History:
    """The last inputs a stateful harness served. State carries across inputs, so the
    crashing input alone may not reproduce; on a crash the sequence is written next to the
    artifacts (FUZZ_HISTORY_DIR, set by fuzz/run.py) to replay with fuzz/replay.py."""

    def __init__(self, target: str, size: int = 256) -> None:
        self.target = target
        self.inputs: deque[bytes] = deque(maxlen=size)

    def add(self, data: bytes) -> None:
        self.inputs.append(data)

    def dump(self) -> Path | None:
        directory = os.environ.get("FUZZ_HISTORY_DIR")
        if not directory:
            return None
        path = Path(directory) / f"history-{self.target}-{os.getpid()}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            for item in self.inputs:
                out.write(_U32.pack(len(item)) + item)
        return path


def read_history(path: Path) -> list[bytes]:
    """The inputs of a History.dump file, oldest first."""
    raw = path.read_bytes()
    out, pos = [], 0
    while pos + 4 <= len(raw):
        (n,) = _U32.unpack_from(raw, pos)
        out.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out
