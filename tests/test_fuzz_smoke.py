"""CI smoke run of every fuzz target (fuzz/): a bounded number of executions each, through
the same runner as `make fuzz`, with the committed seeds; each target must run and find
nothing. Fails, rather than skips, when atheris is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-untyped]  # not importorskip: missing = failure
import pytest

from fuzz.run import Result, parse_output
from fuzz.target import TARGETS

REPO = Path(__file__).resolve().parent.parent
RUNS = 1000  # per target, seeds included


def test_atheris_is_installed() -> None:
    assert callable(atheris.Fuzz) and callable(atheris.instrument_imports)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("fuzz-smoke")
    done = subprocess.run(
        [sys.executable, "-m", "fuzz", "--runs", str(RUNS), "--parallel", "2",
         "--timeout", "30", "--work", str(work), "--results", str(work / "RESULTS.md"),
         "--json", str(work / "results.json")],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    path = work / "results.json"
    assert path.exists(), f"the runner wrote no results:\n{done.stdout}\n{done.stderr}"
    results = json.loads(path.read_text())["runs"][0]["results"]
    return {r["target"]: r for r in results}


@pytest.mark.parametrize("target", list(TARGETS))
def test_target_runs_clean(smoke: dict[str, dict[str, Any]], target: str) -> None:
    result = smoke[target]
    detail = result["traceback"] or Path(result["log"]).read_text()[-3000:]
    assert result["status"] == "ok", f"{target}: {result['status']}\n{detail}"
    assert result["executions"] >= RUNS, detail
    assert result["coverage"] > 0, detail


def test_runner_reads_a_crash_report() -> None:
    output = (
        "#1024\tpulse  cov: 10 ft: 12 corp: 3/40b lim: 4 exec/s: 512 rss: 50Mb\n"
        "#1200\tNEW    cov: 11 ft: 14 corp: 4/44b lim: 4 exec/s: 600 rss: 51Mb L: 4/4\n"
        "\n === Uncaught Python exception: ===\n"
        "Finding: boom\nTraceback (most recent call last):\n  File \"x.py\"\nFinding: boom\n"
        "\n==42== ERROR: libFuzzer: fuzz target exited\n"
        "artifact_prefix='a/'; Test unit written to a/crash-0123\n"
        "stat::number_of_executed_units: 1234\nstat::peak_rss_mb:              51\n")
    result = Result("t", seconds=2.0)
    parse_output(result, output, 1)
    assert (result.status, result.executions, result.coverage, result.features) == (
        "crash", 1234, 11, 14)
    assert result.artifact == "a/crash-0123"
    assert result.traceback is not None and result.traceback.startswith("Finding: boom")
    assert result.exec_per_sec == 617.0


def test_runner_reads_a_timeout_report() -> None:
    output = (
        "#500\tNEW    cov: 3 ft: 4 corp: 2/9b lim: 4 exec/s: 50 rss: 50Mb L: 4/4\n"
        "\n === Timeout: 15s elapsed, timeout=10s ===\n"
        "Current thread 0x1 (most recent call first):\n  File \"backend.py\", line 67\n"
        "ALARM: working on the last Unit for 14 seconds\n"
        "artifact_prefix='a/'; Test unit written to a/timeout-99\n"
        "==7== ERROR: libFuzzer: timeout after 14 seconds\n"
        "stat::number_of_executed_units: 501\n")
    result = Result("t", seconds=10.0)
    parse_output(result, output, 1)
    assert (result.status, result.executions, result.artifact) == ("timeout", 501, "a/timeout-99")
    assert result.traceback is not None and 'File "backend.py"' in result.traceback
