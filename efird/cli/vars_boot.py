"""`efird vars boot`: Boot#### entries, BootOrder, BootNext and Timeout, like efibootmgr.

Entries are EFI_LOAD_OPTIONs (UEFI 2.10 §3.1.3) whose device paths are read and written in
the spec's text form (§10.6), e.g.
``PciRoot(0x0)/Pci(0x3,0x0)/HD(1,GPT,<guid>,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)``.
Every change is an ordinary SetVariable of an NV|BS|RT variable in EfiGlobalVariable.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from efird.cli.vars_common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Target,
    check,
    command,
    print_json,
    value_from,
)
from efird.efi import guid as g
from efird.efi.attributes import BS, NV, RT

GLOBAL = g.EFI_GLOBAL_VARIABLE
ATTRIBUTES = NV | BS | RT
LOAD_OPTION_PREFIXES = ("Boot", "Driver", "SysPrep", "PlatformRecovery")


def is_load_option_name(name: str) -> bool:
    """Boot####, Driver####, SysPrep####, PlatformRecovery#### (4 uppercase hex digits)."""
    for prefix in LOAD_OPTION_PREFIXES:
        digits = name[len(prefix):]
        if name.startswith(prefix) and len(digits) == 4 and \
                all(c in "0123456789ABCDEF" for c in digits):
            return True
    return False


def describe_load_option(data: bytes) -> Any:
    from efird.efi.loadoption import LoadOption, LoadOptionError

    try:
        return LoadOption.unpack(data).describe()
    except LoadOptionError as exc:
        return {"error": str(exc)}


def add_parsers(cmds: Any) -> None:
    boot = command(cmds, "boot", "Boot#### entries, BootOrder, BootNext, Timeout",
                   "  efird vars --store vm1.efivars boot list\n"
                   "  efird vars --store vm1.efivars boot add --description Debian \\\n"
                   "      --path 'PciRoot(0x0)/Pci(0x3,0x0)/HD(1,GPT,0c1ed3b5-52f4-4d4b-8a2c-"
                   "1f0e8a1a2b3c,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)'\n"
                   "  efird vars --store vm1.efivars boot order 0003,0001\n")
    sub = boot.add_subparsers(dest="boot_command", metavar="ACTION", required=True)

    c = command(sub, "list", "BootCurrent, BootNext, Timeout, BootOrder and every entry",
                "  efird vars --store vm1.efivars boot list\n"
                "  efird vars --store vm1.efivars boot list --json\n")
    c.add_argument("--json", action="store_true", help="machine-readable output")

    c = command(sub, "add", "create a Boot#### entry and put it in BootOrder",
                "  efird vars --store vm1.efivars boot add --description 'UEFI Shell' \\\n"
                "      --path 'Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-"
                "ad65-e05268d0b4d1)'\n"
                "  efird vars --store vm1.efivars boot add --number 0010 --first \\\n"
                "      --description Debian --path 'HD(1,GPT,0c1ed3b5-52f4-4d4b-8a2c-"
                "1f0e8a1a2b3c,0x800,0x100000)/File(\\EFI\\debian\\shimx64.efi)' \\\n"
                "      --data-string 'root=/dev/vda2'\n")
    c.add_argument("--description", required=True, metavar="TEXT")
    c.add_argument("--path", required=True, metavar="DEVICE-PATH",
                   help="the device path in UEFI text form (spec §10.6)")
    c.add_argument("--number", metavar="XXXX", help="entry number (default: first unused)")
    c.add_argument("--inactive", action="store_true", help="clear LOAD_OPTION_ACTIVE")
    c.add_argument("--first", action="store_true",
                   help="put it first in BootOrder (default: last)")
    data = c.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="HEX", help="optional data, as hex")
    data.add_argument("--data-file", type=Path, metavar="FILE",
                      help="optional data from a file")
    data.add_argument("--data-string", metavar="TEXT",
                      help="optional data as a UCS-2 string + NUL (kernel command lines)")

    c = command(sub, "delete", "delete Boot#### and take it out of BootOrder and BootNext",
                "  efird vars --store vm1.efivars boot delete 0003\n")
    c.add_argument("number", metavar="XXXX")

    c = command(sub, "order", "set BootOrder",
                "  efird vars --store vm1.efivars boot order 0003,0001,0000\n"
                "  efird vars --store vm1.efivars boot order --delete\n")
    c.add_argument("order", nargs="?", metavar="XXXX,YYYY,...")
    c.add_argument("--delete", action="store_true", help="delete BootOrder")
    c.add_argument("--force", action="store_true",
                   help="allow numbers that have no Boot#### entry")

    c = command(sub, "next", "set BootNext (a one-time boot entry)",
                "  efird vars --store vm1.efivars boot next 0003\n"
                "  efird vars --store vm1.efivars boot next --delete\n")
    c.add_argument("number", nargs="?", metavar="XXXX")
    c.add_argument("--delete", action="store_true", help="delete BootNext")

    c = command(sub, "timeout", "set Timeout (seconds before the default boot)",
                "  efird vars --store vm1.efivars boot timeout 5\n"
                "  efird vars --store vm1.efivars boot timeout --delete\n")
    c.add_argument("seconds", nargs="?", type=int, metavar="SECONDS")
    c.add_argument("--delete", action="store_true", help="delete Timeout")


