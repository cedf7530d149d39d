"""One fuzz target under atheris/libFuzzer, in this process:

    python -m fuzz.target NAME [libFuzzer flags] [corpus dirs]

NAME is a module of fuzz/harness (see TARGETS). efird (and, where a target lists them,
the libraries whose parsing it drives) is imported inside atheris.instrument_imports, so
libFuzzer's coverage feedback covers efird's own code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# target -> packages to instrument besides efird
TARGETS: dict[str, tuple[str, ...]] = {
    "envelope": (),
    "vhost": (),
    "virtqueue": (),
    "store": (),
    "formats": (),
    "auth": ("asn1crypto",),
}


def load(name: str) -> Callable[[bytes], None]:
    """The harness for `name`, imported under instrumentation."""
    import atheris  # type: ignore[import-untyped]

    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(TARGETS)}")
    if "efird" in sys.modules:
        raise RuntimeError("efird was imported before instrumentation")
    with atheris.instrument_imports(include=["efird", *TARGETS[name]]):
        module = importlib.import_module(f"fuzz.harness.{name}")
    harness: Callable[[bytes], None] = module.Harness()
    return harness


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2:
        raise SystemExit(__doc__)
    harness = load(argv[1])
    atheris.Setup([argv[0], *argv[2:]], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
