"""Binary test vectors for protocols/vectors/: request envelopes and the exact responses
efird gives on a fresh store, one scenario per file.

File format (one line each): `# comment`, `> HEX` (a request), `< HEX` (its response)
or `< ERR ...` (refused by the transport). Replaying the `>` lines through
`efird call --store NEW` must print the `<` lines; tests/test_vectors.py does exactly
that. Regenerate with `make vectors` after an intended ABI change, and review the diff.
"""

from __future__ import annotations

import argparse
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from efird.abi import client as c
from efird.abi import layouts as L
from efird.efi import guid as g
from efird.envelope import Refusal

VENDOR = g.guid_bytes("d1d3a4c2-7f66-4ad5-a6fb-c4e0a1a5b001")
NV_BS_RT, BS_RT, NV_BS = 7, 6, 3
Step = tuple[str, bytes]  # (comment, request)


def _access(name_raw: bytes, name_size: int, data_size: int, data: bytes) -> bytes:
    return c.variable_request(3, L.SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE.struct.pack(
        VENDOR, data_size, name_size, NV_BS_RT) + name_raw + data)


def _policy_register(name: str, lock_type: int) -> bytes:
    from efird.variables.policy import NO_MAX_SIZE, Policy

    entry = Policy(VENDOR, name, 0, NO_MAX_SIZE, 0, 0, lock_type).pack()
    hdr = L.VAR_CHECK_POLICY_COMM_HEADER.struct.pack(L.VAR_CHECK_POLICY_COMM_SIG, 1, 3, 0)
    return c.envelope(g.VAR_CHECK_POLICY_MMI, hdr + entry)


