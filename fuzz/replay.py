"""Replays fuzz inputs through a harness, without atheris, and shows what they do:

    python -m fuzz.replay TARGET FILE...          each file is one input (crash-*, corpus)
    python -m fuzz.replay TARGET --history FILE   a history-*.bin: the inputs a stateful
                                                  target served before a crash, in order

Exit status 1 when an input raises (the traceback is printed).
"""

from __future__ import annotations

import argparse
import importlib
import traceback
from pathlib import Path

from fuzz.harness.common import read_history
from fuzz.target import TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.replay")
    parser.add_argument("target", choices=list(TARGETS))
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--history", action="store_true",
                        help="the files are history-*.bin sequences")
    args = parser.parse_args(argv)
    harness = importlib.import_module(f"fuzz.harness.{args.target}").Harness()
    inputs: list[tuple[str, bytes]] = []
    for path in args.files:
        if args.history:
            inputs += [(f"{path}#{i}", data) for i, data in enumerate(read_history(path))]
        else:
            inputs.append((str(path), path.read_bytes()))
    for name, data in inputs:
        try:
            harness(data)
        except Exception:
            print(f"{name}: {data.hex()}")
            traceback.print_exc()
            return 1
        print(f"{name}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
