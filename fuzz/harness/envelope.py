"""Target `envelope`: Domain.dispatcher.dispatch, the guest's only way in.

Input layout (every input decodes to a request):

    byte 0  selector: % 10 picks one of the nine registered GUIDs, 9 is raw mode
            (the input after the flags byte is the whole request, header included)
    byte 1  flags: bit 0 which domain (0: no memory map, the guest sends InitMemoryMap;
            1: a q35 layout from the toolstack), bit 1 a platform reset first, bit 2 the
            next 8 bytes are MessageLength (else it is the payload's real length),
            bit 3 no function header (the payload is the raw body);
            0xff replaces that domain with a fresh one (new store)
    byte 2  function (or the policy MMI command) for handlers that have one (% 16, % 10)
    rest    the body after the function header

The two domains and their stores carry over between inputs (so a SetVariable can be read
back, ExitBootServices changes what is allowed, ...).

Oracles: Refusal is the only exception dispatch may raise (the dispatcher's own catch-all
for handler bugs is turned into a crash); the response is as long as the request, keeps the
header and every byte past MessageLength, and a status it carries is an EFI_STATUS efird
knows; may_block and describe accept anything.
"""

from __future__ import annotations

import struct
from typing import Any

from efird import envelope as envelope_module
from efird.abi import layouts as L
from efird.core.memmap_ref import Kind
from efird.domain import Domain
from efird.efi import guid as g
from efird.efi.status import Status
from efird.envelope import HEADER_SIZE, Refusal, describe
from efird.store.sqlite import SqliteStore
from fuzz.harness.common import Finding, History, Reader, quiet_logs, scratch_dir

GUIDS = (
    g.SMM_VARIABLE_PROTOCOL,
    g.VAR_CHECK_POLICY_MMI,
    g.EVENT_END_OF_DXE,
    g.EVENT_READY_TO_BOOT,
    g.EVENT_EXIT_BOOT_SERVICES,
    g.EFIRD_BOOTMEM_SERVICE,
    g.EFIRD_TIME_SERVICE,
    g.EFIRD_RESET_SERVICE,
    g.EFIRD_KEXEC_SERVICE,
)
RAW = len(GUIDS)
FUNCTION_GUIDS = frozenset({g.SMM_VARIABLE_PROTOCOL, g.EFIRD_BOOTMEM_SERVICE,
                            g.EFIRD_TIME_SERVICE, g.EFIRD_RESET_SERVICE,
                            g.EFIRD_KEXEC_SERVICE})
F_DOMAIN, F_RESET, F_LENGTH, F_NO_FUNCTION = 0x1, 0x2, 0x4, 0x8
FRESH = 0xFF
_Q = struct.Struct("<Q")
_POLICY_HEADER = L.VAR_CHECK_POLICY_COMM_HEADER.struct
_POLICY_RESULT = L.VAR_CHECK_POLICY_COMM_HEADER.offsets["Result"]
_STATUS_VALUES = frozenset(int(s) for s in Status)

P = 0x1000
# The q35 layout of a 1 GiB guest, as a toolstack passes it with --memmap.
Q35 = [
    (0, 0x9FC00, Kind.RAM),
    (0x100000, 0x3FE00000, Kind.RAM),
    (0x3FF00000, 0x40000, Kind.RUNTIME_CODE),
    (0x3FF40000, 0x40000, Kind.RUNTIME_DATA),
    (0x3FF80000, 0x20000, Kind.NVS),
    (0x3FFA0000, 0x60000, Kind.ACPI),
    (0xB0000000, 0x10000000, Kind.MMIO),
    (0xFEC00000, P, Kind.RESERVED),
    (0xFEE00000, 0x100000, Kind.RESERVED),
    (0xFFC00000, 0x400000, Kind.MMIO),
]
GUEST_RAM_BASE = 0x100000
GUEST_RAM_SIZE = 2 << 20


class FakeGuestRam:
    """2 MiB of guest RAM at 1 MiB, where BuildPageTables may write its tables."""

    def __init__(self) -> None:
        self.ram = bytearray(GUEST_RAM_SIZE)

    def view(self, addr: int, length: int) -> memoryview:
        off = addr - GUEST_RAM_BASE
        if off < 0 or length < 0 or off + length > len(self.ram):
            raise ValueError(f"{addr:#x}+{length:#x} is not in guest RAM")
        return memoryview(self.ram)[off : off + length]


