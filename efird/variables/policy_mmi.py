"""EDK2's VarCheckPolicyLib MMI handler (gVarCheckPolicyLibMmiHandlerGuid).

Layouts are VarCheckPolicyMmi.h's (#pragma pack(1)); statuses follow
VarCheckPolicyLibMmiHandler. The DUMP pagination keeps one table snapshot between
page 0 and the last page, as EDK2 does.
"""

from __future__ import annotations

import struct

from efird.abi import layouts as L
from efird.abi.layouts import PolicyCommand as C
from efird.efi.status import Status
from efird.efi.ucs2 import decode_units
from efird.envelope import Refusal
from efird.variables import policy as P
from efird.variables.service import VariableService

_HDR = L.VAR_CHECK_POLICY_COMM_HEADER
_DUMP = L.VAR_CHECK_POLICY_COMM_DUMP_PARAMS
_INFO = L.VAR_CHECK_POLICY_COMM_GET_INFO_PARAMS
_ENTRY = L.VARIABLE_POLICY_ENTRY
_STATE = L.VARIABLE_LOCK_ON_VAR_STATE_POLICY
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
RESULT_OFFSET = _HDR.offsets["Result"]


class PolicyMmiHandler:
    def __init__(self, service: VariableService) -> None:
        self.service = service
        self._dump_cache: bytes | None = None

    def __call__(self, buf: bytearray, start: int, length: int) -> None:
        if length < _HDR.size:
            raise Refusal(Status.BAD_BUFFER_SIZE,
                          "payload shorter than VAR_CHECK_POLICY_COMM_HEADER")
        signature, revision, command, _result = _HDR.struct.unpack_from(buf, start)
        p, avail = start + _HDR.size, length - _HDR.size
        if command != C.DUMP:
            self._dump_cache = None
        if signature != L.VAR_CHECK_POLICY_COMM_SIG or revision != L.VAR_CHECK_POLICY_COMM_REVISION:
            status = Status.INVALID_PARAMETER
        else:
            status = self._command(command, buf, p, avail)
        _Q.pack_into(buf, start + RESULT_OFFSET, status)

    @property
    def policy(self) -> P.VariablePolicy:
        return self.service.policy  # replaced on platform reset: always look it up

    def _command(self, command: int, buf: bytearray, p: int, avail: int) -> Status:
        if command == C.DISABLE:
            return self.policy.disable()
        if command == C.IS_ENABLED:
            if avail < 1:
                return Status.INVALID_PARAMETER
            buf[p] = int(self.policy.enabled)
            return Status.SUCCESS
        if command == C.REGISTER:
            return self._register(buf, p, avail)
        if command == C.DUMP:
            return self._dump(buf, p, avail)
        if command == C.LOCK:
            return self.policy.lock()
        if command in (C.GET_INFO, C.GET_LOCK_VAR_STATE_INFO):
            return self._get_info(buf, p, avail, command == C.GET_LOCK_VAR_STATE_INFO)
        return Status.UNSUPPORTED

    def _register(self, buf: bytearray, p: int, avail: int) -> Status:
        if self.policy.locked:
            return Status.WRITE_PROTECTED
        if avail < _ENTRY.size:
            return Status.INVALID_PARAMETER
        (size,) = struct.unpack_from("<H", buf, p + _ENTRY.offsets["Size"])
        if size > avail:
            return Status.INVALID_PARAMETER
        parsed = P.parse_policy(bytes(buf[p : p + size]))
        if parsed is None:
            return Status.INVALID_PARAMETER
        return self.policy.register(parsed)

    def _dump(self, buf: bytearray, p: int, avail: int) -> Status:
        capacity = avail - _DUMP.size
        if capacity <= 0:
            return Status.INVALID_PARAMETER
        (page,) = _I.unpack_from(buf, p)
        if page == 0:
            self._dump_cache = self.policy.dump()
            total = len(self._dump_cache)
            _DUMP.struct.pack_into(buf, p, 0, total, 0, int(total > 0))
            if not total:
                self._dump_cache = None
            return Status.SUCCESS
        if self._dump_cache is None:
            _DUMP.struct.pack_into(buf, p, page, 0, 0, 0)
            return Status.TIMEOUT
        table = self._dump_cache
        pages = -(-len(table) // capacity)
        if page > pages:
            return Status.INVALID_PARAMETER
        chunk = table[(page - 1) * capacity : page * capacity]
        more = page < pages
        _DUMP.struct.pack_into(buf, p, page, len(table), len(chunk), int(more))
        buf[p + _DUMP.size : p + _DUMP.size + len(chunk)] = chunk
        if not more:
            self._dump_cache = None
        return Status.SUCCESS

    def _get_info(self, buf: bytearray, p: int, avail: int, lock_state: bool) -> Status:
        if avail < _INFO.size:
            return Status.INVALID_PARAMETER
        guid, in_size, out_capacity, _entry = _INFO.struct.unpack_from(buf, p)
        name_at = p + _INFO.size
        if in_size > avail - _INFO.size or in_size < 2 or in_size % 2:
            return Status.INVALID_PARAMETER
        raw = bytes(buf[name_at : name_at + in_size])
        if raw[-2:] != b"\0\0":
            return Status.INVALID_PARAMETER
        name = decode_units(raw[:-2]).split("\0", 1)[0]
        found, _prio = self.policy.best_match(guid, name)
        buf[p + _INFO.offsets["OutputPolicyEntry"] : p + _INFO.size] = bytes(_ENTRY.size)
        if found is None or (lock_state and found.lock_type != P.TYPE_LOCK_ON_VAR_STATE):
            return Status.NOT_FOUND
        packed = found.pack()
        if lock_state:
            entry = packed[_ENTRY.size : _ENTRY.size + _STATE.size]
            out_name = packed[_ENTRY.size + _STATE.size : _ENTRY.size + _STATE.size
                              + 2 * len(found.state_name) + 2]
        else:
            entry = packed[: _ENTRY.size]
            out_name = packed[_ENTRY.size + (len(packed) - _ENTRY.size
                                             - (2 * len(found.name) + 2 if found.name else 0)):]
            if found.name is None:
                out_name = b""
        at = p + _INFO.offsets["OutputPolicyEntry"]
        buf[at : at + len(entry)] = entry
        _I.pack_into(buf, p + _INFO.offsets["OutputVariableNameSize"], len(out_name))
        if len(out_name) > out_capacity or len(out_name) > avail - _INFO.size - in_size:
            return Status.BUFFER_TOO_SMALL
        out_at = name_at + in_size
        buf[out_at : out_at + len(out_name)] = out_name
        return Status.SUCCESS
