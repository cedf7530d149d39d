"""Run every benchmark, print the table and update bench-results.json."""

from __future__ import annotations

from benchmarks import variables
from benchmarks.common import report
from efird import log


def main() -> None:
    log.configure("error", json=False)
    report(variables.run())


if __name__ == "__main__":
    main()
