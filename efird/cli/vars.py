"""`efird vars`: the variable-store management CLI (first part: list, get, set, append,
delete, import, export).

Every change goes through the same VariableService the guest talks to, so the same rules
decide (attributes, sizes, Secure Boot signatures). A store that a running efird serves is
refused with its pid: stop the domain first (the daemon route comes with the control
socket's variable operations).

Exit codes: 0 ok, 1 not found, 2 usage error, 3 refused by policy or security (the EFI
status name is printed on stderr).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

from efird.efi import guid as g
from efird.efi.attributes import format_attributes, parse_attributes
from efird.efi.status import Status
from efird.store.sqlite import SqliteStore
from efird.variables.model import Variable
from efird.variables.service import VariableService

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3

EPILOG = """\
examples:
  efird vars --store vm1.efivars list
  efird vars --store vm1.efivars get BootOrder
  efird vars --store vm1.efivars set Demo --guid 11111111-2222-3333-4444-555555555555 \\
      --attributes nv,bs,rt --string hello
  efird vars --store vm1.efivars delete Demo --guid 11111111-2222-3333-4444-555555555555
  efird vars --store vm1.efivars set db --guid EfiImageSecurityDatabase \\
      --attributes nv,bs,rt,at --data-file db.auth
  efird vars --store vm1.efivars export vm1.json --format qemu-json
  efird vars --store new.efivars import /usr/share/OVMF/OVMF_VARS_4M.ms.fd
