"""Variable policy: EDK2's VariablePolicyLib (MdeModulePkg/Library/VariablePolicyLib).

Firmware registers policies before EndOfDxe (size bounds, attributes that must or must
not be set, and a lock type); SetVariable consults the best-matching policy for every
write. Policies live for one boot: a platform reset clears them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from efird.abi import layouts as L
from efird.efi.attributes import AP
from efird.efi.status import Status
from efird.efi.ucs2 import first_string
from efird.variables.model import Variable

REVISION = 0x00010000
NO_MAX_SIZE = 0xFFFFFFFF
TYPE_NO_LOCK, TYPE_LOCK_NOW, TYPE_LOCK_ON_CREATE, TYPE_LOCK_ON_VAR_STATE = 0, 1, 2, 3
WILDCARD = "#"
MATCH_EXACT = 0
MATCH_NAMESPACE_ONLY = 255  # EDK2 MATCH_PRIORITY_MIN
MAX_WILDCARDS = 254

_ENTRY = L.VARIABLE_POLICY_ENTRY
_STATE = L.VARIABLE_LOCK_ON_VAR_STATE_POLICY

Lookup = Callable[[bytes, str], "Variable | None"]


@dataclass(frozen=True)
class Policy:
    namespace: bytes
    name: str | None  # None: every variable in the namespace
    min_size: int
    max_size: int
    must_have: int
    cant_have: int
    lock_type: int
    state_namespace: bytes = b""
    state_name: str = ""
    state_value: int = 0

    def match_priority(self, guid: bytes, name: str) -> int | None:
        """EDK2 EvaluatePolicyMatch: None for no match, else lower is better."""
        if guid != self.namespace:
            return None
        if self.name is None:
            return MATCH_NAMESPACE_ONLY
        if len(self.name) != len(name):
            return None
        wildcards = 0
        for want, got in zip(self.name, name, strict=True):
            if want == WILDCARD and got in "0123456789abcdefABCDEF":
                wildcards += 1
            elif want != got:
                return None
        return MATCH_EXACT + wildcards

    def pack(self) -> bytes:
        """The VARIABLE_POLICY_ENTRY (plus lock policy and name) as registered."""
        lock = b""
        if self.lock_type == TYPE_LOCK_ON_VAR_STATE:
            lock = _STATE.build(Namespace=self.state_namespace, Value=self.state_value,
                                Reserved=0) + _name(self.state_name)
        name = _name(self.name) if self.name is not None else b""
        offset = _ENTRY.size + len(lock)
        head = _ENTRY.build(Version=REVISION, Size=offset + len(name), OffsetToName=offset,
                            Namespace=self.namespace, MinSize=self.min_size,
                            MaxSize=self.max_size, AttributesMustHave=self.must_have,
                            AttributesCantHave=self.cant_have, LockPolicyType=self.lock_type,
                            Padding=b"\0\0\0")
        return head + lock + name


def _name(text: str) -> bytes:
    return text.encode("utf-16-le", errors="surrogatepass") + b"\0\0"


def parse_policy(raw: bytes) -> Policy | None:
    """EDK2 IsValidVariablePolicyStructure, then the parsed policy; None if invalid."""
    if len(raw) < _ENTRY.size:
        return None
    (version, size, offset_to_name, namespace, min_size, max_size, must, cant, lock_type,
     _pad) = _ENTRY.struct.unpack_from(raw)
    if version != REVISION or size < _ENTRY.size or size > len(raw):
        return None
    if offset_to_name < _ENTRY.size or offset_to_name > size:
        return None
    if lock_type > TYPE_LOCK_ON_VAR_STATE or max_size == 0:
        return None
    state_ns, state_name, state_value = b"", "", 0
    if lock_type == TYPE_LOCK_ON_VAR_STATE:
        start = _ENTRY.size + _STATE.size
        if offset_to_name < start + 2:
            return None
        state_ns, state_value, _reserved = _STATE.struct.unpack_from(raw, _ENTRY.size)
        text = first_string(raw[start:offset_to_name])
        if not text or start + 2 * len(text) + 2 != offset_to_name:
            return None
        state_name = text
    elif offset_to_name != _ENTRY.size:
        return None
    name: str | None = None
    if size > offset_to_name:
        name_raw = raw[offset_to_name:size]
        text = first_string(name_raw)
        if not text or len(name_raw) != 2 * len(text) + 2 or text.count(WILDCARD) > MAX_WILDCARDS:
            return None
        name = text
    return Policy(bytes(namespace), name, min_size, max_size, must, cant, lock_type,
                  bytes(state_ns), state_name, state_value)


class VariablePolicy:
    """The policy table and its switches for one boot."""

    def __init__(self, *, allow_disable: bool = False) -> None:
        self.policies: list[Policy] = []
        self.enabled = True
        self.locked = False  # the interface: no registrations, no disable
        self.allow_disable = allow_disable  # EDK2 PcdAllowVariablePolicyEnforcementDisable

    def best_match(self, guid: bytes, name: str) -> tuple[Policy | None, int]:
        best: Policy | None = None
        best_priority = MATCH_NAMESPACE_ONLY + 1
        for p in self.policies:
            prio = p.match_priority(guid, name)
            if prio is not None and prio < best_priority:
                best, best_priority = p, prio
        return best, best_priority

    def register(self, policy: Policy) -> Status:
        """RegisterVariablePolicy. As in EDK2, the duplicate check looks the new policy's
        name up as a variable name, so only identical wildcard-free names collide."""
        if self.locked:
            return Status.WRITE_PROTECTED
        if policy.name:
            _match, prio = self.best_match(policy.namespace, policy.name)
            if prio == MATCH_EXACT:
                return Status.ALREADY_STARTED
        self.policies.append(policy)
        return Status.SUCCESS

    def register_lock_now(self, guid: bytes, name: str) -> Status:
        """VariableLockRequestToLock: a LOCK_NOW policy; an existing lock counts as done."""
        status = self.register(Policy(guid, name, 0, NO_MAX_SIZE, 0, 0, TYPE_LOCK_NOW))
        if status is Status.ALREADY_STARTED:
            policy, _ = self.best_match(guid, name)
            locked = policy is not None and policy.lock_type == TYPE_LOCK_NOW
            return Status.SUCCESS if locked else Status.ACCESS_DENIED
        return status

    def disable(self) -> Status:
        if not self.enabled:
            return Status.ALREADY_STARTED
        if self.locked or not self.allow_disable:
            return Status.WRITE_PROTECTED
        self.enabled = False
        return Status.SUCCESS

    def lock(self) -> Status:
        if self.locked:
            return Status.WRITE_PROTECTED
        self.locked = True
        return Status.SUCCESS

    def end_of_dxe(self) -> None:
        """EndOfDxe locks the interface (EDK2 calls LockVariablePolicy there)."""
        self.locked = True

    def check_set(self, guid: bytes, name: str, attributes: int, payload: bytes,
                  lookup: Lookup) -> Status | None:
        """EDK2 ValidateSetVariable: None if the write may proceed, else its status."""
        if not self.enabled or not self.policies:
            return None
        policy, _ = self.best_match(guid, name)
        if policy is None:
            return None
        deleting = not payload and not attributes & AP
        if not deleting:
            size = len(payload)
            if (policy.min_size and size < policy.min_size) or (
                    policy.max_size and size > policy.max_size):
                return Status.INVALID_PARAMETER
            if attributes & policy.must_have != policy.must_have or attributes & policy.cant_have:
                return Status.INVALID_PARAMETER
        if policy.lock_type == TYPE_LOCK_NOW:
            return Status.WRITE_PROTECTED
        if policy.lock_type == TYPE_LOCK_ON_CREATE and lookup(guid, name) is not None:
            return Status.WRITE_PROTECTED
        if policy.lock_type == TYPE_LOCK_ON_VAR_STATE:
            state = lookup(policy.state_namespace, policy.state_name)
            if state is not None and len(state.data) == 1 and state.data[0] == policy.state_value:
                return Status.WRITE_PROTECTED
        return None

    def dump(self) -> bytes:
        return b"".join(p.pack() for p in self.policies)

