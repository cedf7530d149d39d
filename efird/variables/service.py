"""The UEFI variable services: GetVariable, GetNextVariableName, SetVariable and
QueryVariableInfo, with every rule of UEFI 2.10 §8.2 and EDK2 as the tie-breaker
(MdeModulePkg/Universal/Variable/RuntimeDxe/Variable.c, cited per rule below).

The service is transport-free and synchronous: the SMM protocol handler, `efird call`,
the daemon and the CLI all drive this one object. All variables live in memory in a
sorted map (O(log n) lookup and enumeration step); non-volatile ones are committed to
the store *before* memory changes, so a failed write leaves both unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sortedcontainers import SortedDict

from efird.efi import guid as g
from efird.efi import time as efitime
from efird.efi.attributes import (
    AP,
    AT,
    ATTRIBUTES_MASK,
    AW,
    BS,
    HR,
    NV,
    RT,
    STORED_MASK,
)
from efird.efi.status import EfiError, Status
from efird.efi.time import EfiTime
from efird.log import Throttle, get_logger
from efird.store.base import StoreError, StoreFullError, VariableStore
from efird.variables import authvars, secureboot
from efird.variables.limits import VARIABLE_HEADER_SIZE, Limits, WriteBudget, footprint
from efird.variables.model import Key, Variable
from efird.variables.policy import VariablePolicy
from efird.variables.secureboot import Mode, SecureBootState

log = get_logger("efird.variables")

_HW_ERR_PREFIX = "HwErrRec"


@dataclass
class Phase:
    """Boot phase as the guest announced it. Reset by a platform reset."""

    end_of_dxe: bool = False
    ready_to_boot: bool = False
    at_runtime: bool = False  # after ExitBootServices


@dataclass
class Counters:
    gets: int = 0
    sets: int = 0
    set_failures: int = 0
    store_errors: int = 0
    rate_limited: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    # EDK2 PcdRequireSelfSignedPk: in setup mode, must a new PK be signed by itself?
    # OVMF ships it FALSE, and so does efird.
    require_self_signed_pk: bool = False


def _is_hw_err_rec(guid: bytes, name: str) -> bool:
    """EDK2 IsHwErrRecVariable: HwErrRec#### in the hardware error namespace."""
    if guid != g.EFI_HARDWARE_ERROR_VARIABLE or len(name) != len(_HW_ERR_PREFIX) + 4:
        return False
    if not name.startswith(_HW_ERR_PREFIX):
        return False
    return all(c in "0123456789abcdefABCDEF" for c in name[len(_HW_ERR_PREFIX):])


