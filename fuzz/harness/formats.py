"""Target `formats`: every import format's reader and probe (efird.formats.qemu_json,
edk2_fd, aws), on raw bytes and on real files with patches spliced in.

Input layout:

    u8 mode   % (1 + templates): 0 the rest of the input is the file; k patches
              template k-1: OVMF_VARS_4M.fd and OVMF_VARS_4M.ms.fd from /usr/share/OVMF
              (build_empty() images when absent), a small .fd written by edk2_fd.write,
              then the JSON, raw AWS and base64 AWS forms of the ms.fd variables
    patches   each: u8 length - 1 (1..128), u16 offset (% the file's size; the .fd stores
              and their first records sit in the first 64 KiB), then the bytes

Each module's probe must answer a bool; each read must return Variables or raise
FormatError. What a reader accepts must survive its own writer (read(write(v)) == v, and
for .fd the file as the template), and the other formats' writers (which may refuse a
variable they cannot hold with ValueError, as documented, and drop volatile ones).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from efird.efi import guid as g
from efird.formats import aws, edk2_fd, qemu_json
from efird.formats.errors import FormatError
from efird.variables.model import Variable
from fuzz.harness.common import Finding, Reader

OVMF = Path("/usr/share/OVMF")
MODULES: tuple[ModuleType, ...] = (qemu_json, edk2_fd, aws)
SMALL_FD_SIZE = 0x10000
NV = 0x1
VENDOR = g.guid_bytes("0d6e7f1a-2b3c-4d5e-8f90-a1b2c3d4e5f6")


def _fd_image(name: str) -> bytes:
    path = OVMF / name
    return path.read_bytes() if path.is_file() else edk2_fd.build_empty()


def sample_variables() -> list[Variable]:
    ts = bytes([0xE8, 0x07, 1, 2, 3, 4, 5, 0]) + bytes(8)
    return [
        Variable(g.EFI_GLOBAL_VARIABLE, "BootOrder", 0x7, b"\x01\x00\x00\x00"),
        Variable(VENDOR, "Plain", 0x3, b"value"),
        Variable(VENDOR, "Timed", 0x27, b"signed", ts, bytes(range(32))),
        Variable(VENDOR, "\udc01odd\ud83d\ude00", 0x7, b"\xff"),
    ]


def templates() -> list[bytes]:
    plain, ms = _fd_image("OVMF_VARS_4M.fd"), _fd_image("OVMF_VARS_4M.ms.fd")
    small = edk2_fd.write(sample_variables(), template=edk2_fd.build_empty(SMALL_FD_SIZE))
    ms_vars = [v for v in edk2_fd.read(ms) if v.attributes & NV] or sample_variables()
    raw_aws = aws.write(ms_vars)
    return [plain, ms, small, qemu_json.write(ms_vars), raw_aws, base64.b64encode(raw_aws)]


def build_input(data: bytes, tmpl: list[bytes]) -> bytes:
    r = Reader(data)
    mode = r.u8() % (1 + len(tmpl))
    if mode == 0:
        return r.rest()
    image = bytearray(tmpl[mode - 1])
    while r.left():
        length = r.u8() + 1
        offset = r.u16() % len(image)
        chunk = r.take(length)
        image[offset : offset + len(chunk)] = chunk[: len(image) - offset]
    return bytes(image)


def _key_order(vs: list[Variable]) -> list[Variable]:
    return sorted(vs, key=lambda v: (v.guid, v.name))


def _same(a: list[Variable], b: list[Variable], what: str) -> None:
    if _key_order(a) != _key_order(b):
        raise Finding(f"{what}: the variables changed")


def read_checked(module: ModuleType, blob: bytes) -> list[Variable] | None:
    probed = module.probe(blob)
    if not isinstance(probed, bool):
        raise Finding(f"{module.__name__}.probe answered {probed!r}")
    try:
        variables = module.read(blob, "<fuzz>")
    except FormatError:
        return None
    if not isinstance(variables, list) or not all(isinstance(v, Variable) for v in variables):
        raise Finding(f"{module.__name__}.read returned something else than Variables")
    keys = [v.key for v in variables]
    if len(set(keys)) != len(keys):
        raise Finding(f"{module.__name__}.read returned a variable twice")
    return variables


def _rewrite(writer: Callable[[list[Variable]], bytes], reader: Callable[[bytes, str],
             list[Variable]], variables: list[Variable], what: str,
             documented_refusal: bool) -> list[Variable] | None:
    try:
        blob = writer(variables)
    except ValueError:
        if documented_refusal:
            return None
        raise
    try:
        return reader(blob, "<rewritten>")
    except FormatError as exc:
        raise Finding(f"{what}: its own output does not read back: {exc}") from None


def check(blob: bytes) -> None:
    for module in MODULES:
        variables = read_checked(module, blob)
        if variables is None:
            continue
        # the same format, back and forth: nothing may be refused or lost
        if module is edk2_fd:
            again = _rewrite(lambda vs: edk2_fd.write(vs, template=blob), edk2_fd.read,
                             variables, "edk2_fd with the file as template", False)
            if again != variables:
                raise Finding("edk2_fd: read(write(read(f), template=f)) changed the variables")
        else:
            again = _rewrite(module.write, module.read, variables, module.__name__, False)
            assert again is not None
            _same(variables, again, f"{module.__name__} round trip")
        # conversion, as `efird vars import`/`export` do
        for other in (qemu_json, aws):
            if other is module:
                continue
            converted = _rewrite(other.write, other.read, variables,
                                 f"{module.__name__} -> {other.__name__}", True)
            if converted is None:
                continue
            expected = [_as_interchanged(v) for v in variables if v.attributes & NV]
            _same(expected, converted, f"{module.__name__} -> {other.__name__}")


def _as_interchanged(v: Variable) -> Variable:
    """What the JSON and AWS formats keep of a variable: the timestamp only with
    TIME_BASED_AUTHENTICATED_WRITE_ACCESS, of the signer its 32-byte identity (all zeros
    meaning none)."""
    timed = bool(v.attributes & 0x20)
    signer = v.signer[:32] if timed else b""
    if signer == bytes(len(signer)):
        signer = b""
    timestamp = v.timestamp if timed else bytes(16)
    return Variable(v.guid, v.name, v.attributes, v.data, timestamp, signer)


class Harness:
    def __init__(self) -> None:
        self.templates = templates()

    def __call__(self, data: bytes) -> None:
        check(build_input(data, self.templates))
