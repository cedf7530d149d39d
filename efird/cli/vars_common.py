"""What every `efird vars` command shares: the target (the store opened here, or the
daemon serving it), exit codes, errors, and argument helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from efird.efi import guid as g
from efird.efi.status import Status
from efird.variables.admin import ImportResult
from efird.variables.model import Variable

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


class CliError(Exception):
    """Ends the command: the message goes to stderr, `code` is the exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Target(Protocol):
    """StoreAdmin (store opened by this process) or DaemonTarget (store served)."""

    @property
    def description(self) -> str: ...
    def variables(self) -> list[Variable]: ...
    def find(self, guid: bytes, name: str) -> Variable | None: ...
    def mode(self) -> str: ...
    def require_self_signed_pk(self) -> bool: ...
    def set_variable(self, guid: bytes, name: str, attributes: int, data: bytes
                     ) -> Status: ...
    def import_variables(self, variables: Sequence[Variable], replace: bool
                         ) -> ImportResult: ...
    def reset_secure_boot(self, delete_keys: bool) -> Status: ...
    def set_require_self_signed_pk(self, required: bool) -> None: ...


def command(cmds: Any, name: str, text: str, examples: str, description: str | None = None
            ) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with examples."""
    parser: argparse.ArgumentParser = cmds.add_parser(
        name, help=text, description=description or text,
        epilog="examples:\n" + examples.rstrip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def parse_guid(text: str, flag: str = "--guid") -> bytes:
    try:
        return g.parse_guid(text)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, f"{flag}: {exc}") from None


def read_file(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{flag} {path}: {exc.strerror}") from None


def value_from(hex_text: str | None, file: Path | None, text: str | None) -> bytes | None:
    """The bytes given as --data HEX, --data-file FILE or a UCS-2 string (+ NUL); None
    when none of them was."""
    if hex_text is not None:
        try:
            return bytes.fromhex(hex_text)
        except ValueError:
            raise CliError(EXIT_USAGE, "--data is not hex") from None
    if file is not None:
        return read_file(file, "--data-file")
    if text is not None:
        return text.encode("utf-16-le") + b"\0\0"
    return None


def check(status: Status, what: str) -> None:
    """A SetVariable outcome as the CLI's exit status (raises CliError unless SUCCESS)."""
    if status is Status.SUCCESS:
        return
    code = EXIT_NOT_FOUND if status is Status.NOT_FOUND else EXIT_REFUSED
    raise CliError(code, f"{what}: refused: {status.name}")


def find(target: Target, guid: bytes, name: str) -> Variable:
    v = target.find(guid, name)
    if v is None:
        raise CliError(EXIT_NOT_FOUND, f"no variable {name} in {g.guid_name(guid)}")
    return v


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def warn(message: str) -> None:
    print(f"efird vars: {message}", file=sys.stderr)
