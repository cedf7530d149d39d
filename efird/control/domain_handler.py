"""The control socket's operations on one running domain (docs/control.md).

save-state carries what a migration must move besides the store file: volatile
variables, the boot phase, the clock offset, the wakeup alarm and the high monotonic
count (so the count keeps increasing on the new host). It is versioned, names its domain
and is checksummed;
restore-state refuses a blob from another domain, another version or with a bad
checksum before touching anything.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from efird.bootmem.service import BootMemoryService
from efird.control import protocol as p
from efird.control.protocol import ControlError
from efird.device import EnvelopeDevice
from efird.domain import Domain
from efird.efi.attributes import NV
from efird.efi.guid import guid_bytes, guid_str
from efird.platform.time_service import ClockState
from efird.store.base import StoreError
from efird.variables.admin import StoreAdmin
from efird.variables.model import Variable
from efird.variables.secureboot import FIRMWARE_OWNED
from efird.variables.service import Phase

STATE_FORMAT = "efird-state"
STATE_VERSION = 1


class DomainControl:
    def __init__(self, name: str, domain: Domain, device: EnvelopeDevice,
                 stop: Callable[[], None]) -> None:
        self.name = name
        self.domain = domain
        self.device = device
        self._stop = stop
        self.started = time.monotonic()

    async def status(self) -> dict[str, Any]:
        v = self.domain.variables
        phase = v.phase
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
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlError("bad-state", f"malformed state: {exc}") from None
        if any(x.attributes & NV for x in volatile):
            raise ControlError("bad-state", "a non-volatile variable in the volatile state")
        await self.device.lock.acquire()
        try:
            self.domain.time.restore(clock_state)  # durable first: it can fail
            self.domain.bootmem.import_state(boot_memory)
            self.domain.variables.restore_volatile(volatile, phase)
        except StoreError as exc:
            raise ControlError("store-error", str(exc)) from None
        finally:
            self.device.lock.release()

    async def reload_store(self) -> dict[str, Any]:
        await self.device.lock.acquire()
        try:
            self.domain.variables.reload()
        except StoreError as exc:
            raise ControlError("store-error", str(exc)) from None
        finally:
            self.device.lock.release()
        count = len(self.domain.variables.variables())
        self.domain.emit("store-reloaded", variables=count)
        return {"variables": count}

    async def stop(self) -> None:
        self._stop()

    async def vars_request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        from efird.control import vars_ops

        await self.device.lock.acquire()  # between two guest requests
        try:
            result = vars_ops.apply(StoreAdmin(self.domain.variables), op, args)
        finally:
            self.device.lock.release()
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
