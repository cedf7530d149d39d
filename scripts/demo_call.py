"""The demo: drive efird's variable service the way a booting Linux guest does, through
`efird call` (one envelope per line), and enrol Secure Boot keys made by openssl and
signed by efitools. Prints each call with its EFI status and round-trip latency and
leaves the store in demo-out/ for the CLI to read."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from efird.abi import client as c
from efird.efi import guid as g
from efird.efi.status import status_name

OUT = Path("demo-out")
STORE = OUT / "vm1.efivars"
GV, DBG = g.EFI_GLOBAL_VARIABLE, g.EFI_IMAGE_SECURITY_DATABASE
DEMO = g.guid_bytes("e3e1f6f0-6d0f-4a35-9d33-7c7d9e0a0d1e")
OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"


class Efird:
    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "efird.cli.main", "call", "--store", str(store)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.rows: list[tuple[str, str, float, str]] = []

    def call(self, label: str, request: bytes, show: str = "") -> bytes:
        assert self.proc.stdin and self.proc.stdout
        t0 = time.perf_counter()
        self.proc.stdin.write(request.hex() + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        us = (time.perf_counter() - t0) * 1e6
        if line.startswith("ERR"):
            self.rows.append((label, line, us, ""))
            return b""
        response = bytes.fromhex(line)
        status = (status_name(c.return_status(response)) if len(response) >= 40
                  else "(event: no status)")
        self.rows.append((label, status, us, show))
        return response

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def make_keys(tmp: Path) -> dict[str, bytes]:
    """PK, KEK and db keys with openssl; their ESLs and .auth files with efitools."""
    auth = {}
    for n, (name, signer) in enumerate((("PK", "PK"), ("KEK", "PK"), ("db", "KEK"))):
        run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", "3650", "-subj", f"/CN=efird demo {name}/",
             "-keyout", str(tmp / f"{name}.key"), "-out", str(tmp / f"{name}.crt")])
        run(["cert-to-efi-sig-list", "-g", OWNER, str(tmp / f"{name}.crt"),
             str(tmp / f"{name}.esl")])
        run(["sign-efi-sig-list", "-t", f"2026-11-25 10:00:0{n}", "-k",
             str(tmp / f"{signer}.key"), "-c", str(tmp / f"{signer}.crt"), name,
             str(tmp / f"{name}.esl"), str(tmp / f"{name}.auth")])
        auth[name] = (tmp / f"{name}.auth").read_bytes()
    return auth


def byte_of(response: bytes) -> str:
    r = c.parse_get_variable(response)
    return r.data.hex() if r.data else ""


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    efird = Efird(STORE)
    efird.call("GetPayloadSize", c.variable_request(11, bytes(8)))
    efird.rows[-1] = (*efird.rows[-1][:3], "(first call: includes efird start-up)")
    # 1. what Linux's efivarfs does at mount: walk every name
    guid, name, count = bytes(16), "", 0
    while True:
        resp = efird.call("GetNextVariableName", c.get_next_variable_name(guid, name, 128))
        status, guid, name, _ = c.parse_get_next(resp)
        if status != 0:
            break
        count += 1
    efird.rows[-1] = (*efird.rows[-1][:3], f"end after {count} variables")
    # 2. what the EFI stub and the kernel read
    for var in ("SecureBoot", "SetupMode"):
        resp = efird.call(f"GetVariable {var}", c.get_variable(GV, var, 1))
        efird.rows[-1] = (*efird.rows[-1][:3], f"= {byte_of(resp)}")
    resp = efird.call("QueryVariableInfo NV|BS|RT", c.query_variable_info(7))
    _, total, remaining, max_size = c.parse_query(resp)
    efird.rows[-1] = (*efird.rows[-1][:3], f"{remaining}/{total} free, max {max_size}")
    # 3. a dummy variable, set, read, deleted
    efird.call("SetVariable EfirdDemo", c.set_variable(DEMO, "EfirdDemo", 7, b"hello, efird"))
    resp = efird.call("GetVariable EfirdDemo", c.get_variable(DEMO, "EfirdDemo", 64))
    efird.rows[-1] = (*efird.rows[-1][:3], repr(c.parse_get_variable(resp).data))
    efird.call("SetVariable EfirdDemo (delete)", c.set_variable(DEMO, "EfirdDemo", 7, b""))
    efird.call("GetVariable EfirdDemo", c.get_variable(DEMO, "EfirdDemo", 64))
    # 4. Secure Boot: keys by openssl, signed updates by efitools' sign-efi-sig-list
    with tempfile.TemporaryDirectory() as tmp:
        auth = make_keys(Path(tmp))
    efird.call("SetVariable PK (self-signed)", c.set_variable(GV, "PK", 0x27, auth["PK"]))
    efird.call("SetVariable KEK (signed by PK)", c.set_variable(GV, "KEK", 0x27, auth["KEK"]))
    efird.call("SetVariable db (signed by KEK)", c.set_variable(DBG, "db", 0x27, auth["db"]))
    efird.call("SetVariable db again (replay)", c.set_variable(DBG, "db", 0x27, auth["db"]))
    for var in ("SecureBoot", "SetupMode"):
        resp = efird.call(f"GetVariable {var}", c.get_variable(GV, var, 1))
        efird.rows[-1] = (*efird.rows[-1][:3], f"= {byte_of(resp)}")
    efird.call("SetVariable PK unsigned", c.set_variable(GV, "PK", 7, b"\x00" * 64))
    efird.call("ExitBootServices event", c.envelope(g.EVENT_EXIT_BOOT_SERVICES, b""))
    efird.call("SetVariable BootOrder (runtime)", c.set_variable(GV, "BootOrder", 7, b"\0\0"))
    efird.call("malformed envelope (10 bytes)", bytes(10))
    efird.close()

    print(f"{'call':<36} {'status':<26} {'latency':>10}  detail")
    for label, status, us, detail in efird.rows:
        print(f"{label:<36} {status[:26]:<26} {us:>8.0f}us  {detail}")
    print(f"\nstore left at {STORE} ({STORE.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