SCENARIOS: dict[str, list[Step]] = {
    "01-get-payload-size": [
        ("GetPayloadSize (function 11)", c.variable_request(11, bytes(8))),
    ],
    "02-set-get-delete": [
        ("SetVariable NV|BS|RT 'Demo' = 'hello'",
         c.set_variable(VENDOR, "Demo", NV_BS_RT, b"hello")),
        ("GetVariable with room for 16 bytes", c.get_variable(VENDOR, "Demo", 16)),
        ("GetVariable with room for 2 bytes: BUFFER_TOO_SMALL, DataSize=5",
         c.get_variable(VENDOR, "Demo", 2)),
        ("APPEND ' world'", c.set_variable(VENDOR, "Demo", NV_BS_RT | 0x40, b" world")),
        ("GetVariable", c.get_variable(VENDOR, "Demo", 16)),
        ("SetVariable with other attributes: INVALID_PARAMETER",
         c.set_variable(VENDOR, "Demo", BS_RT, b"x")),
        ("delete (DataSize 0)", c.set_variable(VENDOR, "Demo", NV_BS_RT, b"")),
        ("GetVariable: NOT_FOUND", c.get_variable(VENDOR, "Demo", 16)),
        ("delete again: NOT_FOUND", c.set_variable(VENDOR, "Demo", NV_BS_RT, b"")),
    ],
    "03-enumerate-fresh-store": [
        ("first name", c.get_next_variable_name(bytes(16), "", 64)),
        ("after AuditMode", c.get_next_variable_name(g.EFI_GLOBAL_VARIABLE, "AuditMode", 64)),
        ("name buffer of 2 bytes: BUFFER_TOO_SMALL",
         c.get_next_variable_name(g.EFI_GLOBAL_VARIABLE, "", 2)),
        ("after the last one: NOT_FOUND",
         c.get_next_variable_name(g.EFI_GLOBAL_VARIABLE, "VendorKeys", 64)),
        ("unknown start: INVALID_PARAMETER", c.get_next_variable_name(VENDOR, "Nope", 64)),
        ("SecureBoot reads 0 in setup mode",
         c.get_variable(g.EFI_GLOBAL_VARIABLE, "SecureBoot", 1)),
        ("SetupMode reads 1", c.get_variable(g.EFI_GLOBAL_VARIABLE, "SetupMode", 1)),
        ("SetupMode is read-only: WRITE_PROTECTED",
         c.set_variable(g.EFI_GLOBAL_VARIABLE, "SetupMode", BS_RT, b"\x00")),
    ],
    "04-query-variable-info": [
        ("NV|BS|RT", c.query_variable_info(NV_BS_RT)),
        ("BS|RT (volatile)", c.query_variable_info(BS_RT)),
        ("NV|BS|RT|HR", c.query_variable_info(0x0F)),
        ("0: INVALID_PARAMETER", c.query_variable_info(0)),
        ("AW: UNSUPPORTED", c.query_variable_info(0x17)),
    ],
    "05-attribute-checks": [
        ("RT without BS: INVALID_PARAMETER", c.set_variable(VENDOR, "A", 0x05, b"x")),
        ("NV alone: INVALID_PARAMETER", c.set_variable(VENDOR, "A", 0x01, b"x")),
        ("AW: UNSUPPORTED", c.set_variable(VENDOR, "A", 0x17, b"x")),
        ("reserved bit 0x80: INVALID_PARAMETER", c.set_variable(VENDOR, "A", 0x87, b"x")),
        ("AT with an empty certificate: SECURITY_VIOLATION",
         c.set_variable(VENDOR, "A", 0x27, bytes(16) + struct.pack("<IHH", 24, 0x200, 0xEF1)
                        + g.EFI_CERT_TYPE_PKCS7 + b"payload")),
        ("create with attributes 0: NOT_FOUND", c.set_variable(VENDOR, "A", 0, b"x")),
    ],
    "06-malformed-envelopes": [
        ("23 bytes: refused", bytes(23)),
        ("MessageLength beyond the buffer: refused",
         c.envelope(g.SMM_VARIABLE_PROTOCOL, bytes(16))[:-1]),
        ("unknown GUID: refused", c.envelope(b"\x42" * 16, bytes(16))),
        ("payload without ReturnStatus room: refused",
         c.envelope(g.SMM_VARIABLE_PROTOCOL, bytes(8))),
        ("unknown function: UNSUPPORTED", c.variable_request(42, bytes(8))),
        ("GetVariable data too short: BAD_BUFFER_SIZE", c.variable_request(1, bytes(20))),
        ("name without NUL: ACCESS_DENIED", _access(b"A\0B\0", 4, 1, b"x")),
        ("odd NameSize: ACCESS_DENIED", _access(b"A\0\0", 3, 1, b"x")),
        ("NameSize+DataSize overflow: ACCESS_DENIED", _access(b"A\0\0\0", 2**63, 2**63, b"")),
    ],
    "07-runtime-phase": [
        ("BS-only NV variable", c.set_variable(VENDOR, "BsOnly", NV_BS, b"1")),
        ("ExitBootServices event", c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b"")),
        ("BS-only variable is invisible: NOT_FOUND", c.get_variable(VENDOR, "BsOnly", 4)),
        ("and unwritable: WRITE_PROTECTED", c.set_variable(VENDOR, "BsOnly", NV_BS, b"2")),
        ("new volatile variable: INVALID_PARAMETER", c.set_variable(VENDOR, "Vol", BS_RT, b"2")),
        ("new NV|BS|RT variable: SUCCESS", c.set_variable(VENDOR, "Rt", NV_BS_RT, b"2")),
        ("QueryVariableInfo without RT: INVALID_PARAMETER", c.query_variable_info(NV_BS)),
    ],
    "08-variable-policy": [
        ("register LOCK_NOW for 'Locked'", _policy_register("Locked", 1)),
        ("write before EndOfDxe: SUCCESS", c.set_variable(VENDOR, "Locked", NV_BS_RT, b"1")),
        ("EndOfDxe event", c.envelope(g.EVENT_END_OF_DXE, b"")),
        ("write after EndOfDxe: WRITE_PROTECTED",
         c.set_variable(VENDOR, "Locked", NV_BS_RT, b"2")),
        ("register after EndOfDxe: WRITE_PROTECTED", _policy_register("Late", 1)),
    ],
    "09-kexec": [
        ("GetRuntimeMap before any memory map: NOT_READY",
         c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", 1, 0) + bytes(24))),
        ("GetSetupData: struct efi_setup_data (96 bytes), nothing registered yet",
         c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", 2, 0)
                    + struct.pack("<Q", 96) + bytes(96))),
        ("SetFirmwareTables", c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", 4, 0)
                                         + struct.pack("<QQQQ", 0x7F000, 0x7F100, 0xF0000, 0))),
        ("GetSetupData", c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", 2, 0)
                                    + struct.pack("<Q", 96) + bytes(96))),
        ("unknown function: UNSUPPORTED",
         c.envelope(g.EFIRD_KEXEC_SERVICE, struct.pack("<QQ", 42, 0))),
    ],
    "11-time-and-reset": [
        ("SetTime 2026-02-30 (no such day): INVALID_PARAMETER",
         c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", 2, 0)
                    + struct.pack("<HBBBBBBIhBB", 2026, 2, 30, 0, 0, 0, 0, 0, 0x7FF, 0, 0)
                    + bytes(16))),
        ("GetWakeupTime on a new store: disabled",
         c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", 3, 0) + bytes(24))),
        ("GetNextHighMonotonicCount: 1",
         c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", 5, 0) + bytes(8))),
        ("GetNextHighMonotonicCount: 2",
         c.envelope(g.EFIRD_TIME_SERVICE, struct.pack("<QQ", 5, 0) + bytes(8))),
        ("ResetSystem with type 9: INVALID_PARAMETER",
         c.envelope(g.EFIRD_RESET_SERVICE, struct.pack("<QQ", 1, 0)
                    + struct.pack("<IIQQ", 9, 0, 0, 0))),
        ("ResetSystem warm", c.envelope(g.EFIRD_RESET_SERVICE, struct.pack("<QQ", 1, 0)
                                        + struct.pack("<IIQQ", 1, 0, 0, 0))),
    ],
    "10-boot-memory": [
        ("GetMemoryMap before any map: NOT_READY", c.get_memory_map(256)),
        ("InitMemoryMap from a PVH hvm_memmap: 640 KiB + 127 MiB RAM, a reserved page",
         c.init_memory_map([(0, 0xA0000, 1), (0x100000, 0x7F00000, 1),
                            (0xFEC00000, 0x1000, 2)])),
        ("GetMemoryMap into 16 bytes: BUFFER_TOO_SMALL, size and DescriptorSize 48 filled",
         c.get_memory_map(16)),
        ("GetMemoryMap", c.get_memory_map(256)),
        ("AllocatePages AllocateAnyPages, LoaderData, 2 pages", c.allocate_pages(0, 2, 2)),
        ("AllocatePages AllocateAddress 0x200000, LoaderCode, 1 page",
         c.allocate_pages(2, 1, 1, 0x200000)),
        ("FreePages of pages never allocated: NOT_FOUND", c.free_pages(0x400000, 1)),
        ("FreePages 0x200000", c.free_pages(0x200000, 1)),
        ("ExitBootServices with a stale MapKey: INVALID_PARAMETER", c.exit_boot_services(1)),
        ("GetMemoryMap", c.get_memory_map(256)),
        ("BuildPageTables without guest memory (efird call): UNSUPPORTED",
         c.build_page_tables(0x1000000, 0x100000)),
    ],
}


def run_scenario(steps: list[Step], serve: Callable[[bytes], str]) -> list[str]:
    lines = []
    for comment, request in steps:
        lines += [f"# {comment}", f"> {request.hex()}", f"< {serve(request)}"]
    return lines


def generate() -> dict[str, list[str]]:
    from efird.domain import Domain
    from efird.store.sqlite import SqliteStore

    out = {}
    for name, steps in SCENARIOS.items():
        with tempfile.TemporaryDirectory() as tmp:
            domain = Domain(SqliteStore(Path(tmp) / "vectors.efivars"))

            def serve(request: bytes, d: Domain = domain) -> str:
                try:
                    return d.dispatcher.dispatch(request).hex()
                except Refusal as refusal:
                    return f"ERR {refusal.status.name}: {refusal.reason}"

            out[name] = run_scenario(steps, serve)
            domain.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, required=True, help="directory for the .vec files")
    args = parser.parse_args()
    from efird import log

    log.configure("warning")
    args.write.mkdir(parents=True, exist_ok=True)
    for name, lines in generate().items():
        (args.write / f"{name}.vec").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
