"""`efird call`: the service without a transport.

One hex-encoded request envelope per line on stdin, one hex-encoded response envelope
(same length) per line on stdout, flushed per line. A request the transport would
refuse is answered `ERR <reason>`. State carries across lines; at end of input the
store is made durable. Running it again on the same store is a platform reset.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from efird.store.open import (
    DEFAULT_LEASE_TTL,
    DEFAULT_TIMEOUT,
    URL_FORM,
    StoreSpec,
    store_argument,
)

if TYPE_CHECKING:  # imported where used: `efird vars` and `efird ctl` start without them
    from efird.domain import Domain
    from efird.store.base import VariableStore

HELP = """\
examples:
  # GetPayloadSize (SMM variable function 11): header GUID, MessageLength 24,
  # Function 11, ReturnStatus 0, 8 bytes for the answer
  G=33d532ede69909429cc02d72cdd998a7
  echo ${G}18000000000000000b00000000000000$(printf '0%.0s' {1..32}) \\
    | efird call --store vm1.efivars

  # replay a test vector from protocols/vectors/
  grep '^> ' protocols/vectors/02-set-get-delete.vec | cut -c3- | efird call --store new.efivars
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "call", help="serve hex-encoded envelopes from stdin (reference for firmware authors)",
        description=__doc__, epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, type=store_argument, metavar="PATH|URL",
                   help="the domain's variable store: a file (created if missing) or "
                        f"{URL_FORM} (docs/etcd.md)")
    add_etcd_arguments(p)
    add_domain_arguments(p)
    p.set_defaults(run=run)


def add_etcd_arguments(p: argparse.ArgumentParser, *, standby: bool = False) -> None:
    """The flags of an etcd:// store (docs/etcd.md), shared by `call` and `serve`."""
    g = p.add_argument_group("with an etcd:// store")
    g.add_argument("--etcd-lease-ttl", type=_lease_ttl, default=None, metavar="SECONDS",
                   help="TTL of the lease behind the domain's ownership (default "
                        f"{DEFAULT_LEASE_TTL}): how long a dead owner keeps other hosts out")
    g.add_argument("--etcd-timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="how long a write may wait for an etcd quorum before it fails with "
                        f"EFI_DEVICE_ERROR (default {DEFAULT_TIMEOUT:g})")
    g.add_argument("--etcd-wait", type=_non_negative_float, default=None, metavar="SECONDS",
                   help="at start-up, wait this long for another owner of the domain to let "
                        "go (its lease to expire, or a release-ownership) before giving up "
                        "(default 0)")
    if standby:
        g.add_argument("--etcd-standby", action="store_true", default=None,
                       help="start without taking the domain's ownership: serve reads, refuse "
                            "writes (EFI_DEVICE_ERROR) until the control socket's "
                            "take-ownership (migration and failover targets)")


def add_domain_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that shape a Domain, shared by `call` and `serve`."""
    p.add_argument("--memmap", type=Path, metavar="FILE",
                   help="the guest's memory layout for the boot-memory service: lines "
                        "'START SIZE KIND' (KIND: E820 number or ram, reserved, acpi, nvs, "
                        "mmio, runtime-code, ...); without it the guest must send "
                        "InitMemoryMap")
    p.add_argument("--nv-write-rate", type=_non_negative_float, default=100.0, metavar="N",
                   help="durable variable writes a guest may make per second, sustained "
                        "(default 100; 0 = no limit); a write beyond the rate and the burst "
                        "gets EFI_OUT_OF_RESOURCES at once")
    p.add_argument("--nv-write-burst", type=_positive_int, default=1000, metavar="N",
                   help="durable writes a guest may make in a burst above the rate "
                        "(default 1000)")
    p.add_argument("--require-self-signed-pk", action="store_true",
                   help="in setup mode, accept only a PK that signed itself "
                        "(EDK2 PcdRequireSelfSignedPk; default off, as OVMF ships)")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _lease_ttl(text: str) -> int:
    value = _positive_int(text)
    if value > 3600:
        raise argparse.ArgumentTypeError("must be at most 3600")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def load_memory_map(path: Path | None) -> list[tuple[int, int, int]] | None:
    """--memmap, or an operator error naming the file (exit 2)."""
    if path is None:
        return None
    from efird.bootmem.description import DescriptionError, load

    try:
        return load(path)
    except DescriptionError as exc:
        raise UsageError(f"--memmap {exc}") from None


def open_cli_store(args: argparse.Namespace, role: str) -> VariableStore:
    """--store with the etcd flags (UsageError when they are given with a path)."""
    from efird.store.open import open_store

    spec: StoreSpec = args.store
    flags = {"--etcd-lease-ttl": args.etcd_lease_ttl, "--etcd-timeout": args.etcd_timeout,
             "--etcd-wait": args.etcd_wait,
             "--etcd-standby": getattr(args, "etcd_standby", None)}
    if not spec.is_etcd:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with an etcd:// --store")
    standby = bool(flags["--etcd-standby"])
    return open_store(spec, ownership="standby" if standby else "take",
                      wait=args.etcd_wait or 0.0,
                      lease_ttl=args.etcd_lease_ttl or DEFAULT_LEASE_TTL,
                      timeout=args.etcd_timeout or DEFAULT_TIMEOUT, role=role)


def make_domain(store: VariableStore, args: argparse.Namespace,
                memory_map: list[tuple[int, int, int]] | None) -> Domain:
    from efird.domain import Domain
    from efird.variables.limits import Limits
    from efird.variables.service import Options

    limits = Limits(nv_write_rate=args.nv_write_rate, nv_write_burst=args.nv_write_burst)
    try:
        return Domain(store, memory_map=memory_map, limits=limits,
                      options=Options(require_self_signed_pk=args.require_self_signed_pk))
    except ValueError as exc:
        store.close()
        raise UsageError(f"--memmap {args.memmap}: {exc}") from None


class UsageError(Exception):
    """An operator error; main() prints it and exits 2."""


def serve_lines(domain: Domain, lines: TextIO, out: TextIO) -> None:
    from efird.envelope import Refusal

    for raw in lines:
        text = raw.strip()
        if not text:
            continue
        try:
            request = bytes.fromhex(text)
        except ValueError:
            out.write("ERR not a hex-encoded envelope\n")
            out.flush()
            continue
        try:
            response = domain.dispatcher.dispatch(request)
            out.write(response.hex() + "\n")
        except Refusal as refusal:
            out.write(f"ERR {refusal.status.name}: {refusal.reason}\n")
        out.flush()


def run(args: argparse.Namespace) -> int:
    memory_map = load_memory_map(args.memmap)
    store = open_cli_store(args, "call")
    domain = make_domain(store, args, memory_map)
    try:
        serve_lines(domain, sys.stdin, sys.stdout)
    except BrokenPipeError:
        # the reader went away: what was served is durable, nothing more to answer
        # point stdout at /dev/null so the interpreter's final flush does not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        domain.close()
    return 0
