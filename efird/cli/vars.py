"""`efird vars`: inspect and change a domain's variable store.

Every change goes through the variable service the guest talks to, so the same rules
decide (attributes, sizes, Secure Boot signatures). While `efird serve` runs on the store
with a control socket, the commands go through that daemon (found through the store's
lock file, or named with --control): the domain sees the change at once and the guest's
requests and the operator's are applied one at a time. A store served without a control
socket is refused with the daemon's pid.

Exit codes: 0 ok, 1 not found, 2 usage error (bad flag, unreadable or malformed file,
store busy), 3 refused by policy or security (the EFI status name is printed on stderr).
The --json output of each command is documented in docs/vars.md.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from efird.cli import vars_boot, vars_secureboot
from efird.cli.vars_common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Target,
    check,
    command,
    find,
    parse_guid,
    print_json,
    read_file,
    value_from,
)
from efird.efi import guid as g
from efird.efi.attributes import AP, NV, format_attributes, parse_attributes
from efird.store.open import StoreSpec, store_argument
from efird.variables.model import Variable

EPILOG = """\
examples:
  efird vars --store vm1.efivars list
  efird vars --store vm1.efivars get BootOrder
  efird vars --store vm1.efivars set Demo --guid 11111111-2222-3333-4444-555555555555 \\
      --attributes nv,bs,rt --string hello
  efird vars --store vm1.efivars import /usr/share/OVMF/OVMF_VARS_4M.ms.fd
  efird vars --store vm1.efivars enroll --pk pk.pem --pk-key pk.key --kek kek.pem --db db.pem
  efird vars --store vm1.efivars boot add --description Debian \\
      --path 'HD(1,GPT,4f3c8a1e-0000-4000-8000-000000000001,0x800,0x100000)/\\
File(\\EFI\\debian\\shimx64.efi)'
  efird vars --control /run/efird/vm1.ctl list     # through a running daemon
  efird vars --store etcd://10.0.0.1:2379,10.0.0.2:2379/efird/vm1 list   # fleet store