"""


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    p = sub.add_parser("vars", help="inspect and change a domain's variable store",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, type=Path, metavar="PATH",
                   help="the domain's variable store")
    cmds = p.add_subparsers(dest="vars_command", metavar="COMMAND", required=True)

    c = cmds.add_parser("list", help="every variable: name, GUID, attributes, size")
    c.add_argument("--json", action="store_true", help="machine-readable output")

    c = cmds.add_parser("get", help="one variable's value (hexdump, --raw or --json)")
    _name_args(c)
    c.add_argument("--raw", action="store_true", help="the value's bytes on stdout")
    c.add_argument("--json", action="store_true", help="machine-readable output")

    for verb, text in (("set", "create or replace a variable"),
                       ("append", "append to a variable (APPEND_WRITE)")):
        c = cmds.add_parser(verb, help=text)
        _name_args(c)
        c.add_argument("--attributes", default="nv,bs,rt", metavar="LIST",
                       help="nv,bs,rt,hr,at (default nv,bs,rt) or a number; use at with a "
                            "signed .auth file as --data-file")
        data = c.add_mutually_exclusive_group(required=True)
        data.add_argument("--data", metavar="HEX", help="the value as hex")
        data.add_argument("--data-file", type=Path, metavar="FILE", help="the value's bytes")
        data.add_argument("--string", metavar="TEXT", help="the value as a UCS-2 string + NUL")

    c = cmds.add_parser("delete", help="delete a variable (an authenticated one needs "
                                       "set with a signed empty .auth instead)")
    _name_args(c)

    c = cmds.add_parser("export", help="write the store's non-volatile variables to FILE")
    c.add_argument("file", type=Path, metavar="FILE")
    c.add_argument("--format", required=True, choices=["qemu-json", "edk2-fd", "aws"])

    c = cmds.add_parser("import", help="read variables from FILE into the store (atomic)")
    c.add_argument("file", type=Path, metavar="FILE")
    c.add_argument("--format", default="auto",
                   choices=["auto", "qemu-json", "edk2-fd", "aws"])
    c.add_argument("--replace", action="store_true",
                   help="delete every variable of the store that FILE does not have")
    p.set_defaults(run=run)


def _name_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("name", metavar="NAME")
    c.add_argument("--guid", default="EfiGlobalVariable", metavar="GUID",
                   help="vendor GUID or a known name (default EfiGlobalVariable)")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CliError as exc:
        print(f"efird vars: {exc}", file=sys.stderr)
        return exc.code


def _run(args: argparse.Namespace) -> int:
    if args.vars_command in ("list", "get", "export") and not args.store.exists():
        raise CliError(EXIT_USAGE, f"store {args.store} does not exist")
    store = SqliteStore(args.store)
    try:
        service = VariableService(store)
        return COMMANDS[args.vars_command](service, args)
    finally:
        store.sync()
        store.close()


def _guid(text: str) -> bytes:
    try:
        return g.parse_guid(text)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, f"--guid: {exc}") from None


def _list(service: VariableService, args: argparse.Namespace) -> int:
    rows = [{"name": v.name, "guid": g.guid_str(v.guid), "guid_name": g.guid_name(v.guid),
             "attributes": v.attributes, "size": len(v.data)} for v in service.variables()]
    if args.json:
        print(json.dumps({"variables": rows}, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{'NAME':<24} {'GUID':<38} {'ATTRIBUTES':<12} {'SIZE':>6}")
    for v in service.variables():
        print(f"{v.name:<24} {g.guid_name(v.guid):<38} "
              f"{format_attributes(v.attributes):<12} {len(v.data):>6}")
    return EXIT_OK


def _lookup(service: VariableService, args: argparse.Namespace) -> Variable:
    guid = _guid(args.guid)
    v = service.lookup(guid, args.name)
    if v is None:
        raise CliError(EXIT_NOT_FOUND, f"no variable {args.name} in {g.guid_name(guid)}")
    return v


def _get(service: VariableService, args: argparse.Namespace) -> int:
    v = _lookup(service, args)
    if args.raw:
        sys.stdout.buffer.write(v.data)
        return EXIT_OK
    decoded = decode(v)
    if args.json:
        print(json.dumps({"name": v.name, "guid": g.guid_str(v.guid),
                          "attributes": v.attributes, "data": v.data.hex(),
                          "decoded": decoded}, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{v.name} {g.guid_name(v.guid)} {format_attributes(v.attributes)} "
          f"{len(v.data)} bytes")
    if decoded is not None:
        print(json.dumps(decoded, indent=2, ensure_ascii=False))
    for at in range(0, len(v.data), 16):
        chunk = v.data[at : at + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        print(f"  {at:06x}  {chunk.hex(' '):<47}  {text}")
    return EXIT_OK


def decode(v: Variable) -> Any:
    """Known variables in readable form (None when efird has no decoder for it)."""
    if v.guid == g.EFI_GLOBAL_VARIABLE:
        if v.name in ("BootOrder", "DriverOrder") and len(v.data) % 2 == 0:
            return [f"Boot{n:04X}" for (n,) in struct.iter_unpack("<H", v.data)]
        if v.name in ("BootNext", "BootCurrent", "Timeout") and len(v.data) == 2:
            return struct.unpack("<H", v.data)[0]
        if v.name in ("SecureBoot", "SetupMode", "AuditMode", "DeployedMode",
                      "VendorKeys") and len(v.data) == 1:
            return v.data[0]
        if v.name.startswith("Boot") and len(v.name) == 8 and len(v.data) >= 6:
            attributes, path_length = struct.unpack_from("<IH", v.data)
            end = 6
            while end + 1 < len(v.data) and v.data[end : end + 2] != b"\0\0":
                end += 2
            description = v.data[6:end].decode("utf-16-le", errors="replace")
            path = v.data[end + 2 : end + 2 + path_length]
            return {"attributes": attributes, "description": description,
                    "device_path": path.hex(),
                    "optional_data": v.data[end + 2 + path_length :].hex()}
        if v.name in ("PK", "KEK"):
            return _siglists(v.data)
    if v.guid == g.EFI_IMAGE_SECURITY_DATABASE:
        return _siglists(v.data)
    return None


def _siglists(data: bytes) -> Any:
    from efird.efi import siglist

    try:
        return siglist.describe(data)
    except siglist.SignatureListError as exc:
        return {"error": str(exc)}


def _value(args: argparse.Namespace) -> bytes:
    if args.data is not None:
        try:
            return bytes.fromhex(args.data)
        except ValueError:
            raise CliError(EXIT_USAGE, "--data is not hex") from None
    if args.data_file is not None:
        try:
            return bytes(args.data_file.read_bytes())
        except OSError as exc:
            raise CliError(EXIT_USAGE, f"--data-file {args.data_file}: {exc.strerror}") from None
    return str(args.string).encode("utf-16-le") + b"\0\0"


def _write(service: VariableService, args: argparse.Namespace, attributes: int,
           data: bytes) -> int:
    status = service.set_variable(_guid(args.guid), args.name, attributes, data)
    if status is Status.SUCCESS:
        return EXIT_OK
    code = EXIT_NOT_FOUND if status is Status.NOT_FOUND else EXIT_REFUSED
    raise CliError(code, f"{args.name}: refused: {status.name}")


def _set(service: VariableService, args: argparse.Namespace) -> int:
    try:
        attributes = parse_attributes(args.attributes)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, f"--attributes: {exc}") from None
    if args.vars_command == "append":
        attributes |= 0x40
    return _write(service, args, attributes, _value(args))


def _delete(service: VariableService, args: argparse.Namespace) -> int:
    v = _lookup(service, args)
    return _write(service, args, v.attributes, b"")


def _formats() -> dict[str, Any]:
    from efird.formats import aws, edk2_fd, qemu_json

    return {"qemu-json": qemu_json, "edk2-fd": edk2_fd, "aws": aws}


def _export(service: VariableService, args: argparse.Namespace) -> int:
    from efird.efi.attributes import NV

    module = _formats()[args.format]
    data = module.write([v for v in service.variables() if v.attributes & NV])
    tmp = args.file.with_name(args.file.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.rename(args.file)
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{args.file}: {exc.strerror}") from None
    return EXIT_OK


def _import(service: VariableService, args: argparse.Namespace) -> int:
    from efird.efi.attributes import NV, STORED_MASK
    from efird.formats.errors import FormatError

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{args.file}: {exc.strerror}") from None
    formats = _formats()
    if args.format == "auto":
        found = [name for name, m in formats.items() if m.probe(data)]
        if len(found) != 1:
            raise CliError(EXIT_USAGE, f"{args.file}: cannot tell its format "
                                       f"({'none' if not found else ' or '.join(found)} "
                                       "matched); use --format")
        args.format = found[0]
    try:
        variables = formats[args.format].read(data, str(args.file))
    except (FormatError, ValueError) as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    for v in variables:
        if not v.attributes & NV or v.attributes & ~STORED_MASK or not v.name:
            raise CliError(EXIT_USAGE, f"{args.file}: variable {v.name!r} has attributes "
                                       f"{v.attributes:#x} a store cannot hold")
    keep = {v.key for v in variables}
    deletes = [v.key for v in service.variables()
               if args.replace and v.attributes & NV and v.key not in keep]
    service.store.commit(puts=variables, deletes=deletes)  # one atomic batch
    service.reload()
    print(f"imported {len(variables)} variables from {args.file} ({args.format})"
          + (f", deleted {len(deletes)}" if deletes else ""))
    return EXIT_OK


COMMANDS = {"list": _list, "get": _get, "set": _set, "append": _set, "delete": _delete,
            "export": _export, "import": _import}
