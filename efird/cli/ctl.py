"""`efird ctl`: drive a running `efird serve` through its control socket.

The operator's and the shell script's face of efird.control: readable output by
default, one JSON object per line with --json. Exit codes: 0 done, 1 the daemon
refused (its error code and message on stderr), 2 usage error or the daemon cannot be
reached (the message names the socket).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a ctl command runs: other commands start without them
    from efird.control.client import ControlClient

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  efird ctl --control /run/efird/vm1.ctl status
  efird ctl --control /run/efird/vm1.ctl --json events --count 1
  efird ctl --control /run/efird/vm1.ctl save-state --output vm1.state
  efird ctl --control /run/efird/vm2.ctl restore-state --input vm1.state
  # migrate: the blob as base64 through a pipe
  efird ctl --control /run/efird/vm1.ctl save-state \\
    | ssh dst efird ctl --control /run/efird/vm1.ctl restore-state
  # fleet store (etcd): hand the domain over, no copying
  efird ctl --control /run/efird/vm1.ctl release-ownership
  ssh dst efird ctl --control /run/efird/vm1.ctl take-ownership --wait 10

exit codes: 0 done, 1 the daemon refused (its error code and message on stderr),
2 usage error or the daemon cannot be reached (the message names the socket).
The protocol is described in docs/control.md.
"""


