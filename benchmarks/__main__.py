"""Run every benchmark, print the table and update bench-results.json."""

from __future__ import annotations

import sys

from benchmarks import boot, cli, etcd, memmap, pagetable, variables, vhost
from benchmarks.common import report
from efird import log


def main() -> None:
    log.configure("error", json=False)
    suites = {"variables": variables.run, "vhost": vhost.run, "memmap": memmap.run,
              "pagetable": pagetable.run, "cli": cli.run, "etcd": etcd.run,
              "boot": boot.run}
    unknown = set(sys.argv[1:]) - set(suites)
    if unknown:
        raise SystemExit(f"unknown benchmark suite(s): {', '.join(sorted(unknown))} "
                         f"(choose from {', '.join(suites)})")
    figures = []
    for name, run in suites.items():
        if not sys.argv[1:] or name in sys.argv[1:]:
            figures += run()
    report(figures)


if __name__ == "__main__":
    main()
