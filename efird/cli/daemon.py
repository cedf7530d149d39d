"""`efird serve`'s daemon: the trio event loop serving one domain (the parser is in serve.py,
kept light so that other commands start fast)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from functools import partial

import trio

from efird.cli.call import load_memory_map, make_domain
from efird.cli.serve import EXIT_RESET, EXIT_SHUTDOWN
from efird.control import server as control_server
from efird.control.domain_handler import DomainControl
from efird.device import EnvelopeDevice
from efird.domain import Domain
from efird.log import bind_context, get_logger
from efird.notify import sd_notify
from efird.store.sqlite import SqliteStore
from efird.unixsock import SocketInUseError
from efird.vhost import server

log = get_logger("efird.serve")



def run(args: argparse.Namespace) -> int:
    domain_name = args.domain or args.store.stem
    bind_context(domain=domain_name)
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
