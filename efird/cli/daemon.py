"""`efird serve`'s daemon: the trio event loop serving one domain (the parser is in serve.py,
kept light so that other commands start fast)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from efird import sandbox
from efird.cli.call import UsageError, load_memory_map, make_domain, open_cli_store
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
    domain_name = args.domain or args.store.name
    bind_context(domain=domain_name)
    identity = _check_sandbox_flags(args)  # before anything is created
    memory_map = load_memory_map(args.memmap)
    # Loaded whole and verified before anything is served (the fleet store also takes
    # the domain's ownership here, unless --etcd-standby).
    store = open_cli_store(args, "serve")
    domain = make_domain(store, args, memory_map)
    if args.store.is_etcd:
        from efird.store.etcd import EtcdStore

        assert isinstance(store, EtcdStore)
        # ownership-lost, -taken, -released: from a request's worker thread or the lease
        # renewal thread; Domain.emit and the event bus take events from any thread
        store.on_event = lambda kind, data: domain.emit(kind, **data)
    outcome: dict[str, int] = {}
    try:
        trio.run(_serve, args, domain, outcome, identity)
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


async def _serve(args: argparse.Namespace, domain: Domain, outcome: dict[str, int],
                 identity: sandbox.Identity | None = None) -> None:
    device = EnvelopeDevice(domain, max_request=args.max_request_size)
    once = (args.on_disconnect or ("exit" if args.connect else "wait")) == "exit"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, device, nursery.cancel_scope)
        nursery.start_soon(_alarm_clock, domain, device)
        if args.exit_on_reset:
            domain.listeners.append(_exit_on_reset(nursery.cancel_scope, outcome))
        if args.control is not None:
            bus = control_server.EventBus()
            domain.listeners.append(lambda kind, data: bus.publish(kind, data))
            handler = DomainControl(args.domain or args.store.name, domain, device,
                                    lambda: _in_trio(nursery.cancel_scope.cancel))
            await nursery.start(partial(control_server.serve_control, args.control, handler,
                                        bus=bus))
            # (the fleet store records it in etcd: a request, never on the event loop)
            await trio.to_thread.run_sync(domain.store.advertise, str(args.control))
        if args.connect:
            if _ready(args, "connecting", domain, identity, outcome):
                await server.serve_connecting(args.socket, device, queues=args.queues,
                                              once=once)
        else:
            listener = await server.listen(args.socket, mode=args.socket_mode)
            try:
                if _ready(args, "listening", domain, identity, outcome):
                    await server.serve_listening(listener, device, queues=args.queues,
                                                 once=once)
            finally:
                listener.close()
                args.socket.unlink(missing_ok=True)
        nursery.cancel_scope.cancel()


def _check_sandbox_flags(args: argparse.Namespace) -> sandbox.Identity | None:
    """--user/--group/--no-sandbox, checked before the store and the sockets exist."""
    try:
        identity = sandbox.resolve_identity(args.user, args.group)
        if identity is not None:
            sandbox.check_removable(identity, _removed_at_exit(args))
        if args.sandbox:
            sandbox.load_libseccomp()
    except sandbox.SandboxError as exc:
        raise UsageError(str(exc)) from None
    return identity


def _removed_at_exit(args: argparse.Namespace) -> list[Path]:
    """What the daemon creates at start-up and removes at exit: its listening sockets
    and the pidfile (with --connect the vhost-user socket is the VMM's)."""
    paths = [] if args.connect else [args.socket]
    return paths + [p for p in (args.control, args.pidfile) if p is not None]


def _lock_down(args: argparse.Namespace, domain: Domain,
               identity: sandbox.Identity | None) -> None:
    """Start-up is done: import what the serving path imports lazily, leave SQLite nothing
    to open, then drop to --user/--group, set no_new_privs and install the seccomp filter
    (see efird/sandbox.py). From here on the daemon opens no file and executes nothing."""
    inet = args.store.is_etcd  # the fleet store talks to etcd over TCP
    sandbox.preload(sandbox.SERVING_IMPORTS + (sandbox.ETCD_IMPORTS if inet else ()))
    if isinstance(domain.store, SqliteStore):
        sandbox.prepare_sqlite(domain.store.db, domain.store.path.parent)
    sandbox.lock_down(identity=identity, seccomp=args.sandbox,
                      hand_over_paths=_removed_at_exit(args), connect=args.connect,
                      notify=bool(os.environ.get("NOTIFY_SOCKET")), inet=inet)


def _ready(args: argparse.Namespace, mode: str, domain: Domain,
           identity: sandbox.Identity | None, outcome: dict[str, int]) -> bool:
    """Write the pidfile, lock down, announce readiness; False (exit 1) if the lock-down
    failed: the daemon does not serve unconfined."""
    if args.pidfile is not None:
        tmp = args.pidfile.with_name(args.pidfile.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.rename(args.pidfile)  # readers never see a half-written pidfile
    try:
        _lock_down(args, domain, identity)
    except (sandbox.SandboxError, OSError) as exc:
        log.error("cannot deprivilege", error=str(exc))
        print(f"efird serve: {exc}", file=sys.stderr)
        outcome["status"] = 1
        return False
    log.info("ready", socket=str(args.socket), store=str(args.store), mode=mode,
             pid=os.getpid())
    sd_notify(f"READY=1\nSTATUS=serving {args.socket}\nMAINPID={os.getpid()}")
    return True


async def _alarm_clock(domain: Domain, device: EnvelopeDevice, period: float = 1.0) -> None:
    """SetWakeupTime's alarm: when it comes due the toolstack gets a wake event.

    alarm_due records the pending alarm in the store: that write runs in a worker thread
    between two guest requests (a store write never runs on the event loop)."""
    time = domain.time
    while True:
        await trio.sleep(period)
        if not time.wakeup_enabled or time.wakeup_pending:
            continue  # the common case, decided without a thread
        await device.lock.acquire()
        try:
            due = await trio.to_thread.run_sync(time.alarm_due)
        finally:
            device.lock.release()
        if due:
            domain.emit("wake", time=str(time.now()))


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
