"""`efird vars` on a store that a daemon serves: the control socket's vars-* operations.

Both ends live here so that they share one JSON form of a variable: `apply` runs in the
daemon (DomainControl calls it between two guest requests, holding the device lock) on the
domain's StoreAdmin; `DaemonTarget` is the CLI's side, with the same methods as StoreAdmin,
so every `efird vars` command runs unchanged on either route.

A variable travels as {"guid", "name", "attributes", "data" (base64), "timestamp" (hex),
"signer" (base64)}; SetVariable's outcome travels as an EFI status name, not as a
protocol error, because a refusal by the rules is an answer, not a failure.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from efird.control import protocol as p
from efird.control.client import ControlClient
from efird.control.protocol import ControlError
from efird.efi import time as efitime
from efird.efi.guid import guid_bytes, guid_str
from efird.efi.status import Status
from efird.store.base import StoreError
from efird.variables.admin import ImportRefused, ImportResult, StoreAdmin
from efird.variables.model import Variable

REFUSED_IMPORT = "import-refused"
STORE_ERROR = "store-error"


def variable_to_json(v: Variable) -> dict[str, Any]:
    return {"guid": guid_str(v.guid), "name": v.name, "attributes": v.attributes,
            "data": base64.b64encode(v.data).decode("ascii"),
            "timestamp": v.timestamp.hex(), "signer": base64.b64encode(v.signer).decode("ascii")}


def variable_from_json(obj: object) -> Variable:
    """ControlError(bad-argument) for anything that is not a well-formed variable."""
    try:
        if not isinstance(obj, dict):
            raise TypeError("a variable must be a JSON object")
        attributes = obj["attributes"]
        if not isinstance(attributes, int) or isinstance(attributes, bool) \
                or not 0 <= attributes < 1 << 32:
            raise TypeError("attributes must be a 32-bit integer")
        timestamp = bytes.fromhex(obj.get("timestamp") or efitime.ZERO.hex())
        if len(timestamp) != efitime.SIZE:
            raise ValueError("timestamp must be 16 bytes")
        name = obj["name"]
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        return Variable(guid_bytes(obj["guid"]), name, attributes, _b64(obj["data"]),
                        timestamp, _b64(obj.get("signer") or ""))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ControlError(p.BAD_ARGUMENT, f"malformed variable: {exc}") from None


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("data must be a base64 string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def apply(admin: StoreAdmin, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Run one vars-* request on the daemon's domain."""
    if op == p.VARS_LIST:
        return {"variables": [variable_to_json(v) for v in admin.variables()],
                "mode": admin.mode(), "require_self_signed_pk": admin.require_self_signed_pk(),
                "store": admin.description}
    try:
        if op == p.VARS_SET:
            v = variable_from_json({**args, "timestamp": None, "signer": None})
            return {"status": admin.set_variable(v.guid, v.name, v.attributes, v.data).name}
        if op == p.VARS_IMPORT:
            variables = [variable_from_json(x) for x in args["variables"]]
            try:
                result = admin.import_variables(variables, bool(args["replace"]))
            except ImportRefused as exc:
                raise ControlError(REFUSED_IMPORT, str(exc)) from None
            return {"imported": result.imported, "deleted": result.deleted}
        if op == p.VARS_RESET_SECURE_BOOT:
            return {"status": admin.reset_secure_boot(bool(args["delete_keys"])).name}
        if op == p.VARS_POLICY:
            admin.set_require_self_signed_pk(bool(args["require_self_signed_pk"]))
            return {}
    except StoreError as exc:
        raise ControlError(STORE_ERROR, str(exc)) from None
    raise AssertionError(f"not a vars op: {op}")


class DaemonTarget:
    """StoreAdmin's methods, carried out by the daemon that serves the store."""

    def __init__(self, control: str) -> None:
        self.client = ControlClient(control)
        self._snapshot: dict[str, Any] | None = None

    def close(self) -> None:
        self.client.close()

    def _list(self) -> dict[str, Any]:
        if self._snapshot is None:
            self._snapshot = self.client.request(p.VARS_LIST)
        return self._snapshot

    @property
    def description(self) -> str:
        return f"{self._list().get('store', '?')} (through efird at {self.client.path})"

    def variables(self) -> list[Variable]:
        return [variable_from_json(x) for x in self._list()["variables"]]

    def find(self, guid: bytes, name: str) -> Variable | None:
        return next((v for v in self.variables() if v.guid == guid and v.name == name), None)

    def mode(self) -> str:
        return str(self._list()["mode"])

    def require_self_signed_pk(self) -> bool:
        return bool(self._list()["require_self_signed_pk"])

    def _changed(self, result: dict[str, Any]) -> dict[str, Any]:
        self._snapshot = None
        return result

    def set_variable(self, guid: bytes, name: str, attributes: int, data: bytes) -> Status:
        result = self._changed(self.client.request(
            p.VARS_SET, guid=guid_str(guid), name=name, attributes=attributes,
            data=base64.b64encode(data).decode("ascii")))
        return Status[result["status"]]

    def import_variables(self, variables: Sequence[Variable], replace: bool) -> ImportResult:
        try:
            result = self._changed(self.client.request(
                p.VARS_IMPORT, variables=[variable_to_json(v) for v in variables],
                replace=replace))
        except ControlError as exc:
            if exc.code == REFUSED_IMPORT:
                raise ImportRefused(exc.message) from None
            raise
        return ImportResult(int(result["imported"]), int(result["deleted"]))

    def reset_secure_boot(self, delete_keys: bool) -> Status:
        result = self._changed(self.client.request(p.VARS_RESET_SECURE_BOOT,
                                                   delete_keys=delete_keys))
        return Status[result["status"]]

    def set_require_self_signed_pk(self, required: bool) -> None:
        self._changed(self.client.request(p.VARS_POLICY, require_self_signed_pk=required))
