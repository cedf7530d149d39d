"""`efird`: the daemon's and the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from efird import __version__
from efird import log as efird_log
from efird.cli import call as call_cmd
from efird.cli import ctl as ctl_cmd
from efird.cli import serve as serve_cmd
from efird.cli import vars as vars_cmd
from efird.store.base import StoreError

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efird",
        description="Event-driven EFI runtime daemon for virtual machines.",
    )
    parser.add_argument("--version", action="version", version=f"efird {__version__}")
    parser.add_argument("--log-level", default=None,
                        choices=["debug", "info", "warning", "error"],
                        help="log verbosity (logs go to stderr; JSON unless a terminal); "
                             "default: info for serve, warning otherwise")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    call_cmd.add_parser(sub)
    serve_cmd.add_parser(sub)
    ctl_cmd.add_parser(sub)
    vars_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    efird_log.configure(args.log_level or ("info" if args.command == "serve" else "warning"))
    try:
        result: int = args.run(args)
        return result
    except (StoreError, call_cmd.UsageError) as exc:
        print(f"efird: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
