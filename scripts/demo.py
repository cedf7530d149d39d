"""The demo: efird attached to a real QEMU 10 over vhost-user, answering the variable
calls a booting Linux guest makes.

It starts `efird serve` on a new store in demo-out/, starts QEMU 10 with the store's
queue carried by vhost-user-rng-pci, and plays the guest with a virtio-pci driver over
qtest (tests/qemu/): walk every variable as efivarfs does at mount, read SecureBoot and
SetupMode, set and delete a dummy variable, QueryVariableInfo, enter the runtime phase.
It prints each call with its EFI status, the round trip as the guest saw it, and the
service time efird logged, then stops both and leaves the store for the CLI.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from efird.abi import client as c  # noqa: E402
from efird.bootmem.description import q35  # noqa: E402
from efird.efi import guid as g  # noqa: E402
from efird.efi.status import Status, status_name  # noqa: E402
from tests.daemon import EfirdDaemon  # noqa: E402
from tests.qemu.virtio_pci import VirtioPciDevice, Virtqueue  # noqa: E402
from tests.qemu.vm import QemuVM  # noqa: E402

OUT = ROOT / "demo-out"
GV = g.EFI_GLOBAL_VARIABLE
DEMO = g.guid_bytes("e3e1f6f0-6d0f-4a35-9d33-7c7d9e0a0d1e")
SLOT = 3


class Guest:
    def __init__(self, queue: Virtqueue, daemon: EfirdDaemon) -> None:
        self.queue, self.daemon = queue, daemon
        self.rows: list[tuple[str, str, float, float | None, str]] = []

    def call(self, label: str, request: bytes, detail: str = "") -> bytes:
        served_before = len(self.daemon.events("request"))
        t0 = time.perf_counter()
        self.queue.submit([request], [len(request)])
        used = self.queue.wait_used(timeout=10)
        us = (time.perf_counter() - t0) * 1e6
        response = used.in_data[: used.used_len]
        status = "refused (used.len 0)" if not response else (
            status_name(c.return_status(response)) if len(response) >= 40 else "(event)")
        served = self.daemon.events("request")
        service_us = served[-1]["us"] if len(served) > served_before else None
        self.rows.append((label, status, us, service_us, detail))
        return response

    def note(self, detail: str) -> None:
        self.rows[-1] = (*self.rows[-1][:4], detail)


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    store = OUT / "vm1.efivars"
    sock = Path("/tmp") / f"efird-demo-{time.time_ns()}.sock"
    memmap = OUT / "vm1.memmap"  # the toolstack's description of the guest: q35, 256 MiB
    memmap.write_text("".join(f"{a:#x} {s:#x} {k}\n" for a, s, k in q35(256)))
    t_start = time.perf_counter()
    with EfirdDaemon(sock, store, "--domain", "vm1", "--memmap", str(memmap)) as daemon:
        ready_ms = (time.perf_counter() - t_start) * 1000
        args = QemuVM.vhost_user_args(sock, addr=SLOT)
        with QemuVM(args) as vm:
            qemu_line = " ".join(vm.command_line())
            dev = VirtioPciDevice(vm.qtest, 4, slot=SLOT)
            (queue,) = dev.init()
            guest = Guest(queue, daemon)
            guest.call("GetPayloadSize", c.variable_request(11, bytes(8)))
            guid, name, count = bytes(16), "", 0
            while True:  # efivarfs at mount
                resp = guest.call("GetNextVariableName", c.get_next_variable_name(guid, name))
                status, guid, name, _ = c.parse_get_next(resp)
                if status is not Status.SUCCESS:
                    guest.note(f"end of list after {count} variables")
                    break
                guest.note(f"{g.guid_name(guid)}:{name}")
                count += 1
            for var in ("SecureBoot", "SetupMode"):
                got = c.parse_get_variable(guest.call(f"GetVariable {var}",
                                                      c.get_variable(GV, var, 1)))
                guest.note(f"= {got.data.hex()}")
            _, total, remaining, max_size = c.parse_query(
                guest.call("QueryVariableInfo NV|BS|RT", c.query_variable_info(7)))
            guest.note(f"{remaining} of {total} bytes free, max variable {max_size}")
            guest.call("SetVariable EfirdDemo", c.set_variable(DEMO, "EfirdDemo", 7,
                                                               b"hello from the guest"))
            got = c.parse_get_variable(guest.call("GetVariable EfirdDemo",
                                                  c.get_variable(DEMO, "EfirdDemo", 64)))
            guest.note(repr(got.data))
            guest.call("SetVariable EfirdDemo (delete)", c.set_variable(DEMO, "EfirdDemo", 7, b""))
            guest.call("GetVariable EfirdDemo", c.get_variable(DEMO, "EfirdDemo", 64))
            guest.call("SetVariable EfirdKept", c.set_variable(DEMO, "EfirdKept", 7,
                                                               b"left for the CLI"))
            # the seed's boot path: memory map, an allocation, page tables written by the
            # C core straight into QEMU's guest RAM, ExitBootServices with the real MapKey
            status, size, key, desc_size, _, _ = c.parse_get_memory_map(
                guest.call("GetMemoryMap", c.get_memory_map(4096)))
            guest.note(f"{size // desc_size} descriptors of {desc_size} bytes, MapKey {key}")
            status, tables = c.parse_allocate_pages(guest.call(
                "AllocatePages (page tables)", c.allocate_pages(1, 2, 64, 0x8000000 - 1)))
            guest.note(f"64 pages at {tables:#x}")
            status, cr3, used = c.parse_build_page_tables(guest.call(
                "BuildPageTables", c.build_page_tables(tables, 64 * 4096, 4, 0x1)))
            pml4e = int.from_bytes(vm.qtest.memread(cr3, 8), "little")
            guest.note(f"CR3 {cr3:#x}, {used} bytes; PML4[0] read back via qtest = {pml4e:#x}")
            key = c.parse_get_memory_map(guest.call("GetMemoryMap",
                                                    c.get_memory_map(4096)))[2]
            guest.note(f"MapKey {key}")
            guest.call("ExitBootServices (MapKey - 1, stale)", c.exit_boot_services(key - 1))
            guest.call("ExitBootServices", c.exit_boot_services(key))
            guest.call("SetVariable BS-only (runtime)", c.set_variable(DEMO, "Late", 3, b"x"))
            guest.call("malformed envelope (10 bytes)", bytes(10))
        daemon.wait_for("frontend disconnected")
        code = daemon.stop()

    print(f"efird ready {ready_ms:.0f} ms after exec; QEMU: {qemu_line}\n")
    print(f"{'call':<38} {'status':<20} {'round trip':>11} {'in efird':>9}  detail")
    for label, status, us, service, detail in guest.rows:
        served = f"{service:.0f}us" if service is not None else "-"
        print(f"{label:<38} {status:<20} {us:>9.0f}us {served:>9}  {detail}")
    print("\nround trip: as the qtest-driven guest saw it (each qtest access is a socket round "
          "trip to QEMU);\nin efird: the service time efird logged for the request.")
    print(f"efird exited {code}; store left at {store}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
