"""The control socket's operations on one running domain (docs/control.md).

save-state carries what a migration must move besides the store file: volatile
variables, the boot phase, the clock offset, the wakeup alarm and the high monotonic
count (so the count keeps increasing on the new host). It is versioned, names its domain
and is checksummed;
restore-state refuses a blob from another domain, another version or with a bad
checksum before touching anything.

Every operation that reads or writes the store (restore-state, reload-store, vars-*,
take-ownership, release-ownership) does it in a worker thread, holding the device lock
so that it falls between two guest requests: with the fleet store a store call is a
network request that can take up to its timeout, and the event loop must keep serving
the other connections, the alarm and the signals meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from efird.bootmem.service import BootMemoryService
from efird.control import protocol as p
from efird.control.protocol import ControlError
from efird.device import EnvelopeDevice
from efird.domain import Domain
from efird.efi.attributes import NV
from efird.efi.guid import guid_bytes, guid_str
from efird.platform.time_service import ClockState, TimeService
from efird.store.base import StoreError
from efird.variables.admin import StoreAdmin
from efird.variables.model import Variable
from efird.variables.secureboot import FIRMWARE_OWNED
from efird.variables.service import Phase

if TYPE_CHECKING:
    from efird.store.etcd import EtcdStore

STATE_FORMAT = "efird-state"
STATE_VERSION = 1
#: How often take-ownership --wait looks at the ownership key again.
TAKE_POLL = 0.2
T = TypeVar("T")


class DomainControl:
    def __init__(self, name: str, domain: Domain, device: EnvelopeDevice,
                 stop: Callable[[], None]) -> None:
        self.name = name
        self.domain = domain
        self.device = device
        self._stop = stop
        self.started = time.monotonic()

    async def _between_requests(self, fn: Callable[[], T]) -> T:
        """fn() in a worker thread, between two guest requests (the device lock held)."""
        await self.device.lock.acquire()
        try:
            return await trio.to_thread.run_sync(fn)
        finally:
            self.device.lock.release()

    def _etcd(self) -> EtcdStore:
        """The fleet store, or ControlError(unsupported) for the embedded one."""
        store = self.domain.store
        if not hasattr(store, "take_ownership"):
            raise ControlError("unsupported", f"store {store.description} has no ownership "
                                              "to hand over (only an etcd:// store has)")
        return store  # type: ignore[return-value]

    async def status(self) -> dict[str, Any]:
        v = self.domain.variables
        phase = v.phase
        ownership = getattr(self.domain.store, "ownership", None)
        extra = {"ownership": ownership()} if ownership is not None else {}
        return {
            "domain": self.name,
            "store": self.domain.store.description,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "phase": {"end_of_dxe": phase.end_of_dxe, "ready_to_boot": phase.ready_to_boot,
                      "runtime": phase.at_runtime,
                      "boot_services_exited": self.domain.bootmem.exited},
            "secure_boot_mode": v.mode.value,
            "variables": len(v.variables()),
            "requests": self.device.requests,
            "refused": self.device.refused,
            "set_variable_failures": v.counters.set_failures,
            "store_errors": v.counters.store_errors,
            "rate_limited": v.counters.rate_limited,
            **extra,
        }

    async def save_state(self) -> bytes:
        await self.device.lock.acquire()  # a consistent cut between two requests
        try:
            v = self.domain.variables
            body = {
                "format": STATE_FORMAT, "version": STATE_VERSION, "domain": self.name,
                "phase": {"end_of_dxe": v.phase.end_of_dxe,
                          "ready_to_boot": v.phase.ready_to_boot,
                          "runtime": v.phase.at_runtime},
                "boot_memory": self.domain.bootmem.export_state(),
                # offset_ns is a JSON integer of any size: up to ~8,100 years of ns
                "clock": {"offset_ns": self.domain.time.offset_ns,
                          "zone": self.domain.time.zone,
                          "daylight": self.domain.time.daylight,
                          "monotonic_high": self.domain.time.monotonic_high,
                          "wakeup": [self.domain.time.wakeup_enabled,
                                     self.domain.time.wakeup_pending,
                                     self.domain.time.wakeup_time.hex()]},
                "volatile": [
                    {"guid": guid_str(x.guid), "name": x.name, "attributes": x.attributes,
                     "data": x.data.hex()}
                    for x in v.variables()
                    if not x.attributes & NV and x.key not in FIRMWARE_OWNED],
            }
        finally:
            self.device.lock.release()
        payload = json.dumps(body, sort_keys=True).encode()
        return json.dumps({"sha256": hashlib.sha256(payload).hexdigest(),
                           "state": body}, sort_keys=True).encode()

    async def restore_state(self, blob: bytes) -> None:
        try:
            outer = json.loads(blob)
            body = outer["state"]
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        except (ValueError, KeyError, TypeError):
            raise ControlError("bad-state", "not an efird state blob") from None
        if outer.get("sha256") != digest:
            raise ControlError("bad-state", "checksum mismatch: the blob was damaged")
        if body.get("format") != STATE_FORMAT or body.get("version") != STATE_VERSION:
            raise ControlError("bad-state", f"unsupported state version {body.get('version')!r}"
                                            f" (this efird reads {STATE_VERSION})")
        if body.get("domain") != self.name:
            raise ControlError("wrong-domain", f"state of domain {body.get('domain')!r} "
                                               f"cannot be restored into {self.name!r}")
        try:
            volatile = [Variable(guid_bytes(x["guid"]), x["name"], int(x["attributes"]),
                                 bytes.fromhex(x["data"])) for x in body["volatile"]]
            phase = Phase(bool(body["phase"]["end_of_dxe"]),
                          bool(body["phase"]["ready_to_boot"]), bool(body["phase"]["runtime"]))
            if not isinstance(body["boot_memory"], dict):
                raise TypeError("boot_memory must be an object")
            boot_memory = BootMemoryService.parse_state(body["boot_memory"])
            clock = body["clock"]
            enabled, pending, alarm = clock["wakeup"]
            clock_state = ClockState(int(clock["offset_ns"]), int(clock["zone"]),
                                     int(clock["daylight"]), int(clock["monotonic_high"]),
                                     bool(enabled), bool(pending), bytes.fromhex(alarm))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:  # JSON has Infinity
            raise ControlError("bad-state", f"malformed state: {exc}") from None
        if any(x.attributes & NV for x in volatile):
            raise ControlError("bad-state", "a non-volatile variable in the volatile state")
        def restore() -> None:
            self.domain.time.restore(clock_state)  # durable first: it can fail
            self.domain.bootmem.import_state(boot_memory)
            self.domain.variables.restore_volatile(volatile, phase)

        try:
            await self._between_requests(restore)
        except StoreError as exc:
            raise ControlError("store-error", str(exc)) from None

    def _reload(self) -> None:
        """(Worker thread, device lock held.) Variables and clock from the store. The
        fleet store reads and verifies the whole domain first and changes nothing if that
        fails, so the service never reloads from a half-read store."""
        refresh = getattr(self.domain.store, "refresh", None)
        if refresh is not None:
            refresh()
        self.domain.variables.reload()

    async def platform_reset(self) -> dict[str, Any]:
        await self.device.lock.acquire()
        try:
            self.domain.platform_reset()
        finally:
            self.device.lock.release()
        self.domain.emit("reset", type="toolstack")
        return {}

    async def reload_store(self) -> dict[str, Any]:
        try:
            await self._between_requests(self._reload)
        except StoreError as exc:
            raise ControlError("store-error", str(exc)) from None
        count = len(self.domain.variables.variables())
        self.domain.emit("store-reloaded", variables=count)
        return {"variables": count}

    async def take_ownership(self, wait: int) -> dict[str, Any]:
        """Own the domain (fleet store), then serve what etcd holds: variables and clock
        are reloaded, volatile variables kept. Waits up to `wait` seconds for the owner
        to let go, polling without holding up the guest; the take and the reload happen
        between two guest requests, so no write can slip in on a stale view."""
        store = self._etcd()
        if wait < 0:
            raise ControlError(p.BAD_ARGUMENT, "wait must be >= 0 (seconds)")
        deadline = trio.current_time() + wait
        while True:
            try:
                holder = await self._between_requests(
                    lambda: self._take_and_reload(store))
            except StoreError as exc:
                raise ControlError("store-error", str(exc)) from None
            if holder is None:
                break
            if trio.current_time() >= deadline:
                raise ControlError("owned", f"domain {store.spec.domain} is owned by "
                                            f"{holder.describe()}")
            await trio.sleep(min(TAKE_POLL, max(0.0, deadline - trio.current_time())))
        return {"ownership": store.ownership(),
                "variables": len(self.domain.variables.variables())}

    def _take_and_reload(self, store: EtcdStore) -> Any:
        """(Worker thread, device lock held.) The current owner, or None once owned."""
        already = store.owned
        holder = store.try_take()
        if holder is None and not already:
            self.domain.variables.reload()
            self._reload_clock()
        return holder

    def _reload_clock(self) -> None:
        """The clock's offset, alarm and monotonic count as the previous owner left
        them (the count never goes backwards)."""
        fresh = TimeService(self.domain.store, self.domain.time.clock)
        clock = self.domain.time
        clock.offset_ns, clock.zone, clock.daylight = fresh.offset_ns, fresh.zone, \
            fresh.daylight
        clock.wakeup_enabled, clock.wakeup_pending = fresh.wakeup_enabled, \
            fresh.wakeup_pending
        clock.wakeup_time = fresh.wakeup_time
        clock.monotonic_high = max(clock.monotonic_high, fresh.monotonic_high)

    async def release_ownership(self) -> dict[str, Any]:
        """Hand the domain over: from here on this daemon refuses writes (DEVICE_ERROR)
        and the next owner can take it. `revoked` false: etcd could not be told, and the
        ownership ends when the lease expires (its TTL) instead of at once."""
        store = self._etcd()
        was_owner = store.owned
        revoked = await self._between_requests(store.release_ownership)
        return {"released": was_owner, "revoked": revoked, "lease_ttl_s": store.lease_ttl}

    async def stop(self) -> None:
        self._stop()

    async def vars_request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        from efird.control import vars_ops

        result = await self._between_requests(
            lambda: vars_ops.apply(StoreAdmin(self.domain.variables), op, args))
        if op not in (p.VARS_LIST,):
            self.domain.emit("variables-changed", op=op, **{
                k: v for k, v in result.items() if k in ("status", "imported", "deleted")})
        return result

    async def soft_reset(self) -> dict[str, Any]:
        await self.device.lock.acquire()
        try:
            status = self.domain.soft_reset("toolstack")
        finally:
            self.device.lock.release()
        if status.is_error:
            raise ControlError("not-ready" if status.name == "NOT_READY" else "soft-reset-failed",
                               f"soft reset refused: {status.name}")
        return {"status": status.name}
