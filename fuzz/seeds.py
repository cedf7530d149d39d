"""Writes the committed seed corpora, fuzz/seeds/<target>/
(python -m fuzz.seeds [target...]; all targets by default).

Seeds are well-formed inputs in each harness's input layout (see fuzz/harness/*.py), so
mutation starts from deep paths: every service function with a valid request, a complete
vhost-user handshake with a ring holding a request, real Secure Boot .auth files made by
openssl and efitools (cert-to-efi-sig-list, sign-efi-sig-list), and store and format
templates with a few patches. The output is deterministic except for the Secure Boot
material (fresh keys each time); the certificates are kept in fuzz/seeds/sbkeys/ as the
auth target's trust anchors, the private keys are not.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from efird.abi import client as c
from efird.abi import layouts as L
from efird.efi import guid as g
from efird.efi import siglist
from efird.variables import policy as P
from efird.vhost import protocol as VP
from efird.vhost.backend import OFFERED_FEATURES

SEEDS = Path(__file__).resolve().parent / "seeds"
GV = g.EFI_GLOBAL_VARIABLE
VENDOR = g.guid_bytes("11111111-2222-3333-4444-555555555555")
Q = struct.Struct("<Q")


def _hdr(function: int) -> bytes:
    return Q.pack(function) + bytes(8)


# -- envelope ----------------------------------------------------------------------------
def envelope_seeds() -> dict[str, bytes]:
    raw = 9  # the raw-mode selector

    def structured(selector: int, function: int, request: bytes, flags: int = 0) -> bytes:
        return bytes([selector, flags, function]) + request[24 + 16 :]

    out: dict[str, bytes] = {}
    requests = {
        "set": c.set_variable(VENDOR, "FuzzVar", 7, b"hello world"),
        "set-volatile": c.set_variable(VENDOR, "Vol", 6, b"\x01\x02"),
        "get": c.get_variable(GV, "SecureBoot", 16),
        "get-small": c.get_variable(GV, "SetupMode", 0),
        "next-first": c.get_next_variable_name(bytes(16), "", 128),
        "next-after": c.get_next_variable_name(GV, "SetupMode", 64),
        "query-nv": c.query_variable_info(7),
        "query-volatile": c.query_variable_info(6),
        "ready-to-boot": c.variable_request(5),
        "exit-boot-service": c.variable_request(6),
        "lock": c.variable_request(8, struct.pack("<16sQ", VENDOR, 8) + "Vol\0".encode(
            "utf-16-le")),
        "payload-size": c.variable_request(11, bytes(8)),
    }
    for name, request in requests.items():
        out[f"smm-{name}-raw"] = bytes([raw, 0]) + request
        function = Q.unpack_from(request, 24)[0]
        out[f"smm-{name}"] = structured(0, function, request)
    # variable policy MMI: register (lock-now, lock-on-create, lock-on-var-state), dump,
    # get info, is-enabled, disable, lock
    policies = [
        P.Policy(VENDOR, "Locked", 0, 0xFFFFFFFF, 0, 0, P.TYPE_LOCK_NOW),
        P.Policy(VENDOR, None, 1, 64, 2, 0, P.TYPE_LOCK_ON_CREATE),
        P.Policy(VENDOR, "Fuzz#Var", 0, 16, 0, 0x40, P.TYPE_LOCK_ON_VAR_STATE, VENDOR,
                 "Gate", 1),
    ]
    for i, policy in enumerate(policies):
        out[f"policy-register-{i}"] = bytes([1, 0, 3]) + policy.pack()
    out["policy-dump-0"] = bytes([1, 0, 4]) + struct.pack("<IIII", 0, 0, 0, 0) + bytes(256)
    out["policy-dump-1"] = bytes([1, 0, 4]) + struct.pack("<IIII", 1, 0, 0, 0) + bytes(64)
    info = L.VAR_CHECK_POLICY_COMM_GET_INFO_PARAMS.struct
    encoded = "Fuzz1Var\0".encode("utf-16-le")
    out["policy-get-info"] = bytes([1, 0, 6]) + info.pack(VENDOR, len(encoded), 64, bytes(
        L.VARIABLE_POLICY_ENTRY.size)) + encoded + bytes(64)
    out["policy-get-lock-state"] = bytes([1, 0, 7]) + out["policy-get-info"][3:]
    for command, label in ((1, "disable"), (2, "is-enabled"), (5, "lock")):
        out[f"policy-{label}"] = bytes([1, 0, command, 0])
    for selector, label in ((2, "end-of-dxe"), (3, "ready-to-boot"), (4, "exit-boot-services")):
        out[f"event-{label}"] = bytes([selector, 0, 0])
    # boot memory (domain 1 has the toolstack's map; domain 0 needs InitMemoryMap)
    boot = {
        "init-map": (0, c.init_memory_map([(0, 0x9F000, 1), (0x100000, 0x3FF00000, 1),
                                           (0xFEC00000, 0x1000, 2)])),
        "get-map": (1, c.get_memory_map(48 * 40)),
        "allocate": (1, c.allocate_pages(0, 2, 16)),
        "allocate-at": (1, c.allocate_pages(2, 6, 4, 0x200000)),
        "free": (1, c.free_pages(0x200000, 4)),
        "exit-boot-services": (1, c.exit_boot_services(0)),
        "virtual-map": (1, c.set_virtual_address_map(struct.pack(
            "<IIQQQQ", 6, 0, 0x3FF40000, 0xFFFFFFFF00000000, 64, 1 << 63), 48)),
        "convert": (1, c.convert_pointer(0x3FF40010)),
        "page-tables": (1, c.build_page_tables(0x100000, 0x100000, 4, 0x3)),
        "page-tables-5": (1, c.build_page_tables(0x100000, 0x200000, 5, 0x4)),
        "exit": (1, c.exit_image(0x8000000000000001, "oops\0".encode("utf-16-le"))),
    }
    for label, (domain, request) in boot.items():
        out[f"bootmem-{label}"] = structured(5, Q.unpack_from(request, 24)[0], request, domain)
    time_access = L.EFIRD_TIME_ACCESS.size
    efi_time = struct.pack("<HBBBBBBIhBB", 2024, 2, 29, 23, 59, 58, 0, 5, 60, 1, 0)
    out["time-get"] = bytes([6, 0, 1]) + bytes(time_access)
    out["time-set"] = bytes([6, 0, 2]) + efi_time + bytes(time_access - 16)
    out["time-get-wakeup"] = bytes([6, 0, 3]) + bytes(L.EFIRD_WAKEUP_ACCESS.size)
    out["time-set-wakeup"] = bytes([6, 0, 4, 1]) + bytes(7) + efi_time
    out["time-monotonic"] = bytes([6, 0, 5]) + bytes(8)
    reset = L.EFIRD_RESET_SYSTEM.struct
    text = "because\0".encode("utf-16-le")
    out["reset-cold"] = bytes([7, 0, 1]) + reset.pack(0, 0, 0, len(text)) + text
    out["reset-warm"] = bytes([7, 0, 1]) + reset.pack(1, 0, 5, 0)
    out["reset-shutdown"] = bytes([7, 0, 1]) + reset.pack(2, 0, 0, 0)
    data = text + VENDOR
    out["reset-platform"] = bytes([7, 0, 1]) + reset.pack(3, 0, 0, len(data)) + data
    out["kexec-runtime-map"] = bytes([8, 1, 1]) + struct.pack("<QQII", 4096, 48, 1, 0) + bytes(
        512)
    out["kexec-setup-data"] = bytes([8, 1, 2]) + Q.pack(128) + bytes(128)
    out["kexec-soft-reset"] = bytes([8, 1, 3]) + Q.pack(0)
    out["kexec-tables"] = bytes([8, 1, 4]) + struct.pack("<QQQQ", 0x3FF00000, 0x3FF01000,
                                                         0x3FF02000, 0)
    return out


# -- vhost and virtqueue -----------------------------------------------------------------
RING_UVA = 0x40000000
DESC, AVAIL, USED, INDIRECT, REQUEST, RESPONSE = 0x0, 0x100, 0x200, 0x300, 0x400, 0x500
DESC_S = struct.Struct("<QIHH")


def ring_image(indirect: bool = False, split: bool = False) -> bytes:
    """Memory with an 8-entry split ring at 0 holding one GetVariable chain."""
    request = c.get_variable(GV, "SecureBoot", 8)
    image = bytearray(0x600)
    if indirect:
        DESC_S.pack_into(image, DESC, INDIRECT, 32, 4, 0)
        DESC_S.pack_into(image, INDIRECT, REQUEST, len(request), 1, 1)
        DESC_S.pack_into(image, INDIRECT + 16, RESPONSE, 0x100, 2, 0)
    elif split:
        half = len(request) // 2
        DESC_S.pack_into(image, DESC, REQUEST, half, 1, 1)
        DESC_S.pack_into(image, DESC + 16, REQUEST + half, len(request) - half, 1, 2)
        DESC_S.pack_into(image, DESC + 32, RESPONSE, 32, 3, 3)
        DESC_S.pack_into(image, DESC + 48, 0x10000, 0x100, 2, 0)  # region 1 (virtqueue)
    else:
        DESC_S.pack_into(image, DESC, REQUEST, len(request), 1, 1)
        DESC_S.pack_into(image, DESC + 16, RESPONSE, 0x100, 2, 0)
    struct.pack_into("<HHH", image, AVAIL, 0, 1, 0)
    image[REQUEST : REQUEST + len(request)] = request
    return bytes(image)


def _message(request: int, payload: bytes = b"", fds: int = 0, memfd: bool = False,
             flags: int = VP.VERSION) -> bytes:
    spec = fds | (0x8 if memfd else 0)
    return bytes([spec, request, flags]) + struct.pack("<H", len(payload)) + payload


def handshake(features: int, queue_size: int = 8) -> bytes:
    R = VP.Request
    protocol = sum(1 << f for f in (VP.ProtocolFeature.MQ, VP.ProtocolFeature.REPLY_ACK,
                                    VP.ProtocolFeature.CONFIGURE_MEM_SLOTS))
    region = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 64 << 10, RING_UVA, 0)
    return b"".join([
        _message(R.GET_FEATURES),
        _message(R.SET_FEATURES, Q.pack(features)),
        _message(R.GET_PROTOCOL_FEATURES),
        _message(R.SET_PROTOCOL_FEATURES, Q.pack(protocol)),
        _message(R.GET_QUEUE_NUM),
        _message(R.SET_MEM_TABLE, region, fds=1, memfd=True),
        _message(R.SET_VRING_NUM, struct.pack("<II", 0, queue_size)),
        _message(R.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, RING_UVA + DESC,
                                               RING_UVA + USED, RING_UVA + AVAIL, 0)),
        _message(R.SET_VRING_BASE, struct.pack("<II", 0, 0)),
        _message(R.SET_VRING_KICK, Q.pack(0), fds=1),
        _message(R.SET_VRING_CALL, Q.pack(0), fds=1),
        _message(R.SET_VRING_ERR, Q.pack(0), fds=1),
        _message(R.SET_VRING_ENABLE, struct.pack("<II", 0, 1),
                 flags=VP.VERSION | VP.FLAG_NEED_REPLY),
    ])


def vhost_seeds() -> dict[str, bytes]:
    R = VP.Request
    base = OFFERED_FEATURES & ~(1 << VP.VIRTIO_RING_F_EVENT_IDX | 1
                                << VP.VIRTIO_RING_F_INDIRECT_DESC)

    def with_image(image: bytes, stream: bytes) -> bytes:
        return struct.pack("<H", len(image)) + image + stream

    region = struct.pack("<QQQQ", 0x100000, 0x1000, 0x50000000, 0x1000)
    extra = b"".join([
        _message(R.ADD_MEM_REG, bytes(8) + region, fds=1, memfd=True),
        _message(R.GET_MAX_MEM_SLOTS),
        _message(R.REM_MEM_REG, bytes(8) + region),
        _message(R.SET_STATUS, Q.pack(0xF)),
        _message(R.GET_STATUS),
        _message(R.GET_VRING_BASE, struct.pack("<II", 0, 0)),
        _message(R.RESET_DEVICE),
    ])
    return {
        "handshake": with_image(ring_image(), handshake(base)),
        "handshake-event-idx-indirect": with_image(ring_image(indirect=True),
                                                   handshake(OFFERED_FEATURES)),
        "handshake-split": with_image(ring_image(split=True), handshake(base, 16)),
        "handshake-then-more": with_image(ring_image(), handshake(base) + extra),
        "no-image-features": with_image(b"", _message(R.GET_FEATURES)
                                        + _message(R.SET_FEATURES, Q.pack(base))),
    }


def virtqueue_seeds() -> dict[str, bytes]:
    def seed(config: int, image: bytes, mode: int = 0, max_request: int | None = None) -> bytes:
        head = struct.pack("<BHHHHHB", config, DESC, AVAIL, USED, 0, 0, mode)
        return head + (b"" if max_request is None else bytes([max_request])) + image

    return {
        "direct": seed(3, ring_image()),
        "direct-event-idx": seed(3 | 0x10, ring_image(), 1),
        "indirect": seed(3 | 0x30, ring_image(indirect=True)),
        "split-region1": seed(4, ring_image(split=True), 5),
        "refused": seed(3, ring_image(), 255),
        "small-max-request": seed(3 | 0x40, ring_image(), 0, 4),
    }


# -- store and formats -------------------------------------------------------------------
def store_seeds() -> dict[str, bytes]:
    def patch(offset: int, chunk: bytes, wal: bool = False) -> bytes:
        return bytes([(len(chunk) - 1) | (0x80 if wal else 0)]) + offset.to_bytes(3,
                                                                                  "little") + chunk

    return {
        "raw-empty": b"\x00",
        "empty": b"\x01",
        "full": b"\x02",
        "crash": b"\x03",
        "full-header-page-size": b"\x02" + patch(16, b"\x02\x00"),
        "full-page2": b"\x02" + patch(1024 + 8, b"\x00\x07"),
        "full-row-byte": b"\x02" + patch(3000, b"X"),
        "crash-wal-frame": b"\x03" + patch(32 + 24 + 100, b"\xff", wal=True),
        "crash-wal-salt": b"\x03" + patch(16, b"\x00\x00\x00\x01", wal=True),
    }


def formats_seeds() -> dict[str, bytes]:
    from fuzz.harness import formats as F

    samples = F.sample_variables()
    out = {
        "raw-json": b"\x00" + F.qemu_json.write(samples),
        "raw-aws": b"\x00" + F.aws.write(samples),
        "raw-aws-b64": b"\x00" + __import__("base64").b64encode(F.aws.write(samples)),
    }
    for k in range(1, 7):
        out[f"template-{k}"] = bytes([k])
    # a record header of the ms image's first variable, a store size, a JSON value
    out["ms-record-state"] = bytes([2, 0]) + struct.pack("<H", 0x48 + 28 + 1) + b"\x3e"
    out["ms-store-size"] = bytes([2, 3]) + struct.pack("<H", 0x48 + 16) + b"\x00\x00\x01\x00"
    out["plain-fv-length"] = bytes([1, 7]) + struct.pack("<H", 32) + bytes(8)
    out["json-attr"] = bytes([4, 1]) + struct.pack("<H", 60) + b"99"
    return out


# -- auth --------------------------------------------------------------------------------
def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def auth_seeds(keys_dir: Path) -> dict[str, bytes]:
    """Keys and certificates from openssl, ESLs from cert-to-efi-sig-list, .auth files
    from sign-efi-sig-list: PK (self-signed), KEK (by PK), db and dbx (by KEK), a private
    authenticated variable, appends."""
    from fuzz.harness.auth import PRIVATE_VENDOR

    out: dict[str, bytes] = {}
    owner = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("PK", "KEK", "db"):
            _run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                  "-sha256", "-days", "3650", "-subj", f"/CN=efird fuzz {name}/",
                  "-keyout", f"{name}.key", "-out", f"{name}.pem"], work)
            _run(["openssl", "x509", "-in", f"{name}.pem", "-outform", "DER",
                  "-out", f"{name}.der"], work)
            _run(["cert-to-efi-sig-list", "-g", owner, f"{name}.pem", f"{name}.esl"], work)
        _run(["openssl", "req", "-new", "-x509", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-sha256", "-days", "3650",
              "-subj", "/CN=efird fuzz ec/", "-keyout", "ec.key", "-out", "ec.pem"], work)
        _run(["cert-to-efi-sig-list", "-g", owner, "ec.pem", "ec.esl"], work)
        (work / "dbx.esl").write_bytes(siglist.build(g.EFI_CERT_SHA256, g.guid_bytes(owner),
                                                     [bytes(range(32)), b"\x5a" * 32]))
        (work / "private.esl").write_bytes(b"private payload")

        def sign(var: str, esl: str, key: str, stamp: str, extra: tuple[str, ...] = ()
                 ) -> bytes:
            out_name = f"{var}-{key}-{stamp[-2:]}{'-a' if '-a' in extra else ''}.auth"
            _run(["sign-efi-sig-list", *extra, "-t", stamp, "-k", f"{key}.key", "-c",
                  f"{key}.pem", var, esl, out_name], work)
            return (work / out_name).read_bytes()

        pk = sign("PK", "PK.esl", "PK", "2024-01-01 00:00:01")
        kek = sign("KEK", "KEK.esl", "PK", "2024-01-01 00:00:02")
        db = sign("db", "db.esl", "KEK", "2024-01-01 00:00:03")
        db_append = sign("db", "ec.esl", "KEK", "2024-01-01 00:00:04", ("-a",))
        dbx = sign("dbx", "dbx.esl", "KEK", "2024-01-01 00:00:05")
        vendor = str(__import__("uuid").UUID(bytes_le=PRIVATE_VENDOR))
        private = sign("FuzzAuth", "private.esl", "db", "2024-01-01 00:00:06",
                       ("-g", vendor))
        pk_delete_esl = work / "empty.esl"
        pk_delete_esl.write_bytes(b"")
        pk_delete = sign("PK", "empty.esl", "PK", "2024-01-01 00:00:09")
        keys_dir.mkdir(parents=True, exist_ok=True)
        for name in ("PK", "KEK", "db"):
            shutil.copy(work / f"{name}.der", keys_dir / f"{name.lower()}.der")
        esls = {name: (work / f"{name}.esl").read_bytes() for name in ("PK", "ec", "dbx")}

    # mode 3: set_variable(variable index, attributes, data); in enrolment order
    order = [("PK", 0, 0x27, pk), ("KEK", 1, 0x27, kek), ("db", 2, 0x27, db),
             ("db-append", 2, 0x67, db_append), ("dbx", 3, 0x27, dbx),
             ("private", 5, 0x27, private), ("pk-delete", 0, 0x27, pk_delete)]
    for label, index, attributes, auth in order:
        out[f"set-{label}"] = bytes([3, index, attributes]) + auth
    out["set-fresh-then-pk"] = bytes([3, 0x80, 0x27]) + pk
    # mode 0: the descriptor split; mode 1: the PKCS#7 inside; mode 2: the lists
    length = struct.unpack_from("<I", pk, 16)[0]
    for label, auth in (("pk", pk), ("private", private)):
        size = struct.unpack_from("<I", auth, 16)[0]
        out[f"split-{label}"] = b"\x00" + auth
        out[f"pkcs7-{label}"] = b"\x01" + auth[40 : 16 + size]
    out["pkcs7-truncated"] = b"\x01" + pk[40 : 16 + length - 7]
    for label, esl in esls.items():
        out[f"siglist-{label}"] = b"\x02" + esl
    out["siglist-two"] = b"\x02" + esls["PK"] + esls["dbx"]
    return out


GENERATORS: dict[str, Callable[[], dict[str, bytes]]] = {
    "envelope": envelope_seeds,
    "vhost": vhost_seeds,
    "virtqueue": virtqueue_seeds,
    "store": store_seeds,
    "formats": formats_seeds,
    "auth": lambda: auth_seeds(SEEDS / "sbkeys"),
}


def main(targets: list[str]) -> None:
    for target, make in GENERATORS.items():
        if targets and target not in targets:
            continue
        directory = SEEDS / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in make().items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(list(directory.iterdir()))} seeds")


if __name__ == "__main__":
    main(sys.argv[1:])
