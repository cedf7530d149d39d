"""`efird serve`: the per-domain daemon, attached to the VMM over vhost-user."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from efird.cli.call import add_domain_arguments, add_etcd_arguments
from efird.store.open import URL_FORM, store_argument

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
  efird serve --socket /run/efird/vm1/vm1.sock --store /var/lib/efird/vm1.efivars \\
      --control /run/efird/vm1/vm1.ctl --user efird --group kvm --socket-mode 660
  efird serve --socket /run/efird/vm1.sock --control /run/efird/vm1.ctl \\
      --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/efird/vm1

Once ready, the daemon runs without privileges: --user/--group (from root), no_new_privs
and a seccomp allow-list under which it can open no file and execute nothing
(--no-sandbox leaves the allow-list out); see SECURITY.md.
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
    p.add_argument("--store", required=True, type=store_argument, metavar="PATH|URL",
                   help="the domain's variable store: a file (created if missing), or "
                        f"{URL_FORM} for the fleet store on etcd (docs/etcd.md)")
    p.add_argument("--domain", default=None, metavar="NAME",
                   help="domain name, put on every log line (default: the store file's "
                        "name, or the URL's DOMAIN)")
    p.add_argument("--connect", action="store_true",
                   help="be the client: connect to a frontend listening on --socket")
    p.add_argument("--queues", type=_queue_count, default=4, metavar="N",
                   help="virtqueues offered to the frontend (default 4); the device serves "
                        "one request at a time across all of them")
    p.add_argument("--max-request-size", type=_request_size, default=1 << 20, metavar="BYTES",
                   help="the longest request a guest may send, in bytes (default 1048576, "
                        "4096..16777216); a longer descriptor chain is completed empty, "
                        "unread")
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
    p.add_argument("--user", metavar="USER",
                   help="once the store, the sockets and the pidfile are open, switch to this "
                        "user (name or uid) for good; needs root. The directories of the "
                        "sockets and the pidfile must be writable by it (they are removed at "
                        "exit); see SECURITY.md")
    p.add_argument("--group", metavar="GROUP",
                   help="with --user: the group (name or gid) to switch to (default: the "
                        "user's primary group); supplementary groups are dropped")
    p.add_argument("--no-sandbox", dest="sandbox", action="store_false",
                   help="do not install the seccomp allow-list (for debugging: strace, a "
                        "profiler); no_new_privs and --user/--group still apply")
    add_etcd_arguments(p, standby=True)
    add_domain_arguments(p)
    p.set_defaults(run=run)


def _queue_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def _request_size(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 4096 <= value <= 16 << 20:
        raise argparse.ArgumentTypeError("must be between 4096 and 16777216")
    return value

def run(args: argparse.Namespace) -> int:
    from efird.cli import daemon

    return daemon.run(args)
