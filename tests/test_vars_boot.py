"""`efird vars boot`: efibootmgr-like editing of Boot####, BootOrder, BootNext, Timeout."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from efird.efi import devicepath
from efird.efi.loadoption import LoadOption

from .cli import efird_vars, raw_value

GLOBAL = "EfiGlobalVariable"
DEBIAN = ("PciRoot(0x0)/Pci(0x3,0x0)/HD(1,GPT,0c1ed3b5-52f4-4d4b-8a2c-1f0e8a1a2b3c,0x800,"
          "0x100000)/File(\\EFI\\debian\\shimx64.efi)")
SHELL = "Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)"


def boot_list(store: Path) -> dict:
    result = efird_vars(store, "boot", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed: dict = json.loads(result.stdout)
    return listed


def order(store: Path) -> list[int]:
    return [n for (n,) in struct.iter_unpack("<H", raw_value(store, "BootOrder", GLOBAL))]


def test_add_list_order_next_timeout_delete(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    added = efird_vars(store, "boot", "add", "--description", "Debian", "--path", DEBIAN,
                       "--data-string", "root=/dev/vda2")
    assert added.returncode == 0, added.stderr
    assert "Boot0000 added" in added.stdout
    assert efird_vars(store, "boot", "add", "--description", "UEFI Shell", "--path", SHELL,
                      "--first", "--inactive").returncode == 0
    assert efird_vars(store, "boot", "add", "--description", "Ten", "--path", SHELL,
                      "--number", "000A").returncode == 0
    assert order(store) == [1, 0, 10]
    # the stored value is a real EFI_LOAD_OPTION with the binary device path
    option = LoadOption.unpack(raw_value(store, "Boot0000", GLOBAL))
    assert option.description == "Debian" and option.attributes == 1
    assert option.device_path == devicepath.from_text(DEBIAN)
    assert option.optional_data == "root=/dev/vda2".encode("utf-16-le") + b"\0\0"
    listed = boot_list(store)
    assert listed["boot_order"] == [1, 0, 10]
    assert [(e["name"], e["active"], e["device_path"]) for e in listed["entries"]] == [
        ("Boot0001", False, SHELL), ("Boot0000", True, DEBIAN), ("Boot000A", True, SHELL)]
    text = efird_vars(store, "boot", "list").stdout
    assert "Boot0000* Debian\t" + DEBIAN in text and "Boot0001  UEFI Shell" in text

    assert efird_vars(store, "boot", "order", "000A,0000").returncode == 0
    assert order(store) == [10, 0]
    assert efird_vars(store, "boot", "next", "0001").returncode == 0
    assert efird_vars(store, "boot", "timeout", "5").returncode == 0
    listed = boot_list(store)
    assert (listed["boot_next"], listed["timeout"]) == (1, 5)
    got = json.loads(efird_vars(store, "get", "BootNext", "--json").stdout)
    assert got["decoded"] == 1

    # deleting an entry takes it out of BootOrder and BootNext too
    assert efird_vars(store, "boot", "delete", "0001").returncode == 0
    listed = boot_list(store)
    assert listed["boot_next"] is None and [e["number"] for e in listed["entries"]] == [10, 0]
    assert efird_vars(store, "boot", "delete", "Boot000A").returncode == 0
    assert order(store) == [0]
    assert efird_vars(store, "boot", "timeout", "--delete").returncode == 0
    assert boot_list(store)["timeout"] is None


def test_boot_errors(tmp_path: Path) -> None:
    store = tmp_path / "vm.efivars"
    assert efird_vars(store, "boot", "list").returncode == 2  # no such store
    bad_path = efird_vars(store, "boot", "add", "--description", "x", "--path", "Bogus(1)")
    assert bad_path.returncode == 2 and "--path" in bad_path.stderr and "Bogus" in bad_path.stderr
    assert efird_vars(store, "boot", "add", "--description", "x", "--path", SHELL).returncode == 0
    taken = efird_vars(store, "boot", "add", "--description", "y", "--path", SHELL,
                       "--number", "0000")
    assert taken.returncode == 2 and "Boot0000 exists" in taken.stderr
    unknown = efird_vars(store, "boot", "order", "0000,0007")
    assert unknown.returncode == 1 and "0007" in unknown.stderr
    assert efird_vars(store, "boot", "order", "0000,0007", "--force").returncode == 0
    assert efird_vars(store, "boot", "order", "0000,0000").returncode == 2
    assert efird_vars(store, "boot", "order", "zz").returncode == 2
    assert efird_vars(store, "boot", "next", "0005").returncode == 1
    assert efird_vars(store, "boot", "delete", "0005").returncode == 1
    assert efird_vars(store, "boot", "timeout", "70000").returncode == 2
    # a malformed Boot#### is shown as such, not a crash
    assert efird_vars(store, "set", "Boot0009", "--data", "0100").returncode == 0
    listed = boot_list(store)
    assert any(e["name"] == "Boot0009" and "error" in e for e in listed["entries"])


def test_every_command_has_help_with_examples() -> None:
    import subprocess
    import sys

    from efird.cli.main import build_parser

    parser = build_parser()
    vars_parser = parser._subparsers._group_actions[0].choices["vars"]  # type: ignore[union-attr]
    commands = vars_parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"list", "get", "set", "append", "delete", "import", "export", "sb-state",
            "sb-policy", "enroll", "reset-secure-boot", "boot"} <= set(commands)
    boot = commands["boot"]._subparsers._group_actions[0].choices
    assert set(boot) == {"list", "add", "delete", "order", "next", "timeout"}
    for name, sub in [*commands.items(), *boot.items()]:
        text = sub.format_help()
        assert "examples:" in text and "efird vars" in text.split("examples:")[1], name
    # and the real entry point prints it
    out = subprocess.run([sys.executable, "-m", "efird.cli.main", "vars", "enroll", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--pk-key" in out.stdout and "examples:" in out.stdout