class VariableService:
    """One domain's variables."""

    def __init__(self, store: VariableStore, limits: Limits | None = None,
                 options: Options | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.options = options or Options()
        self.phase = Phase()
        self.policy = VariablePolicy()
        self.counters = Counters()
        self.nv_writes = WriteBudget(self.limits.nv_write_rate, self.limits.nv_write_burst)
        self._throttle = Throttle()
        self._from_host = False  # set for the duration of a host-made set_variable
        # told about every SECURITY_VIOLATION (the daemon turns it into a toolstack event)
        self.on_security_violation: Callable[[bytes, str], None] | None = None
        self._all: SortedDict = SortedDict()  # Key -> Variable, every variable
        self._rt: SortedDict = SortedDict()  # Key -> Variable, those with RUNTIME_ACCESS
        self._used = {"nv": 0, "hr": 0, "volatile": 0}
        self.sb = SecureBootState()
        self.reload()

    # ------------------------------------------------------------------ state ---
    def reload(self) -> None:
        """(Re)load non-volatile variables from the store; volatile ones are kept.

        Everything is read and verified before anything in memory changes: a store that
        fails to load (StoreError) leaves the service as it was, never half-loaded."""
        loaded = list(self.store.load())  # one row per key: a bulk build, sorted once
        sb = SecureBootState.from_meta(
            {k: self.store.get_meta(k) for k in SecureBootState().meta()})
        volatile = [v for v in self._all.values() if not v.attributes & NV]
        self._all.clear()
        self._rt.clear()
        self._used = {"nv": 0, "hr": 0, "volatile": 0}
        self._all.update((v.key, v) for v in loaded)
        self._rt.update((v.key, v) for v in loaded if v.attributes & RT)
        for v in loaded:
            self._used[self._bucket(v)] += footprint(v.name_size, len(v.data))
        self.sb = sb
        for v in volatile:
            if v.key not in secureboot.FIRMWARE_OWNED:
                self._insert(v)
        self._refresh_firmware_variables()

    def restore_volatile(self, volatile: list[Variable], phase: Phase) -> None:
        """Migration: take another daemon's volatile variables and boot phase."""
        for v in [v for v in self._all.values()
                  if not v.attributes & NV and v.key not in secureboot.FIRMWARE_OWNED]:
            self._remove(v.key)
        for v in volatile:
            self._insert(v)
        self.phase = phase

    def platform_reset(self) -> None:
        """Cold/warm reset: volatile variables, phase and policies start afresh."""
        for v in [v for v in self._all.values() if not v.attributes & NV]:
            self._remove(v.key)
        self.phase = Phase()
        self.policy = VariablePolicy()
        self._refresh_firmware_variables()

    def _bucket(self, v: Variable) -> str:
        if not v.attributes & NV:
            return "volatile"
        return "hr" if v.attributes & HR else "nv"

    def _insert(self, v: Variable) -> None:
        key = v.key
        old = self._all.get(key)
        if old is not None:
            if old.attributes != v.attributes:
                self._remove(key)
            else:  # same key, same indexes: replace the value in place
                self._used[self._bucket(old)] -= footprint(old.name_size, len(old.data))
        self._all[key] = v
        if v.attributes & RT:
            self._rt[key] = v
        self._used[self._bucket(v)] += footprint(v.name_size, len(v.data))

    def _remove(self, key: Key) -> None:
        v = self._all.pop(key)
        self._rt.pop(key, None)
        self._used[self._bucket(v)] -= footprint(v.name_size, len(v.data))

    def _refresh_firmware_variables(self) -> None:
        for v in secureboot.firmware_variables(self.sb, secureboot.PK in self._all):
            self._insert(v)

    @property
    def mode(self) -> Mode:
        return self.sb.mode(secureboot.PK in self._all)

    def variables(self) -> list[Variable]:
        """Every variable, in enumeration order (for tools; ignores the phase)."""
        return list(self._all.values())

    def find(self, guid: bytes, name: str) -> Variable | None:
        """A variable whatever the phase (for tools), or None."""
        v: Variable | None = self._all.get((guid, name))
        return v

    def lookup(self, guid: bytes, name: str) -> Variable | None:
        """A variable as the guest would see it now, or None."""
        v: Variable | None = self._visible().get((guid, name))
        return v

    def _visible(self) -> SortedDict:
        return self._rt if self.phase.at_runtime else self._all

    # ------------------------------------------------------------- GetVariable ---
    def get_variable(self, guid: bytes, name: str, data_size: int
                     ) -> tuple[Status, int, int, bytes]:
        """(status, attributes, data size, data). BUFFER_TOO_SMALL reports the needed
        size and the attributes but no data (EDK2 VariableServiceGetVariable)."""
        self.counters.gets += 1
        if not name:
            return Status.NOT_FOUND, 0, data_size, b""
        v = self._visible().get((guid, name))
        if v is None:
            return Status.NOT_FOUND, 0, data_size, b""
        if data_size < len(v.data):
            return Status.BUFFER_TOO_SMALL, v.attributes, len(v.data), b""
        return Status.SUCCESS, v.attributes, len(v.data), v.data

    # ----------------------------------------------------- GetNextVariableName ---
    def get_next_variable_name(self, guid: bytes, name: str, name_size: int
                               ) -> tuple[Status, bytes, str, int]:
        """(status, next guid, next name, NameSize). `name` empty starts the walk.

        UEFI 2.10 §8.2.2 / EDK2 VariableServiceGetNextVariableInternal: a name/GUID
        pair that is not an existing (visible) variable is INVALID_PARAMETER; the end
        of the list is NOT_FOUND; a short buffer is BUFFER_TOO_SMALL with the size.
        """
        visible = self._visible()
        if name:
            key = (guid, name)
            if key not in visible:
                return Status.INVALID_PARAMETER, guid, name, name_size
            following = visible.irange(minimum=key, inclusive=(False, True))
        else:
            following = iter(visible)
        found = next(following, None)  # one O(log n) descent, whatever the map's history
        if found is None:
            return Status.NOT_FOUND, guid, name, name_size
        next_guid, next_name = found
        needed = 2 * len(next_name) + 2
        if name_size < needed:
            return Status.BUFFER_TOO_SMALL, guid, name, needed
        return Status.SUCCESS, next_guid, next_name, needed

    # ------------------------------------------------------- QueryVariableInfo ---
    def query_variable_info(self, attributes: int) -> tuple[Status, int, int, int]:
        """(status, MaximumVariableStorageSize, RemainingVariableStorageSize,
        MaximumVariableSize); EDK2 VariableServiceQueryVariableInfo(Internal)."""
        if attributes == 0:
            return Status.INVALID_PARAMETER, 0, 0, 0
        if attributes & AW or attributes & ATTRIBUTES_MASK == 0:
            return Status.UNSUPPORTED, 0, 0, 0
        if attributes & ATTRIBUTES_MASK == NV or attributes & (RT | BS) == RT:
            return Status.INVALID_PARAMETER, 0, 0, 0
        if self.phase.at_runtime and not attributes & RT:
            return Status.INVALID_PARAMETER, 0, 0, 0
        if attributes & (NV | HR) == HR:
            return Status.INVALID_PARAMETER, 0, 0, 0
        lim = self.limits
        if attributes & HR:
            total, used = lim.hr_storage, self._used["hr"]
            max_size = lim.max_hr_variable_size
        elif attributes & NV:
            total, used = lim.nv_storage, self._used["nv"]
            max_size = lim.max_auth_variable_size if attributes & AT else lim.max_variable_size
        else:
            total, used = lim.volatile_storage, self._used["volatile"]
            max_size = (lim.max_auth_variable_size if attributes & AT
                        else lim.max_volatile_variable_size)
        remaining = max(0, total - used)
        max_size = max(0, min(max_size, remaining) - VARIABLE_HEADER_SIZE)
        return Status.SUCCESS, total, remaining, max_size

    def _log_throttled(self, level: str, event: str, **data: object) -> None:
        """Once per window and kind (a guest can make every write fail)."""
        held = self._throttle.admit(event)
        if held is not None:
            getattr(log, level)(event, suppressed_since_last=held, **data)

    # ------------------------------------------------------------- SetVariable ---
    def set_variable(self, guid: bytes, name: str, attributes: int, data: bytes,
                     *, operator: bool = False, from_host: bool = False) -> Status:
        """Apply one SetVariable. Never raises for anything a caller can send.

        `operator` marks a write from the host's management CLI: it passes the same
        checks, except that it may change firmware-owned Secure Boot state the way a
        platform's physical-presence path can (see efird vars). `from_host` marks any
        write the host makes (efird vars): the guest's rules apply, its write budget
        (Limits.nv_write_rate) does not.
        """
        self.counters.sets += 1
        self._from_host = from_host
        try:
            self._set(guid, name, attributes, bytes(data), operator)
            status = Status.SUCCESS
        except EfiError as exc:
            status = exc.status
            log.debug("set_variable refused", name=name, guid=g.guid_str(guid),
                      status=status.name, reason=exc.reason)
            if exc.status is Status.OUT_OF_RESOURCES and exc.reason.endswith("rate limit"):
                self._log_throttled("warning", "non-volatile write rate limit reached",
                                    rate=self.limits.nv_write_rate,
                                    burst=self.limits.nv_write_burst)
        except StoreFullError as exc:
            self.counters.store_errors += 1
            self._log_throttled("error", "store full", error=str(exc))
            status = Status.OUT_OF_RESOURCES
        except StoreError as exc:
            self.counters.store_errors += 1
            self._log_throttled("error", "store write failed", error=str(exc))
            status = Status.DEVICE_ERROR
        if status is Status.SECURITY_VIOLATION and self.on_security_violation is not None:
            self.on_security_violation(guid, name)
        self._from_host = False
        if status is not Status.SUCCESS:
            self.counters.set_failures += 1
            self.counters.by_status[status.name] = self.counters.by_status.get(status.name, 0) + 1
        return status

    def _set(self, guid: bytes, name: str, attributes: int, data: bytes,
             operator: bool) -> None:
        key = (guid, name)
        # VariableServiceSetVariable (Variable.c): argument and attribute checks, in order.
        if not name:
            raise EfiError(Status.INVALID_PARAMETER, "empty name")
        if attributes & ~(ATTRIBUTES_MASK | AW):
            raise EfiError(Status.INVALID_PARAMETER, "reserved attribute bits")
        refuse = Status.UNSUPPORTED if attributes & AW else Status.INVALID_PARAMETER
        if attributes & (RT | BS) == RT:
            raise EfiError(refuse, "RUNTIME_ACCESS without BOOTSERVICE_ACCESS")
        if attributes & ATTRIBUTES_MASK == NV:
            raise EfiError(refuse, "NON_VOLATILE alone")
        if attributes & AW:
            raise EfiError(Status.UNSUPPORTED, "counter-based authenticated variables")
        if attributes & HR and attributes & (NV | BS | RT) != (NV | BS | RT):
            # VarCheckUefiLib's property for HwErrRec####: NV|BS|RT|HR.
            raise EfiError(Status.INVALID_PARAMETER, "HARDWARE_ERROR_RECORD needs NV|BS|RT")

        auth: authvars.AuthWrite | None = None
        payload = data
        if attributes & AT:
            auth = authvars.split_auth2(data)
            payload = auth.payload

        # Size limits compare header + name + payload: INVALID_PARAMETER.
        size = footprint(2 * len(name) + 2, len(payload))
        lim = self.limits
        if attributes & HR:
            if size > lim.max_hr_variable_size:
                raise EfiError(Status.INVALID_PARAMETER, "hardware error record too large")
            if not _is_hw_err_rec(guid, name):
                raise EfiError(Status.INVALID_PARAMETER, "HR variable must be HwErrRec####")
        elif attributes & AT:
            if size > lim.max_auth_variable_size:
                raise EfiError(Status.INVALID_PARAMETER, "authenticated variable too large")
        elif attributes & NV:
            if size > lim.max_variable_size:
                raise EfiError(Status.INVALID_PARAMETER, "variable too large")
        elif size > lim.max_volatile_variable_size:
            raise EfiError(Status.INVALID_PARAMETER, "volatile variable too large")

        # The firmware-owned Secure Boot variables are read-only in every phase (EDK2 leaves
        # them writable until EndOfDxe; QEMU 10 always does: neither is acceptable here).
        if key in secureboot.READ_ONLY and not operator:
            raise EfiError(Status.WRITE_PROTECTED, "firmware-owned variable")
        # Variable policy (VarCheckLibSetVariableCheck): enforced from EndOfDxe on.
        if self.phase.end_of_dxe and not operator:
            verdict = self.policy.check_set(guid, name, attributes, payload, self.lookup)
            if verdict is not None:
                raise EfiError(verdict, "refused by variable policy")

        existing = self._all.get(key)
        if existing is not None:
            if self.phase.at_runtime and not existing.attributes & RT:
                raise EfiError(Status.WRITE_PROTECTED, "boot-services variable after EBS")
            if attributes and attributes & ~AP != existing.attributes:
                raise EfiError(Status.INVALID_PARAMETER, "attributes differ from the variable's")

        # AuthVariableLibProcessVariable: who may write what.
        if key in secureboot.MODE_SWITCHES:
            self._set_mode_switch(key, attributes, payload, existing, operator)
        elif key in (secureboot.PK, secureboot.KEK) or key in secureboot.SECURITY_DATABASES:
            self._process_key_variable(key, attributes, auth, existing, operator)
        elif auth is not None:
            self._process_private(key, attributes, auth, existing)
        elif existing is not None and existing.attributes & (AT | AW):
            raise EfiError(Status.WRITE_PROTECTED, "authenticated variable needs a signed write")
        else:
            self._update(key, attributes, payload, existing)

    # -------------------------------------------------------- UpdateVariable ---
    def _update(self, key: Key, attributes: int, payload: bytes, existing: Variable | None,
                *, timestamp: bytes | None = None, signer: bytes | None = None,
                meta: dict[str, bytes] | None = None, keep_on_empty_append: bool = False
                ) -> bool:
        """EDK2 UpdateVariable. Returns True when the variable was deleted."""
        append = bool(attributes & AP)
        stored_attrs = attributes & STORED_MASK
        if existing is not None:
            if self.phase.at_runtime:
                if not existing.attributes & NV:
                    raise EfiError(Status.WRITE_PROTECTED, "volatile variable after EBS")
                if not existing.attributes & RT:
                    raise EfiError(Status.INVALID_PARAMETER, "boot-services variable after EBS")
            if (not append and not payload) or not attributes & (RT | BS):
                self._commit_delete(existing, meta)
                return True
            if append and not payload and not (keep_on_empty_append and timestamp) and not meta:
                # An append of nothing changes nothing (QEMU 10 deletes here).
                return False
            if not append and payload == existing.data and timestamp is None and not meta:
                return False
            new_data = existing.data + payload if append else payload
            new_ts = existing.timestamp
            if timestamp is not None and (not append or EfiTime.unpack(timestamp).ordering_key()
                                          > EfiTime.unpack(existing.timestamp).ordering_key()):
                new_ts = timestamp
            new = Variable(key[0], key[1], existing.attributes, new_data, new_ts,
                           existing.signer if signer is None else signer)
        else:
            if not payload and append:
                return False
            if not payload or not attributes & (RT | BS):
                raise EfiError(Status.NOT_FOUND, "delete of a variable that does not exist")
            if self.phase.at_runtime and attributes & (RT | NV) != (RT | NV):
                raise EfiError(Status.INVALID_PARAMETER,
                               "only NV|RT variables can be created after EBS")
            new = Variable(key[0], key[1], stored_attrs, payload, timestamp or efitime.ZERO,
                           signer or b"")
        self._check_size(new)
        self._check_quota(new, existing)
        self._commit_put(new, meta)
        return False

    def _check_size(self, v: Variable) -> None:
        lim = self.limits
        size = footprint(v.name_size, len(v.data))
        if v.attributes & HR:
            limit = lim.max_hr_variable_size
        elif v.attributes & (AT | AW):
            limit = lim.max_auth_variable_size
        elif v.attributes & NV:
            limit = lim.max_variable_size
        else:
            limit = lim.max_volatile_variable_size
        if size > limit:
            raise EfiError(Status.INVALID_PARAMETER, "result larger than the maximum variable size")

    def _check_quota(self, new: Variable, existing: Variable | None) -> None:
        bucket = self._bucket(new)
        total = {"nv": self.limits.nv_storage, "hr": self.limits.hr_storage,
                 "volatile": self.limits.volatile_storage}[bucket]
        used = self._used[bucket] + footprint(new.name_size, len(new.data))
        if existing is not None:
            used -= footprint(existing.name_size, len(existing.data))
        if used > total:
            raise EfiError(Status.OUT_OF_RESOURCES, f"{bucket} storage quota exhausted")

    def _spend_write(self) -> None:
        """One durable write from the guest's budget (Limits.nv_write_rate)."""
        if not self._from_host and not self.nv_writes.take():
            self.counters.rate_limited += 1
            raise EfiError(Status.OUT_OF_RESOURCES, "non-volatile write rate limit")

    def _commit_put(self, v: Variable, meta: dict[str, bytes] | None) -> None:
        if v.attributes & NV or meta:
            self._spend_write()
            self.store.commit(puts=[v] if v.attributes & NV else [], meta=meta)
        self._insert(v)

    def _commit_delete(self, v: Variable, meta: dict[str, bytes] | None) -> None:
        if v.attributes & NV or meta:
            self._spend_write()
            self.store.commit(deletes=[v.key] if v.attributes & NV else [], meta=meta)
        self._remove(v.key)

    # ------------------------------------------------ Secure Boot key variables ---
    def _trusted(self, key: Key) -> list[bytes]:
        v = self._all.get(key)
        return authvars.certificates_of(v.data) if v is not None else []

    def _authorize_key_write(self, key: Key, attributes: int, auth: authvars.AuthWrite,
                             existing: Variable | None, mode: Mode) -> None:
        """The signature a PK/KEK/db/dbx/dbt write needs in user or deployed mode
        (ProcessVarWithPk, ProcessVarWithKek)."""
        append = bool(attributes & AP)
        authvars.check_descriptor(auth, existing.timestamp if existing else None, append)
        pk_certs = self._trusted(secureboot.PK)
        if key in (secureboot.PK, secureboot.KEK):
            authvars.verify_signed_by(key[1], key[0], attributes, auth, pk_certs)
            return
        try:
            authvars.verify_signed_by(key[1], key[0], attributes, auth, pk_certs)
            return
        except EfiError:
            if secureboot.KEK not in self._all:
                # EDK2 returns the KEK lookup's status here, not SECURITY_VIOLATION.
                raise EfiError(Status.NOT_FOUND, "no KEK to verify against") from None
        authvars.verify_signed_by(key[1], key[0], attributes, auth,
                                  self._trusted(secureboot.KEK))

    def _process_key_variable(self, key: Key, attributes: int,
                              auth: authvars.AuthWrite | None, existing: Variable | None,
                              operator: bool) -> None:
        """PK, KEK, db, dbx, dbt: NV, time-based, signed by the hierarchy outside setup mode."""
        is_pk = key == secureboot.PK
        if not attributes & NV or auth is None:
            raise EfiError(Status.INVALID_PARAMETER, "key variables must be NV and time-based")
        mode = self.mode
        in_setup = mode in (Mode.SETUP, Mode.AUDIT)
        if operator:
            pass  # the host's physical-presence path: no signature, as EDK2's custom mode
        elif not in_setup:
            self._authorize_key_write(key, attributes, auth, existing, mode)
        elif is_pk and (self.options.require_self_signed_pk or self.sb.require_self_signed_pk):
            # PcdRequireSelfSignedPk: the new PK must have signed itself.
            authvars.check_descriptor(auth, None, False)
            authvars.verify_signed_by(key[1], key[0], attributes, auth,
                                      authvars.certificates_of(auth.payload)[:1])
        authvars.check_signature_lists(auth.payload, is_pk=is_pk)
        append = bool(attributes & AP)
        if append and not auth.payload:
            return  # an append of nothing changes nothing (QEMU 10 deletes the variable)
        payload = auth.payload
        if append and existing is not None and not is_pk:
            payload = authvars.filter_append(existing.data, auth.payload)
        deleting = not auth.payload and not append

        new_sb = replace(self.sb)
        if is_pk and not deleting and mode is Mode.AUDIT:
            new_sb.audit, new_sb.deployed = False, True  # Audit -> Deployed (§32.3.3)
        if is_pk and deleting:
            new_sb.deployed = False  # a signed PK delete leaves Deployed Mode too (§32.3.4)
        if not in_setup and not operator:
            new_sb.vendor_keys = False  # VendorKeyIsModified
        meta = new_sb.meta() if new_sb != self.sb else None
        # When every appended entry was already there the value stays as it is, but the
        # timestamp may advance (EDK2 keeps the later of the two).
        self._update(key, attributes, payload, existing, timestamp=auth.timestamp, meta=meta,
                     keep_on_empty_append=True)
        self.sb = new_sb
        self._refresh_firmware_variables()

    def _process_private(self, key: Key, attributes: int, auth: authvars.AuthWrite,
                         existing: Variable | None) -> None:
        """Any other time-based variable: signed by whoever created it (EDK2 CertDB)."""
        append = bool(attributes & AP)
        authvars.check_descriptor(auth, existing.timestamp if existing else None, append)
        sd = authvars.parse_signature(auth)
        record = authvars.private_signer_record(sd)
        identity, top = authvars.split_signer_record(record)
        if existing is not None and existing.signer:
            stored_identity, stored_top = authvars.split_signer_record(existing.signer)
            if identity != stored_identity:
                raise EfiError(Status.SECURITY_VIOLATION, "signer differs from the creator")
            top = stored_top
        content = authvars.signed_content(key[1], key[0], attributes, auth)
        if not authvars.verify(sd, content, [top]):
            raise EfiError(Status.SECURITY_VIOLATION, "signature does not verify")
        self._update(key, attributes, auth.payload, existing, timestamp=auth.timestamp,
                     signer=record)

    def _set_mode_switch(self, key: Key, attributes: int, payload: bytes,
                         existing: Variable | None, operator: bool) -> None:
        """AuditMode / DeployedMode writes (UEFI 2.10 §32.3.3 Audit Mode, §32.3.4 Deployed Mode)."""
        if existing is not None and attributes != existing.attributes:
            raise EfiError(Status.INVALID_PARAMETER, "attributes must be BS|RT")
        if len(payload) != 1 or payload[0] > 1:
            raise EfiError(Status.INVALID_PARAMETER, "value must be one byte, 0 or 1")
        mode = self.mode
        value = payload[0] == 1
        if self.phase.at_runtime and not operator:
            raise EfiError(Status.WRITE_PROTECTED, "mode changes only before ExitBootServices")
        if key == secureboot.AUDIT_MODE:
            if mode in (Mode.AUDIT, Mode.DEPLOYED) and not operator:
                raise EfiError(Status.WRITE_PROTECTED, "AuditMode is read-only in this mode")
            if not value:
                return
            meta = dict(self.sb.meta())
            meta[secureboot.META_AUDIT] = b"\x01"
            deletes = []
            if secureboot.PK in self._all:
                # User -> Audit: the PK is cleared.
                deletes.append(secureboot.PK)
            self._spend_write()
            self.store.commit(deletes=deletes, meta=meta)
            for k in deletes:
                self._remove(k)
            self.sb.audit = True
        else:
            if mode is not Mode.USER and not (operator and mode is Mode.DEPLOYED):
                raise EfiError(Status.WRITE_PROTECTED, "DeployedMode changes only from user mode")
            if value == self.sb.deployed:
                return
            meta = dict(self.sb.meta())
            meta[secureboot.META_DEPLOYED] = bytes([value])
            self._spend_write()
            self.store.commit(meta=meta)
            self.sb.deployed = value
        self._refresh_firmware_variables()

    # ----------------------------------------------------------- operator only ---
    def reset_secure_boot(self, *, delete_keys: bool = False) -> Status:
        """Back to Setup Mode, as a platform's physical-presence "reset to setup mode":
        the PK goes (and with delete_keys, KEK, db, dbx and dbt too), Audit and Deployed
        Mode are left, VendorKeys drops to 0. One store commit; only the host may do this.
        """
        keys = [secureboot.PK]
        if delete_keys:
            keys += [secureboot.KEK, *sorted(secureboot.SECURITY_DATABASES)]
        deletes = [k for k in keys if k in self._all]
        new_sb = replace(self.sb, audit=False, deployed=False,
                         vendor_keys=self.sb.vendor_keys and not deletes)
        try:
            self.store.commit(deletes=deletes, meta=new_sb.meta())
        except StoreFullError:
            return Status.OUT_OF_RESOURCES
        except StoreError as exc:
            log.error("store write failed", error=str(exc))
            return Status.DEVICE_ERROR
        for k in deletes:
            self._remove(k)
        self.sb = new_sb
        self._refresh_firmware_variables()
        return Status.SUCCESS

    def set_require_self_signed_pk(self, required: bool) -> None:
        """The store's PcdRequireSelfSignedPk (persisted; StoreError if it cannot be)."""
        new_sb = replace(self.sb, require_self_signed_pk=required)
        self.store.commit(meta=new_sb.meta())
        self.sb = new_sb

    # ------------------------------------------------------------ phase events ---
    def end_of_dxe(self) -> None:
        self.phase.end_of_dxe = True
        self.policy.end_of_dxe()

    def ready_to_boot(self) -> Status:
        if self.phase.at_runtime:
            return Status.UNSUPPORTED
        if not self.phase.end_of_dxe:
            self.end_of_dxe()
        self.phase.ready_to_boot = True
        return Status.SUCCESS

    def exit_boot_services(self) -> None:
        self.phase.at_runtime = True

    def lock_variable(self, guid: bytes, name: str) -> Status:
        """EDK2 VariableLockRequestToLock: a LOCK_NOW policy, refused after EndOfDxe."""
        if self.phase.at_runtime or self.phase.end_of_dxe:
            return Status.ACCESS_DENIED
        return self.policy.register_lock_now(guid, name)