run 'efird vars COMMAND --help' for each command's options and examples.
"""

FORMATS = ("qemu-json", "edk2-fd", "aws")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("vars", help="inspect and change a domain's variable store",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=store_argument, metavar="PATH|URL",
                   help="the domain's variable store: a file (created by commands that "
                        "write) or etcd://HOST:PORT[,...]/PREFIX/DOMAIN (docs/etcd.md)")
    p.add_argument("--control", type=Path, metavar="SOCKET",
                   help="go through the efird serving the store, at this control socket "
                        "(the default when the store's lock file names one)")
    cmds = p.add_subparsers(dest="vars_command", metavar="COMMAND", required=True)

    c = command(cmds, "list", "every variable: name, GUID, attributes, size",
                "  efird vars --store vm1.efivars list\n"
                "  efird vars --store vm1.efivars list --json | jq '.variables[].name'\n")
    c.add_argument("--json", action="store_true", help="machine-readable output")

    c = command(cmds, "get", "one variable's value (hexdump, --raw or --json)",
                "  efird vars --store vm1.efivars get BootOrder\n"
                "  efird vars --store vm1.efivars get db --guid EfiImageSecurityDatabase --json\n"
                "  efird vars --store vm1.efivars get Boot0001 --raw > boot1.bin\n",
                description="One variable's value. Known variables (BootOrder, Boot####, "
                            "BootNext, Timeout, PlatformLang, the Secure Boot mode variables, "
                            "PK/KEK/db/dbx signature lists) are decoded as well.")
    name_args(c)
    out = c.add_mutually_exclusive_group()
    out.add_argument("--raw", action="store_true", help="the value's bytes on stdout")
    out.add_argument("--json", action="store_true", help="machine-readable output")

    for verb, text, example in (
            ("set", "create or replace a variable",
             "  efird vars --store vm1.efivars set Demo --guid 11111111-2222-3333-4444-5555"
             "55555555 --string hello\n"
             "  efird vars --store vm1.efivars set Timeout --data 0500\n"
             "  efird vars --store vm1.efivars set db --guid EfiImageSecurityDatabase \\\n"
             "      --attributes nv,bs,rt,at --data-file db.auth\n"),
            ("append", "append to a variable (SetVariable with APPEND_WRITE)",
             "  efird vars --store vm1.efivars append Demo --guid 11111111-2222-3333-4444-5555"
             "55555555 --data 2100\n"
             "  efird vars --store vm1.efivars append db --guid EfiImageSecurityDatabase \\\n"
             "      --attributes nv,bs,rt,at --data-file db-append.auth\n")):
        c = command(cmds, verb, text, example)
        name_args(c)
        c.add_argument("--attributes", default="nv,bs,rt", metavar="LIST",
                       help="nv,bs,rt,hr,at (default nv,bs,rt) or a number; use at with a "
                            "signed .auth file as --data-file")
        data = c.add_mutually_exclusive_group(required=True)
        data.add_argument("--data", metavar="HEX", help="the value as hex")
        data.add_argument("--data-file", type=Path, metavar="FILE", help="the value's bytes")
        data.add_argument("--string", metavar="TEXT", help="the value as a UCS-2 string + NUL")

    c = command(cmds, "delete", "delete a variable",
                "  efird vars --store vm1.efivars delete Demo --guid 11111111-2222-3333-4444-"
                "555555555555\n",
                description="Delete a variable. An authenticated variable needs a signed "
                            "write instead: set NAME --attributes nv,bs,rt,at --data-file "
                            "empty.auth (or, for PK, reset-secure-boot).")
    name_args(c)

    c = command(cmds, "export", "write the store's non-volatile variables to FILE",
                "  efird vars --store vm1.efivars export vm1.json --format qemu-json\n"
                "  efird vars --store vm1.efivars export OVMF_VARS.fd --format edk2-fd\n"
                "  efird vars --store vm1.efivars export uefi-data.bin --format aws\n")
    c.add_argument("file", type=Path, metavar="FILE")
    c.add_argument("--format", required=True, choices=FORMATS)

    c = command(cmds, "import", "read variables from FILE into the store (atomic)",
                "  efird vars --store vm1.efivars import /usr/share/OVMF/OVMF_VARS_4M.ms.fd\n"
                "  efird vars --store vm1.efivars import vm1.json --format qemu-json --replace\n",
                description="Read variables from FILE into the store in one atomic batch: "
                            "on any error nothing changes. Variables are taken as they are "
                            "(an import is the operator replacing stored state, not a guest "
                            "write).")
    c.add_argument("file", type=Path, metavar="FILE")
    c.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                   help="the file's format (default: recognise it)")
    c.add_argument("--replace", action="store_true",
                   help="delete every variable of the store that FILE does not have")

    vars_secureboot.add_parsers(cmds)
    vars_boot.add_parsers(cmds)
    p.set_defaults(run=run)


def name_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("name", metavar="NAME")
    c.add_argument("--guid", default="EfiGlobalVariable", metavar="GUID",
                   help="vendor GUID or a known name (default EfiGlobalVariable)")


READ_ONLY_COMMANDS = frozenset({"list", "get", "export", "sb-state"})


def run(args: argparse.Namespace) -> int:
    from efird.control.client import ControlConnectionError
    from efird.control.protocol import ControlError

    try:
        target, close = open_target(args)
        try:
            return COMMANDS[args.vars_command](target, args)
        finally:
            close()
    except CliError as exc:
        print(f"efird vars: {exc}", file=sys.stderr)
        return exc.code
    except ControlConnectionError as exc:
        print(f"efird vars: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ControlError as exc:
        print(f"efird vars: the daemon refused: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE


def open_target(args: argparse.Namespace) -> tuple[Target, Callable[[], None]]:
    """The store itself, or the daemon serving it."""
    from efird.control.vars_ops import DaemonTarget
    from efird.store.base import StoreLockedError
    from efird.store.sqlite import SqliteStore
    from efird.variables.admin import StoreAdmin
    from efird.variables.service import VariableService

    if args.control is not None:
        daemon = DaemonTarget(str(args.control))
        return daemon, daemon.close
    if args.store is None:
        raise CliError(EXIT_USAGE, "give --store PATH (or --control SOCKET of the daemon "
                                   "serving it)")
    read_only = args.vars_command in READ_ONLY_COMMANDS or \
        getattr(args, "boot_command", None) == "list"
    spec: StoreSpec = args.store
    if spec.is_etcd:
        return _open_etcd_target(spec, read_only)
    assert spec.path is not None
    if read_only and not spec.path.exists():
        raise CliError(EXIT_USAGE, f"store {args.store} does not exist")
    try:
        store = SqliteStore(spec.path)
    except StoreLockedError as exc:
        if exc.control is None:
            raise CliError(EXIT_USAGE, f"{exc}, which has no control socket: stop it, or "
                                       "run it with --control so that efird vars can go "
                                       "through it") from None
        daemon = DaemonTarget(exc.control)
        return daemon, daemon.close

    def close() -> None:
        # every commit is durable already; sync() is for a store that was written
        store.close()

    try:
        return StoreAdmin(VariableService(store)), close
    except BaseException:
        store.close()
        raise


def _open_etcd_target(spec: StoreSpec, read_only: bool
                      ) -> tuple[Target, Callable[[], None]]:
    """The fleet store: through the daemon that owns the domain when it serves it from
    this host with a control socket; else, to read, the committed variables at one
    revision, and to write, the domain's ownership taken for the command and released
    at its end (refused, naming the owner, while a daemon elsewhere owns it)."""
    from efird.control.vars_ops import DaemonTarget
    from efird.store.base import StoreLockedError
    from efird.store.open import open_etcd
    from efird.variables.admin import StoreAdmin
    from efird.variables.service import VariableService

    try:
        store = open_etcd(spec, ownership="read" if read_only else "take", role="vars")
    except StoreLockedError as exc:
        if exc.control is None:
            raise CliError(EXIT_USAGE, f"{exc}; efird vars goes through the owner only on "
                                       "its host, with its control socket (efird serve "
                                       "--control)") from None
        daemon = DaemonTarget(exc.control)
        return daemon, daemon.close
    holder = store.owner_seen
    if read_only and holder is not None and holder.control is not None \
            and holder.host == store.local_host:
        store.close()
        daemon = DaemonTarget(holder.control)
        return daemon, daemon.close
    if read_only and not store.exists:
        store.close()
        raise CliError(EXIT_USAGE, f"store {spec} does not exist (no efird store under "
                                   f"{spec.base_key})")
    try:
        return StoreAdmin(VariableService(store)), store.close
    except BaseException:
        store.close()
        raise


def _list(target: Target, args: argparse.Namespace) -> int:
    variables = target.variables()
    if args.json:
        print_json({"variables": [
            {"name": v.name, "guid": g.guid_str(v.guid), "guid_name": g.guid_name(v.guid),
             "attributes": v.attributes, "size": len(v.data)} for v in variables]})
        return EXIT_OK
    lines = [f"{'NAME':<24} {'GUID':<38} {'ATTRIBUTES':<12} {'SIZE':>6}"]
    lines += [f"{v.name:<24} {g.guid_name(v.guid):<38} "
              f"{format_attributes(v.attributes):<12} {len(v.data):>6}" for v in variables]
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _get(target: Target, args: argparse.Namespace) -> int:
    v = find(target, parse_guid(args.guid), args.name)
    if args.raw:
        sys.stdout.buffer.write(v.data)
        return EXIT_OK
    decoded = decode(v)
    if args.json:
        print_json({"name": v.name, "guid": g.guid_str(v.guid),
                    "attributes": v.attributes, "data": v.data.hex(), "decoded": decoded})
        return EXIT_OK
    print(f"{v.name} {g.guid_name(v.guid)} {format_attributes(v.attributes)} "
          f"{len(v.data)} bytes")
    if decoded is not None:
        print_json(decoded)
    for at in range(0, len(v.data), 16):
        chunk = v.data[at : at + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        print(f"  {at:06x}  {chunk.hex(' '):<47}  {text}")
    return EXIT_OK


def _ucs2(data: bytes) -> str | None:
    if len(data) % 2:
        return None
    return data.decode("utf-16-le", errors="replace").rstrip("\0")


def decode(v: Variable) -> Any:
    """Known variables in readable form (None when efird has no decoder for it)."""
    if v.guid == g.EFI_GLOBAL_VARIABLE:
        if v.name in ("BootOrder", "DriverOrder", "SysPrepOrder") and len(v.data) % 2 == 0:
            prefix = v.name[: -len("Order")]
            return [f"{prefix}{n:04X}" for (n,) in struct.iter_unpack("<H", v.data)]
        if v.name in ("BootNext", "BootCurrent", "Timeout") and len(v.data) == 2:
            return struct.unpack("<H", v.data)[0]
        if v.name in ("SecureBoot", "SetupMode", "AuditMode", "DeployedMode",
                      "VendorKeys") and len(v.data) == 1:
            return v.data[0]
        if v.name in ("PlatformLang", "PlatformLangCodes", "Lang", "LangCodes"):
            return v.data.rstrip(b"\0").decode("ascii", errors="replace")
        if vars_boot.is_load_option_name(v.name):
            return vars_boot.describe_load_option(v.data)
        if v.name in ("PK", "KEK", "PKDefault", "KEKDefault", "dbDefault", "dbxDefault"):
            return vars_secureboot.describe_signature_lists(v.data)
        if v.name == "SignatureSupport" and len(v.data) % 16 == 0:
            return [g.guid_name(v.data[i : i + 16]) for i in range(0, len(v.data), 16)]
    if v.guid == g.EFI_IMAGE_SECURITY_DATABASE:
        return vars_secureboot.describe_signature_lists(v.data)
    return None


def _value(args: argparse.Namespace) -> bytes:
    value = value_from(args.data, args.data_file, args.string)
    assert value is not None  # argparse requires one of the three
    return value


def _set(target: Target, args: argparse.Namespace) -> int:
    try:
        attributes = parse_attributes(args.attributes)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, f"--attributes: {exc}") from None
    if args.vars_command == "append":
        attributes |= AP
    check(target.set_variable(parse_guid(args.guid), args.name, attributes,
                              _value(args)),
          args.name)
    return EXIT_OK


def _delete(target: Target, args: argparse.Namespace) -> int:
    guid = parse_guid(args.guid)
    v = find(target, guid, args.name)
    check(target.set_variable(guid, args.name, v.attributes, b""), args.name)
    return EXIT_OK


def _formats() -> dict[str, Any]:
    from efird.formats import aws, edk2_fd, qemu_json

    return {"qemu-json": qemu_json, "edk2-fd": edk2_fd, "aws": aws}


def _export(target: Target, args: argparse.Namespace) -> int:
    from efird.formats.errors import FormatError

    module = _formats()[args.format]
    try:
        data = module.write([v for v in target.variables() if v.attributes & NV])
    except FormatError as exc:
        raise CliError(EXIT_USAGE, f"{args.file}: {exc}") from None
    tmp = args.file.with_name(args.file.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.rename(args.file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(EXIT_USAGE, f"{args.file}: {exc.strerror}") from None
    return EXIT_OK


def _import(target: Target, args: argparse.Namespace) -> int:
    from efird.formats.errors import FormatError
    data = read_file(args.file, "import")
    formats = _formats()
    fmt = args.format
    if fmt == "auto":
        found = [name for name, m in formats.items() if m.probe(data)]
        if len(found) != 1:
            raise CliError(EXIT_USAGE, f"{args.file}: cannot tell its format "
                                       f"({'none' if not found else ' or '.join(found)} "
                                       "matched); use --format")
        fmt = found[0]
    try:
        variables = formats[fmt].read(data, str(args.file))
        result = target.import_variables(variables, args.replace)
    except (FormatError, ValueError) as exc:
        prefix = "" if str(args.file) in str(exc) else f"{args.file}: "
        raise CliError(EXIT_USAGE, f"{prefix}{exc}") from None
    print(f"imported {result.imported} variables from {args.file} ({fmt})"
          + (f", deleted {result.deleted}" if result.deleted else ""))
    return EXIT_OK


COMMANDS: dict[str, Callable[[Target, argparse.Namespace], int]] = {
    "list": _list, "get": _get, "set": _set, "append": _set, "delete": _delete,
    "export": _export, "import": _import,
    **vars_secureboot.COMMANDS, **vars_boot.COMMANDS,
}