def _number(text: str, what: str = "entry number") -> int:
    from efird.efi.loadoption import parse_boot_number

    try:
        return parse_boot_number(text)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, f"{what} {text!r}: {exc}") from None


def _u16_list(target: Target, name: str) -> list[int] | None:
    v = target.find(GLOBAL, name)
    if v is None:
        return None
    if len(v.data) % 2:
        raise CliError(EXIT_USAGE, f"{name} has an odd size ({len(v.data)} bytes)")
    return [n for (n,) in struct.iter_unpack("<H", v.data)]


def _u16(target: Target, name: str) -> int | None:
    v = target.find(GLOBAL, name)
    return struct.unpack("<H", v.data)[0] if v is not None and len(v.data) == 2 else None


def _entries(target: Target) -> dict[int, Any]:
    return {int(v.name[4:], 16): v for v in target.variables()
            if v.guid == GLOBAL and v.name.startswith("Boot") and is_load_option_name(v.name)}


def _put(target: Target, name: str, data: bytes) -> None:
    check(target.set_variable(GLOBAL, name, ATTRIBUTES, data), name)


def _delete(target: Target, name: str) -> None:
    v = target.find(GLOBAL, name)
    if v is not None:
        check(target.set_variable(GLOBAL, name, v.attributes, b""), name)


def _pack_order(order: list[int]) -> bytes:
    return struct.pack(f"<{len(order)}H", *order)


def _list(target: Target, args: argparse.Namespace) -> int:
    from efird.efi.loadoption import boot_name

    entries = _entries(target)
    order = _u16_list(target, "BootOrder")
    state: dict[str, Any] = {
        "boot_current": _u16(target, "BootCurrent"), "boot_next": _u16(target, "BootNext"),
        "timeout": _u16(target, "Timeout"), "boot_order": order,
        "entries": [{"number": n, "name": boot_name(n),
                     **describe_load_option(entries[n].data)}
                    for n in [*(o for o in order or [] if o in entries),
                              *sorted(set(entries) - set(order or []))]],
    }
    if args.json:
        print_json(state)
        return EXIT_OK
    for label, key in (("BootCurrent", "boot_current"), ("BootNext", "boot_next")):
        if state[key] is not None:
            print(f"{label}: {state[key]:04X}")
    if state["timeout"] is not None:
        print(f"Timeout: {state['timeout']} seconds")
    if order is not None:
        print("BootOrder: " + ",".join(f"{n:04X}" for n in order))
    for entry in state["entries"]:
        if "error" in entry:
            print(f"{entry['name']}  (malformed: {entry['error']})")
            continue
        path = entry["device_path"]
        text = path if isinstance(path, str) else f"<{path.get('error')}>"
        extra = f"  data={entry['optional_data']}" if entry["optional_data"] else ""
        print(f"{entry['name']}{'*' if entry['active'] else ' '} {entry['description']}\t"
              f"{text}{extra}")
    return EXIT_OK


