"""Runs the fuzz targets, each in its own process under atheris/libFuzzer, and writes a
summary (markdown and JSON).

    python -m fuzz [--targets a,b] [--seconds 60 | --seconds envelope=900,store=300 |
                    --runs 2000] [--timeout 10] [--rss-limit-mb 2048] [--parallel 1]
                   [--nice 19] [--strict] [--work fuzz/work] [--results fuzz/RESULTS.md]
                   [--json fuzz/results.json]

Each target fuzzes with a corpus directory of its own under the work directory
(work/corpus/<target>, kept between runs and gitignored) plus the committed seeds
(fuzz/seeds/<target>, read only). Crash inputs land in work/artifacts/<target>/, with the
sequence of inputs that led there for stateful targets (history-*.bin, replay with
`python -m fuzz.replay`). Exit status 1 when any target crashed, hung or ran out of memory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fuzz.target import TARGETS

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
SEEDS = FUZZ_DIR / "seeds"
# libFuzzer's -max_len per target: room for a ring image, an .auth file, a message stream
MAX_LEN = {"envelope": 4096, "vhost": 8192, "virtqueue": 8192, "store": 2048,
           "formats": 4096, "auth": 8192}

_PROGRESS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", re.M)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_TRACEBACK = re.compile(r"=== Uncaught Python exception: ===\n(.*?)\n==\d+==", re.S)
_HANG = re.compile(r"(=== Timeout: .*?)\nALARM", re.S)


@dataclass
class Result:
    target: str
    status: str = "ok"  # ok, crash, timeout, oom, error
    executions: int = 0
    exec_per_sec: float = 0.0
    coverage: int = 0
    features: int = 0
    corpus: int = 0
    new_units: int = 0
    peak_rss_mb: int = 0
    seconds: float = 0.0
    artifact: str | None = None
    traceback: str | None = None
    known_issues: dict[str, int] = field(default_factory=dict)
    command: str = ""
    log: str = ""

    @property
    def failed(self) -> bool:
        return self.status != "ok"


def parse_output(result: Result, output: str, returncode: int) -> None:
    stats = {k: int(v) for k, v in _STAT.findall(output)}
    progress = _PROGRESS.findall(output)
    result.executions = stats.get("number_of_executed_units",
                                  int(progress[-1][0]) if progress else 0)
    result.new_units = stats.get("new_units_added", 0)
    result.peak_rss_mb = stats.get("peak_rss_mb", 0)
    if progress:
        _n, _kind, cov, ft, corp, _size = progress[-1]
        result.coverage, result.features, result.corpus = int(cov), int(ft), int(corp)
    if result.seconds:
        result.exec_per_sec = round(result.executions / result.seconds, 1)
    artifact = _ARTIFACT.search(output)
    result.artifact = artifact.group(1) if artifact else None
    tb = _TRACEBACK.search(output) or _HANG.search(output)
    result.traceback = tb.group(1).strip() if tb else None
    if "ERROR: libFuzzer: timeout" in output:
        result.status = "timeout"
    elif "ERROR: libFuzzer: out-of-memory" in output:
        result.status = "oom"
    elif "Uncaught Python exception" in output or "ERROR: libFuzzer" in output:
        result.status = "crash"
    elif returncode != 0:
        result.status = "error"


@dataclass(frozen=True)
class Options:
    seconds: dict[str, int] | None
    runs: int | None
    timeout: int
    rss_limit_mb: int
    nice: int
    strict: bool
    work: Path
    extra: tuple[str, ...] = ()


def run_target(target: str, opts: Options) -> Result:
    corpus = opts.work / "corpus" / target
    artifacts = opts.work / "artifacts" / target
    logs = opts.work / "logs"
    for d in (corpus, artifacts, logs):
        d.mkdir(parents=True, exist_ok=True)
    known_file = opts.work / f"known-{target}.txt"
    known_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "fuzz.target", target, "-print_final_stats=1",
            f"-timeout={opts.timeout}", f"-rss_limit_mb={opts.rss_limit_mb}",
            f"-max_len={MAX_LEN.get(target, 4096)}", f"-artifact_prefix={artifacts}/"]
    if opts.runs is not None:
        args.append(f"-runs={opts.runs}")
    else:
        assert opts.seconds is not None
        args.append(f"-max_total_time={opts.seconds[target]}")
    args += [*opts.extra, str(corpus)]
    if (SEEDS / target).is_dir():
        args.append(str(SEEDS / target))
    result = Result(target, command=shlex.join(args[1:]))
    scratch = Path(tempfile.mkdtemp(prefix=f"efird-fuzz-{target}-",
                                    dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    env = {**os.environ, "FUZZ_SCRATCH": str(scratch), "FUZZ_KNOWN_FILE": str(known_file),
           "FUZZ_HISTORY_DIR": str(artifacts), "PYTHONPATH": str(REPO)}
    if opts.strict:
        env["FUZZ_STRICT"] = "1"
    log_path = logs / f"{target}.log"
    nice = opts.nice

    def lower_priority() -> None:
        if nice:
            os.nice(nice)

    start = time.monotonic()
    try:
        with log_path.open("w") as log:
            done = subprocess.run(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=lower_priority, check=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = round(time.monotonic() - start, 1)
    result.log = str(log_path)
    parse_output(result, log_path.read_text(errors="replace"), done.returncode)
    if known_file.exists():
        for line in known_file.read_text().splitlines():
            name, count = line.rsplit(" ", 1)
            result.known_issues[name] = int(count)
    return result


def _table(results: list[Result]) -> list[str]:
    lines = ["| target | status | executions | exec/s | cov | ft | corpus | new units | "
             "peak RSS MB | seconds | crashes | hangs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        crashes = int(r.status in ("crash", "oom", "error"))
        hangs = int(r.status == "timeout")
        lines.append(f"| {r.target} | {r.status} | {r.executions:,} | {r.exec_per_sec:,.0f} | "
                     f"{r.coverage} | {r.features} | {r.corpus} | {r.new_units} | "
                     f"{r.peak_rss_mb} | {r.seconds:,.0f} | {crashes} | {hangs} |")
    total = sum(r.executions for r in results)
    seconds = sum(r.seconds for r in results)
    lines.append(f"| **total** | | **{total:,}** | | | | | | | {seconds:,.0f} | "
                 f"{sum(r.status in ('crash', 'oom', 'error') for r in results)} | "
                 f"{sum(r.status == 'timeout' for r in results)} |")
    return lines


def markdown(results: list[Result], command: str, wall: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## Run of {now}", "", f"Command: `{command}`", "",
           f"{os.cpu_count()} cores; wall time {wall:,.0f} s; executions counted by "
           "libFuzzer (stat::number_of_executed_units); cov/ft are libFuzzer's coverage "
           "and feature counts over the instrumented Python (efird; asn1crypto too for "
           "auth).", "", *_table(results), ""]
    known = [(r.target, k, v) for r in results for k, v in r.known_issues.items()]
    if known:
        out += ["Known, reported issues hit (counted, not crashes; FUZZ_STRICT=1 makes them "
                "crashes):", ""]
        out += [f"- {t}: `{k}`: {v:,} inputs" for t, k, v in known]
        out.append("")
    for r in results:
        if r.failed:
            out += [f"### {r.target}: {r.status}", "", f"Artifact: `{r.artifact}`", "",
                    "```", (r.traceback or "(see " + r.log + ")")[-3000:], "```", ""]
    return "\n".join(out)


def parse_seconds(text: str, targets: list[str]) -> dict[str, int]:
    if "=" not in text:
        return dict.fromkeys(targets, int(text))
    given = {k: int(v) for k, v in (item.split("=", 1) for item in text.split(","))}
    default = given.pop("default", 60)
    return {t: given.get(t, default) for t in targets}


def write_json(path: Path, run: dict[str, object]) -> None:
    """Runs newest first, as in the markdown."""
    runs: list[object] = []
    with contextlib.suppress(FileNotFoundError, ValueError):
        runs = list(json.loads(path.read_text()).get("runs", []))
    path.write_text(json.dumps({"runs": [run, *runs]}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--seconds", default=os.environ.get("FUZZ_SECONDS", "60"),
                        help="per target: N, or target=N,...,default=N")
    parser.add_argument("--runs", type=int, help="a number of executions instead of a time")
    parser.add_argument("--timeout", type=int, default=10, help="seconds for one input")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--strict", action="store_true",
                        help="known, reported issues are crashes too")
    parser.add_argument("--work", type=Path, default=FUZZ_DIR / "work")
    parser.add_argument("--results", type=Path, default=FUZZ_DIR / "RESULTS.md",
                        help="markdown summary (the run is prepended to the file)")
    parser.add_argument("--json", type=Path, default=FUZZ_DIR / "results.json",
                        help="JSON figures (the run is prepended to the file's runs)")
    parser.add_argument("--libfuzzer", default="", help="extra libFuzzer flags")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    opts = Options(None if args.runs else parse_seconds(args.seconds, targets), args.runs,
                   args.timeout, args.rss_limit_mb, args.nice, args.strict, args.work,
                   tuple(shlex.split(args.libfuzzer)))
    command = shlex.join(["python", "-m", "fuzz", *(argv if argv is not None else sys.argv[1:])])
    start = time.monotonic()
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        results = list(pool.map(lambda t: run_target(t, opts), targets))
    wall = time.monotonic() - start
    for r in results:
        known = "".join(f" known:{k}={v}" for k, v in r.known_issues.items())
        print(f"{r.target:10} {r.status:8} {r.executions:>11,} execs {r.exec_per_sec:>8,.0f}/s "
              f"cov {r.coverage:>5} ft {r.features:>5} {r.seconds:>7,.0f}s{known}")
        if r.failed:
            print(f"  artifact: {r.artifact}\n  log: {r.log}")
    total = sum(r.executions for r in results)
    print(f"total      {total:,} executions in {wall:,.0f} s")
    if args.json:
        run = {"command": command, "wall_seconds": round(wall, 1),
               "date": dt.datetime.now(dt.UTC).isoformat(),
               "results": [asdict(r) for r in results]}
        write_json(args.json, run)
    if args.results:
        previous = ""
        with contextlib.suppress(FileNotFoundError):
            previous = args.results.read_text()
        header = "# efird fuzzing results\n\n"
        body = previous[len(header):] if previous.startswith(header) else previous
        args.results.write_text(header + markdown(results, command, wall) + "\n" + body)
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