class _RaisingLog:
    """Replaces efird.envelope's logger: the dispatcher's catch-all logs a handler bug with
    log.exception inside its except block; re-raising there makes the bug the crash."""

    def exception(self, *args: Any, **kwargs: Any) -> None:
        raise  # the exception the caller is handling

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def build_request(data: bytes) -> tuple[int, int, bytes]:
    """(domain index, flags, request) for a fuzz input."""
    r = Reader(data)
    selector, flags, function = r.u8() % (RAW + 1), r.u8(), r.u8()
    if selector == RAW:
        return flags & F_DOMAIN, flags, data[2:]
    guid = GUIDS[selector]
    length = r.u64() if flags & F_LENGTH else None
    body = r.rest()
    if flags & F_NO_FUNCTION:
        payload = body
    elif guid in FUNCTION_GUIDS:
        payload = _Q.pack(function % 16) + bytes(8) + body
    elif guid == g.VAR_CHECK_POLICY_MMI:
        payload = _POLICY_HEADER.pack(L.VAR_CHECK_POLICY_COMM_SIG,
                                      L.VAR_CHECK_POLICY_COMM_REVISION, function % 10, 0) + body
    else:
        payload = body
    request = guid + _Q.pack(len(payload) if length is None else length) + payload
    return flags & F_DOMAIN, flags, request


class Harness:
    def __init__(self) -> None:
        quiet_logs()
        envelope_module.log = _RaisingLog()
        self.dir = scratch_dir("envelope")
        self.created = 0
        self.history = History("envelope")
        self.domains = [self._new_domain(0), self._new_domain(1)]

    def _new_domain(self, index: int) -> Domain:
        self.created += 1
        path = self.dir / f"domain{index}-{self.created}.efivars"
        domain = Domain(SqliteStore(path), memory_map=Q35 if index else None)
        domain.bootmem.attach_memory(FakeGuestRam())
        return domain

    def fresh(self, index: int) -> None:
        old = self.domains[index]
        old.close()
        assert isinstance(old.store, SqliteStore)
        path = old.store.path
        for suffix in ("", "-wal", "-shm", ".lock"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        self.domains[index] = self._new_domain(index)

    def __call__(self, data: bytes) -> None:
        self.history.add(data)
        try:
            self.serve(data)
        except BaseException:
            self.history.dump()
            raise

    def serve(self, data: bytes) -> None:
        index, flags, request = build_request(data)
        if flags == FRESH:
            self.fresh(index)
        domain = self.domains[index]
        if flags & F_RESET and flags != FRESH:
            domain.platform_reset()
        dispatcher = domain.dispatcher
        if not isinstance(dispatcher.may_block(request), bool):
            raise Finding("may_block did not answer a bool")
        try:
            response = dispatcher.dispatch(request)
        except Refusal as refusal:
            if not isinstance(refusal.status, Status):
                raise Finding(f"Refusal with a non-Status {refusal.status!r}") from None
            return
        check_response(request, response)
        describe(request, response)


def check_response(request: bytes, response: bytes | bytearray) -> None:
    """The invariants of a served (not refused) envelope."""
    if len(response) != len(request):
        raise Finding(f"response of {len(response)} bytes to a request of {len(request)}")
    if response[:HEADER_SIZE] != request[:HEADER_SIZE]:
        raise Finding("the handler changed the envelope header")
    (length,) = _Q.unpack_from(request, 16)
    end = HEADER_SIZE + length
    if response[end:] != request[end:]:
        raise Finding(f"the handler wrote past MessageLength ({length} bytes)")
    guid = bytes(request[:16])
    status_at = None
    if guid in FUNCTION_GUIDS and length >= 16:
        status_at = HEADER_SIZE + 8
    elif guid == g.VAR_CHECK_POLICY_MMI and length >= L.VAR_CHECK_POLICY_COMM_HEADER.size:
        status_at = HEADER_SIZE + _POLICY_RESULT
    if status_at is not None:
        (status,) = _Q.unpack_from(response, status_at)
        if status not in _STATUS_VALUES:
            raise Finding(f"status {status:#x} is not an EFI_STATUS efird knows")
