"""`efird serve`: the per-domain daemon, attached to the VMM over vhost-user."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from efird.cli.call import add_domain_arguments, load_memory_map, make_domain
from efird.control import server as control_server
from efird.control.domain_handler import DomainControl
from efird.device import EnvelopeDevice
from efird.domain import Domain
from efird.notify import sd_notify
from efird.store.sqlite import SqliteStore
from efird.unixsock import SocketInUseError
from efird.vhost import server

log = structlog.get_logger("efird.serve")

EXIT_RESET, EXIT_SHUTDOWN = 10, 11

EPILOG = """\
QEMU (10.0 or later) attaches with, for example:
  -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem
  -chardev socket,id=efird0,path=/run/efird/vm1.sock
  -device vhost-user-rng-pci,chardev=efird0
(stock QEMU does not let users create the generic vhost-user-device, so a
one-queue vhost-user device carries the queue).

examples:
  efird serve --socket /run/efird/vm1.sock --store /var/lib/efird/vm1.efivars --domain vm1
  efird serve --socket /run/qemu/vm1-efird.sock --store vm1.efivars --connect
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="serve one domain's EFI calls over vhost-user",
        description="Serve one domain's EFI runtime services to its VMM over vhost-user. "
                    "Logs go to stderr as JSON lines (readable text on a terminal); the "
                    "'ready' line, and READY=1 to $NOTIFY_SOCKET, mark readiness. SIGTERM or "
                    "SIGINT finishes the request in flight, makes the store durable and "
                    "exits 0.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", required=True, type=Path, metavar="PATH",
                   help="vhost-user unix socket: efird listens here (QEMU connects), or "
                        "with --connect efird connects to it")
    p.add_argument("--store", required=True, type=Path, metavar="PATH",
                   help="the domain's variable store (created if missing)")
    p.add_argument("--domain", default=None, metavar="NAME",
                   help="domain name, put on every log line (default: the store's name)")
    p.add_argument("--connect", action="store_true",
                   help="be the client: connect to a frontend listening on --socket")
    p.add_argument("--queues", type=_queue_count, default=4, metavar="N",
                   help="virtqueues offered to the frontend (default 4)")
    p.add_argument("--on-disconnect", choices=["wait", "exit"], default=None,
                   help="when the VMM goes away: wait for the next connection, or exit 0 "
                        "(default: wait when listening, exit with --connect)")
    p.add_argument("--socket-mode", type=lambda v: int(v, 8), default=0o600, metavar="OCTAL",
                   help="permissions of the listening socket (default 600)")
    p.add_argument("--control", type=Path, metavar="PATH",
                   help="the toolstack's control socket (mode 0600; JSON lines, see "
                        "docs/control.md and `efird ctl`)")
    p.add_argument("--pidfile", type=Path, metavar="PATH",
                   help="write the daemon's pid here once it is ready (removed at exit)")
    p.add_argument("--exit-on-reset", action="store_true",
                   help="exit when the guest calls ResetSystem, after making the store "
                        "durable: status 10 for a cold, warm or platform-specific reset, "
                        "11 for a shutdown (default: reset the domain's services and go on)")
    add_domain_arguments(p)
    p.set_defaults(run=run)


def _queue_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def run(args: argparse.Namespace) -> int:
    domain_name = args.domain or args.store.stem
    structlog.contextvars.bind_contextvars(domain=domain_name)
    memory_map = load_memory_map(args.memmap)
    store = SqliteStore(args.store)
    domain = make_domain(store, args, memory_map)
    outcome: dict[str, int] = {}
    try:
        trio.run(_serve, args, domain, outcome)
    except (SocketInUseError, ConnectionError, OSError) as exc:
        log.error("cannot serve", error=str(exc))
        print(f"efird serve: {exc}", file=sys.stderr)
        return 1
    finally:
        domain.close()
        if args.pidfile is not None:
            args.pidfile.unlink(missing_ok=True)
        log.info("stopped", store=str(args.store), exit_status=outcome.get("status", 0))
    return outcome.get("status", 0)


async def _serve(args: argparse.Namespace, domain: Domain, outcome: dict[str, int]) -> None:
    device = EnvelopeDevice(domain)
    once = (args.on_disconnect or ("exit" if args.connect else "wait")) == "exit"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, device, nursery.cancel_scope)
        nursery.start_soon(_alarm_clock, domain)
        if args.exit_on_reset:
            domain.listeners.append(_exit_on_reset(nursery.cancel_scope, outcome))
        if args.control is not None:
            bus = control_server.EventBus()
            domain.listeners.append(lambda kind, data: bus.publish(kind, data))
            handler = DomainControl(args.domain or args.store.stem, domain, device,
                                    lambda: _in_trio(nursery.cancel_scope.cancel))
            await nursery.start(partial(control_server.serve_control, args.control, handler,
                                        bus=bus))
            domain.store.advertise(str(args.control))
        if args.connect:
            _ready(args, "connecting")
            await server.serve_connecting(args.socket, device, queues=args.queues, once=once)
        else:
            listener = await server.listen(args.socket, mode=args.socket_mode)
            try:
                _ready(args, "listening")
                await server.serve_listening(listener, device, queues=args.queues, once=once)
            finally:
                listener.close()
                args.socket.unlink(missing_ok=True)
        nursery.cancel_scope.cancel()


def _ready(args: argparse.Namespace, mode: str) -> None:
    if args.pidfile is not None:
        tmp = args.pidfile.with_name(args.pidfile.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.rename(args.pidfile)  # readers never see a half-written pidfile
    log.info("ready", socket=str(args.socket), store=str(args.store), mode=mode,
             pid=os.getpid())
    sd_notify(f"READY=1\nSTATUS=serving {args.socket}\nMAINPID={os.getpid()}")


async def _alarm_clock(domain: Domain, period: float = 1.0) -> None:
    """SetWakeupTime's alarm: when it comes due the toolstack gets a wake event."""
    while True:
        await trio.sleep(period)
        if domain.time.alarm_due():
            domain.emit("wake", time=str(domain.time.now()))


def _exit_on_reset(scope: trio.CancelScope,
                   outcome: dict[str, int]) -> Callable[[str, dict[str, object]], None]:
    def listener(kind: str, data: dict[str, object]) -> None:
        if kind not in ("reset", "shutdown"):
            return
        outcome["status"] = EXIT_SHUTDOWN if kind == "shutdown" else EXIT_RESET
        _in_trio(scope.cancel)

    return listener


def _in_trio(fn: Callable[[], object]) -> None:
    """Run fn on the event loop, from the loop itself or from a request's worker thread."""
    try:
        trio.from_thread.run_sync(fn)
    except RuntimeError:  # already on the trio thread
        fn()


async def _stop_on_signal(device: EnvelopeDevice, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            await device.quiesce()  # the request in flight finishes first
            scope.cancel()
            return
