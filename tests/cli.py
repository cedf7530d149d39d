"""Running `efird vars` as a subprocess, as an operator would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def efird_vars(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "--store",
                           str(store), *args], capture_output=True, text=True, timeout=60)


def raw_value(store: Path, name: str, guid: str) -> bytes:
    return subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "--store",
                           str(store), "get", name, "--guid", guid, "--raw"],
                          capture_output=True, timeout=60, check=True).stdout
