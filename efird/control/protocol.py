"""The control protocol: JSON lines over a unix stream socket (documented in docs/control.md).

Kept free of I/O so that the trio server, the blocking client and the tests share one
definition of what a valid request, reply and event line is.

A request is one JSON object per line, `{"id": <int|str>, "op": "<name>", ...args}`; a
reply is one line `{"id": ..., "ok": true, "result": {...}}` or
`{"id": ..., "ok": false, "error": {"code": "...", "message": "..."}}`; an event line
(only on a connection that sent "events") is
`{"event": "<kind>", "time": "<ISO 8601 UTC>", "data": {...}}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Longest request line accepted, newline excluded. A restore-state blob must fit in one
#: line, so this bounds the state to about 12 MiB (base64 takes 4 bytes per 3).
MAX_LINE = 16 * 1024 * 1024

STATUS, EVENTS, SAVE_STATE, RESTORE_STATE, RELOAD_STORE, STOP, SOFT_RESET = (
    "status", "events", "save-state", "restore-state", "reload-store", "stop", "soft-reset")
# a reset the guest did not ask for through ResetSystem (the VM was restarted or reset)
PLATFORM_RESET = "platform-reset"
# the fleet store's ownership handoff (docs/etcd.md)
TAKE_OWNERSHIP, RELEASE_OWNERSHIP = "take-ownership", "release-ownership"
# `efird vars` on a served store (efird/control/vars_ops.py)
VARS_LIST, VARS_SET, VARS_IMPORT, VARS_RESET_SECURE_BOOT, VARS_POLICY = (
    "vars-list", "vars-set", "vars-import", "vars-reset-secure-boot", "vars-policy")

#: Each operation's arguments: name -> required JSON type. Unknown arguments are refused
#: so that a typo, or a newer toolstack talking to an older daemon, is an error and not
#: silently ignored.
ARGUMENTS: dict[str, dict[str, type]] = {
    STATUS: {},
    EVENTS: {},
    SAVE_STATE: {},
    RESTORE_STATE: {"state": str},
    RELOAD_STORE: {},
    STOP: {},
    SOFT_RESET: {},
    PLATFORM_RESET: {},
    TAKE_OWNERSHIP: {"wait": int},
    RELEASE_OWNERSHIP: {},
    VARS_LIST: {},
    VARS_SET: {"guid": str, "name": str, "attributes": int, "data": str},
    VARS_IMPORT: {"variables": list, "replace": bool},
    VARS_RESET_SECURE_BOOT: {"delete_keys": bool},
    VARS_POLICY: {"require_self_signed_pk": bool},
}
VARS_OPS = (VARS_LIST, VARS_SET, VARS_IMPORT, VARS_RESET_SECURE_BOOT, VARS_POLICY)
OPS = tuple(ARGUMENTS)

# Error codes the server itself produces. A ControlHandler may refuse with codes of its
# own (for example "bad-state" or "busy"); clients must treat codes as open strings.
LINE_TOO_LONG = "line-too-long"  # the line exceeds MAX_LINE; its id could not be read
BAD_JSON = "bad-json"            # not UTF-8, or not JSON
BAD_REQUEST = "bad-request"      # not an object, id missing or not int/str, op missing
UNKNOWN_OP = "unknown-op"        # op is not one of OPS
BAD_ARGUMENT = "bad-argument"    # missing, unknown or mistyped argument; bad base64
SUBSCRIBED = "subscribed"        # a request on a connection that streams events
UNSUPPORTED = "unsupported"      # "events" on a server started without an event bus
INTERNAL = "internal"            # the daemon failed unexpectedly answering the request

#: Event kinds the daemon publishes; open-ended, subscribers must skip kinds they do not
#: know. EVENTS_DROPPED is produced by the event bus itself.
EVENT_KINDS = ("reset", "shutdown", "kexec", "wake", "secure-boot-violation", "boot-failed", "exit",
               "store-reloaded", "variables-changed", "stopping", "ownership-taken",
               "ownership-released", "ownership-lost")
EVENTS_DROPPED = "events-dropped"

RequestId = int | str


class ControlError(Exception):
    """A refusal with a machine-readable code: what an error reply carries.

    Raised by a ControlHandler to refuse an operation (the server turns it into an error
    reply) and by the client when the daemon answers with an error.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RequestError(ControlError):
    """A request line the server cannot act on, with the id to answer (None if unreadable)."""

    def __init__(self, request_id: RequestId | None, code: str, message: str) -> None:
        super().__init__(code, message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """A validated request: its id, its operation and its (type-checked) arguments."""

    id: RequestId
    op: str
    args: dict[str, Any] = field(default_factory=dict)


def _valid_id(value: object) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def parse_request(line: bytes) -> Request:
    """Validate one request line (newline stripped); RequestError says what is wrong.

    The length limit is the reader's business (it must stop buffering), not checked here.
    """
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RequestError(None, BAD_JSON, f"request is not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(None, BAD_JSON, f"request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RequestError(None, BAD_REQUEST,
                           f"request must be a JSON object, not {type(obj).__name__}")
    if "id" not in obj:
        raise RequestError(None, BAD_REQUEST, "request has no id")
    request_id = obj.pop("id")
    if not _valid_id(request_id):
        raise RequestError(None, BAD_REQUEST, "id must be an integer or a string")
    if "op" not in obj:
        raise RequestError(request_id, BAD_REQUEST, "request has no op")
    op = obj.pop("op")
    if not isinstance(op, str):
        raise RequestError(request_id, BAD_REQUEST, "op must be a string")
    if op not in ARGUMENTS:
        raise RequestError(request_id, UNKNOWN_OP,
                           f"unknown op {op!r}; known: {', '.join(OPS)}")
    expected = ARGUMENTS[op]
    unknown = sorted(set(obj) - set(expected))
    if unknown:
        raise RequestError(request_id, BAD_ARGUMENT,
                           f"{op} takes no argument {', '.join(map(repr, unknown))}")
    for name, kind in expected.items():
        if name not in obj:
            raise RequestError(request_id, BAD_ARGUMENT, f"{op} needs argument {name!r}")
        if not isinstance(obj[name], kind):
            raise RequestError(request_id, BAD_ARGUMENT,
                               f"{op} argument {name!r} must be a JSON {_json_type(kind)}")
    return Request(request_id, op, obj)


def _json_type(kind: type) -> str:
    return {str: "string", int: "integer", bool: "boolean", dict: "object",
            list: "array"}.get(kind, kind.__name__)


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """One compact ASCII JSON line; values JSON cannot carry are sent as their str()."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode("ascii") + b"\n"


def encode_request(request_id: RequestId, op: str, **args: Any) -> bytes:
    return encode_line({"id": request_id, "op": op, **args})


def ok_reply(request_id: RequestId, result: Mapping[str, Any]) -> bytes:
    return encode_line({"id": request_id, "ok": True, "result": dict(result)})


def error_reply(request_id: RequestId | None, code: str, message: str) -> bytes:
    return encode_line({"id": request_id, "ok": False,
                        "error": {"code": code, "message": message}})


def encode_state(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def decode_state(text: str) -> bytes:
    """The restore-state blob, or ControlError(bad-argument): strict base64, no garbage."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ControlError(BAD_ARGUMENT, f"state is not valid base64: {exc}") from None


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds and a Z, e.g. 2025-01-31T12:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(kind: str, data: Mapping[str, Any] | None = None,
               time: str | None = None) -> dict[str, Any]:
    """An event line's object, stamped now unless `time` is given."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("event kind must be a non-empty string")
    return {"event": kind, "time": time or utc_now(), "data": dict(data or {})}


def parse_reply(line: bytes) -> dict[str, Any]:
    """A reply or event line as received by a client; ValueError if it is neither."""
    obj = json.loads(line.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "event" in obj:
        return obj
    if "ok" not in obj or "id" not in obj:
        raise ValueError("reply lacks 'id' or 'ok'")
    if obj["ok"] is True:
        if not isinstance(obj.get("result"), dict):
            raise ValueError("ok reply lacks a result object")
    else:
        error = obj.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise ValueError("error reply lacks an error object with a code")
    return obj


def reply_error(reply: Mapping[str, Any]) -> ControlError:
    """The ControlError an error reply stands for."""
    error = reply["error"]
    return ControlError(str(error["code"]), str(error.get("message", "")))