def _add_common(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--control/--json/--timeout, accepted before or after the command.

    On the command parsers they default to SUPPRESS, so that giving them after the
    command overrides, and omitting them keeps, what was given before it.
    """
    default: Any = argparse.SUPPRESS
    p.add_argument("--control", type=Path, metavar="PATH",
                   default=None if top else default,
                   help="the daemon's control socket")
    p.add_argument("--json", action="store_true", default=False if top else default,
                   help="print JSON (one object per line) instead of readable text")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   default=10.0 if top else default,
                   help="give up when the daemon does not answer (default 10)")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ctl", help="control a running efird serve through its control socket",
        description="Drive a running efird serve through its control socket: status,\n"
                    "events, save/restore of its state, store reload, stop. Readable\n"
                    "output by default, JSON with --json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p, top=True)
    commands = p.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        cp: argparse.ArgumentParser = commands.add_parser(name, help=help_text,
                                                          description=help_text)
        _add_common(cp, top=False)
        return cp

    command("status", "print the daemon's status")
    events = command("events", "print events as they happen, one line each, "
                               "until interrupted or the daemon stops")
    events.add_argument("--count", type=_positive, metavar="N",
                        help="exit after N events")
    save = command("save-state", "fetch the daemon's state blob")
    save.add_argument("--output", type=Path, metavar="FILE",
                      help="write the blob to FILE (mode 600) instead of base64 on stdout")
    restore = command("restore-state", "replace the daemon's state with a saved blob")
    restore.add_argument("--input", type=Path, metavar="FILE",
                         help="read the blob from FILE instead of base64 on stdin")
    command("reload", "re-read the variable store from disk")
    command("soft-reset", "kexec / Xen soft reset: keep runtime state, fresh boot path")
    command("platform-reset", "the VM was reset or restarted without ResetSystem: volatile "
                              "variables, boot phase and boot path start afresh")
    command("stop", "stop the daemon")
    take = command("take-ownership", "fleet store (etcd): make this daemon the domain's "
                                     "owner (the one that writes)")
    take.add_argument("--wait", type=int, default=0, metavar="SECONDS",
                      help="wait up to SECONDS for the current owner to let go (default 0)")
    command("release-ownership", "fleet store (etcd): hand the domain over; this daemon "
                                 "refuses writes from then on")
    p.set_defaults(run=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class _Usage(Exception):
    """An operator error found after parsing (missing --control, unreadable file)."""


def run(args: argparse.Namespace) -> int:
    from efird.control.client import ControlClient, ControlConnectionError
    from efird.control.protocol import ControlError

    try:
        if args.control is None:
            raise _Usage("--control PATH is required (the daemon's control socket)")
        with ControlClient(args.control, timeout=args.timeout) as client:
            return _COMMANDS[args.ctl_command](client, args)
    except ControlError as exc:
        print(f"efird ctl: refused: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (ControlConnectionError, _Usage) as exc:
        print(f"efird ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _emit(args: argparse.Namespace, result: Mapping[str, Any], human: str | None = None) -> None:
    if args.json:
        print(json.dumps(result), flush=True)
    elif human is not None:
        print(human, flush=True)
    else:
        _print_fields(result)


def _print_fields(result: Mapping[str, Any]) -> None:
    rows = list(_flatten(result))
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    sys.stdout.flush()


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, _text(value)))
    return rows


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _status(client: ControlClient, args: argparse.Namespace) -> int:
    _emit(args, client.status())
    return EXIT_OK


def _soft_reset(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.soft_reset()
    _emit(args, result, "soft reset done: runtime state kept, boot path fresh")
    return 0


def _platform_reset(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.platform_reset()
    _emit(args, result, "platform reset done: volatile state and boot path fresh")
    return 0


def _reload(client: ControlClient, args: argparse.Namespace) -> int:
    result = client.reload_store()
    _emit(args, result, None if result else "store reloaded")
    return EXIT_OK


def _stop(client: ControlClient, args: argparse.Namespace) -> int:
    client.stop()
    _emit(args, {}, "stop requested")
    return EXIT_OK


def _save(client: ControlClient, args: argparse.Namespace) -> int:
    blob = client.save_state()
    if args.output is None:
        encoded = base64.b64encode(blob).decode("ascii")
        _emit(args, {"state": encoded}, encoded)
        return EXIT_OK
    _write_private(args.output, blob)
    _emit(args, {"output": str(args.output), "bytes": len(blob)},
          f"saved {len(blob)} bytes of state to {args.output}")
    return EXIT_OK


def _write_private(path: Path, blob: bytes) -> None:
    """Write atomically with mode 600: the state holds the guest's variables."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise _Usage(f"cannot write {path}: {exc.strerror or exc}") from exc


def _restore(client: ControlClient, args: argparse.Namespace) -> int:
    if args.input is None:
        text = sys.stdin.read().strip()
        try:
            blob = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Usage(f"stdin is not base64 state ({exc}); use --input FILE "
                         "for a raw blob") from exc
    else:
        try:
            blob = args.input.read_bytes()
        except OSError as exc:
            raise _Usage(f"cannot read {args.input}: {exc.strerror or exc}") from exc
    client.restore_state(blob)
    _emit(args, {"bytes": len(blob)}, f"restored {len(blob)} bytes of state")
    return EXIT_OK


def _events(client: ControlClient, args: argparse.Namespace) -> int:
    seen = 0
    stream = client.events()
    try:
        for event in stream:
            if args.json:
                print(json.dumps(event), flush=True)
            else:
                print(_event_line(event), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK  # the usual way to end `events`
    finally:
        stream.close()
    if args.count is not None:
        from efird.control.client import ControlConnectionError

        raise ControlConnectionError(f"efird control socket {args.control}: the daemon "
                                     f"closed the event stream after {seen} of "
                                     f"{args.count} events")
    return EXIT_OK


def _event_line(event: Mapping[str, Any]) -> str:
    data = event.get("data") or {}
    fields = " ".join(f"{key}={_text(value)}" for key, value in _flatten(data))
    return f"{event.get('time', '')}  {event.get('event', '?')}" + (f"  {fields}" if fields
                                                                    else "")


def _take(client: ControlClient, args: argparse.Namespace) -> int:
    _emit(args, client.take_ownership(wait=args.wait), "ownership taken")
    return EXIT_OK


def _release(client: ControlClient, args: argparse.Namespace) -> int:
    _emit(args, client.release_ownership(), "ownership released")
    return EXIT_OK


_COMMANDS = {
    "take-ownership": _take,
    "release-ownership": _release,
    "status": _status,
    "events": _events,
    "save-state": _save,
    "restore-state": _restore,
    "reload": _reload,
    "soft-reset": _soft_reset,
    "platform-reset": _platform_reset,
    "stop": _stop,
}