def _add(target: Target, args: argparse.Namespace) -> int:
    from efird.efi import devicepath
    from efird.efi.loadoption import LOAD_OPTION_ACTIVE, LoadOption, boot_name

    try:
        path = devicepath.from_text(args.path)
    except devicepath.DevicePathError as exc:
        raise CliError(EXIT_USAGE, f"--path: {exc}") from None
    entries = _entries(target)
    if args.number is not None:
        number = _number(args.number)
        if number in entries:
            raise CliError(EXIT_USAGE, f"{boot_name(number)} exists; delete it first or "
                                       "choose another --number")
    else:
        free = [n for n in range(0x10000) if n not in entries]
        if not free:
            raise CliError(EXIT_USAGE, "every Boot#### number is taken")
        number = free[0]
    option = LoadOption(0 if args.inactive else LOAD_OPTION_ACTIVE, args.description, path,
                        value_from(args.data, args.data_file, args.data_string) or b"")
    _put(target, boot_name(number), option.pack())
    order = [n for n in _u16_list(target, "BootOrder") or [] if n != number]
    order = [number, *order] if args.first else [*order, number]
    _put(target, "BootOrder", _pack_order(order))
    print(f"{boot_name(number)} added; BootOrder: " + ",".join(f"{n:04X}" for n in order))
    return EXIT_OK


def _delete_entry(target: Target, args: argparse.Namespace) -> int:
    from efird.efi.loadoption import boot_name

    number = _number(args.number)
    name = boot_name(number)
    if target.find(GLOBAL, name) is None:
        raise CliError(EXIT_NOT_FOUND, f"no {name}")
    order = _u16_list(target, "BootOrder")
    if order is not None and number in order:
        _put(target, "BootOrder", _pack_order([n for n in order if n != number]))
    if _u16(target, "BootNext") == number:
        _delete(target, "BootNext")
    _delete(target, name)
    print(f"{name} deleted")
    return EXIT_OK


def _order(target: Target, args: argparse.Namespace) -> int:
    if args.delete:
        _delete(target, "BootOrder")
        return EXIT_OK
    if not args.order:
        raise CliError(EXIT_USAGE, "give the order (XXXX,YYYY,...) or --delete")
    order = [_number(text) for text in args.order.split(",")]
    if len(set(order)) != len(order):
        raise CliError(EXIT_USAGE, "an entry appears twice in the order")
    missing = [n for n in order if n not in _entries(target)]
    if missing and not args.force:
        raise CliError(EXIT_NOT_FOUND, "no Boot#### entry for "
                       + ",".join(f"{n:04X}" for n in missing) + " (--force to allow it)")
    _put(target, "BootOrder", _pack_order(order))
    return EXIT_OK


def _next(target: Target, args: argparse.Namespace) -> int:
    if args.delete:
        _delete(target, "BootNext")
        return EXIT_OK
    if args.number is None:
        raise CliError(EXIT_USAGE, "give the entry number or --delete")
    number = _number(args.number)
    if number not in _entries(target):
        raise CliError(EXIT_NOT_FOUND, f"no Boot{number:04X}")
    _put(target, "BootNext", struct.pack("<H", number))
    return EXIT_OK


def _timeout(target: Target, args: argparse.Namespace) -> int:
    if args.delete:
        _delete(target, "Timeout")
        return EXIT_OK
    if args.seconds is None or not 0 <= args.seconds <= 0xFFFF:
        raise CliError(EXIT_USAGE, "give the timeout in seconds (0..65535) or --delete")
    _put(target, "Timeout", struct.pack("<H", args.seconds))
    return EXIT_OK


BOOT_COMMANDS: dict[str, Callable[[Target, argparse.Namespace], int]] = {
    "list": _list, "add": _add, "delete": _delete_entry, "order": _order, "next": _next,
    "timeout": _timeout,
}


def _boot(target: Target, args: argparse.Namespace) -> int:
    return BOOT_COMMANDS[args.boot_command](target, args)


COMMANDS: dict[str, Callable[[Target, argparse.Namespace], int]] = {"boot": _boot}
