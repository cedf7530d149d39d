"""`efird vars` end to end from the shell: importing Debian's 540 KiB OVMF store into a
new store, and listing a 2,000-variable store, CLI start-up included. The floor is the
bare interpreter's start-up (`python -c pass`), measured in the same run.

Module bytecode is compiled first (compileall), as an installed package has it; without
that, a machine with PYTHONDONTWRITEBYTECODE recompiles every module on every run.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, median
from efird.efi.guid import guid_bytes
from efird.store.sqlite import SqliteStore
from efird.variables.model import Variable

OVMF_STORE = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
RUNS = 9
VENDOR = guid_bytes("0d3f6a51-7c2e-4b89-9a41-5e6f7a8b9c0d")


def _wall(argv: list[str]) -> float:
    """One run's wall time in ms (stdout discarded, failure is fatal)."""
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return (time.perf_counter() - t0) * 1000


def run() -> list[Figure]:
    import efird

    compileall.compile_dir(str(Path(efird.__file__).parent), quiet=1)
    cli = [sys.executable, "-m", "efird.cli.main", "vars", "--store"]
    floor = median([_wall([sys.executable, "-c", "pass"]) for _ in range(RUNS)])
    with tempfile.TemporaryDirectory(prefix="efird-bench-cli-") as tmp:
        work = Path(tmp)
        imports = []
        for i in range(RUNS):
            store = work / f"import{i}.efivars"
            imports.append(_wall([*cli, str(store), "import", str(OVMF_STORE)]))
        big = work / "big.efivars"
        store = SqliteStore(big)
        store.commit(puts=[Variable(VENDOR, f"Var{i:05d}", 7, os.urandom(64))
                           for i in range(2000)])
        store.close()
        lists = [_wall([*cli, str(big), "list"]) for _ in range(RUNS)]
        json_lists = [_wall([*cli, str(big), "list", "--json"]) for _ in range(RUNS)]
    size = OVMF_STORE.stat().st_size
    return [
        Figure(f"vars import {OVMF_STORE.name} ({size} B)", median(imports), "ms", floor,
               "<= 300 ms"),
        Figure("vars list, 2000 variables", median(lists), "ms", floor, "<= 300 ms"),
        Figure("vars list --json, 2000 variables", median(json_lists), "ms", floor,
               "<= 300 ms"),
    ]
