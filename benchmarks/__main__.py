"""Run every benchmark, print the table and update bench-results.json."""

from __future__ import annotations

import sys

from benchmarks import variables, vhost
from benchmarks.common import report
from efird import log


def main() -> None:
    log.configure("error", json=False)
    which = set(sys.argv[1:]) or {"variables", "vhost"}
    figures = []
    if "variables" in which:
        figures += variables.run()
    if "vhost" in which:
        figures += vhost.run()
    report(figures)


if __name__ == "__main__":
    main()
