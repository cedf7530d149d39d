"""Target `auth`: authenticated writes and what they carry: EFI_VARIABLE_AUTHENTICATION_2
(efird.variables.authvars.split_auth2), PKCS#7 SignedData (efird.efi.pkcs7), signature
lists (efird.efi.siglist) and VariableService.set_variable with
TIME_BASED_AUTHENTICATED_WRITE_ACCESS.

Input layout: u8 mode % 4, then

    0  split_auth2(rest): an AuthWrite, or EfiError(SECURITY_VIOLATION)
    1  parse_signed_data(rest): SignedData or Pkcs7Error; then verify() against the seed
       keys (a bool, never an exception) and signer_identity() (Pkcs7Error or a 32-byte
       identity)
    2  siglist.parse(rest): lists or SignatureListError; then the lists pack back to the
       input, check_format raises only SignatureListError, describe and x509_certificates
       work, and appending a database to itself adds nothing
    3  u8 variable (bits 0-6 % 7: PK, KEK, db, dbx, dbt, a private authenticated
       variable, a plain one; bit 7: start a fresh service first), u8 attributes
       (| TIME_BASED_AUTHENTICATED_WRITE_ACCESS), then the data: set_variable returns a
       Status and never raises. The service (in-memory store) carries over between
       inputs, so an enrolled PK puts it in user mode.

The seed certificates (fuzz/seeds/sbkeys/*.der, made by fuzz/seeds.py with openssl) are
the trust anchors for verify().
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from efird.efi import guid as g
from efird.efi import pkcs7, siglist
from efird.efi.status import EfiError, Status
from efird.store.base import VariableStore
from efird.variables import authvars
from efird.variables.model import Key, Variable
from efird.variables.service import VariableService
from fuzz.harness.common import Finding, Reader, quiet_logs

KEYS_DIR = Path(__file__).resolve().parent.parent / "seeds" / "sbkeys"
PRIVATE_VENDOR = g.guid_bytes("6e2f1c8a-93d4-4b7e-a1f0-5c3d2b1a0e9f")
VARIABLES: tuple[tuple[bytes, str], ...] = (
    (g.EFI_GLOBAL_VARIABLE, "PK"),
    (g.EFI_GLOBAL_VARIABLE, "KEK"),
    (g.EFI_IMAGE_SECURITY_DATABASE, "db"),
    (g.EFI_IMAGE_SECURITY_DATABASE, "dbx"),
    (g.EFI_IMAGE_SECURITY_DATABASE, "dbt"),
    (PRIVATE_VENDOR, "FuzzAuth"),
    (PRIVATE_VENDOR, "FuzzPlain"),
)
AT = 0x20
FRESH = 0x80
_STATUSES = frozenset(Status)


class MemoryStore(VariableStore):
    description = "memory"

    def __init__(self) -> None:
        self.rows: dict[Key, Variable] = {}
        self.meta: dict[str, bytes] = {}

    def load(self) -> Iterable[Variable]:
        return list(self.rows.values())

    def commit(self, puts: Sequence[Variable] = (), deletes: Sequence[Key] = (),
               meta: Mapping[str, bytes] | None = None) -> None:
        for key in deletes:
            self.rows.pop(key, None)
        for v in puts:
            self.rows[v.key] = v
        self.meta.update(meta or {})

    def get_meta(self, key: str) -> bytes | None:
        return self.meta.get(key)

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def trust_anchors() -> list[bytes]:
    return [p.read_bytes() for p in sorted(KEYS_DIR.glob("*.der"))]


def check_split(data: bytes) -> None:
    try:
        auth = authvars.split_auth2(data)
    except EfiError as exc:
        if exc.status is not Status.SECURITY_VIOLATION:
            raise Finding(f"split_auth2 refused with {exc.status.name}") from None
        return
    if len(auth.timestamp) != 16 or 16 + 24 + len(auth.cert_data) + len(auth.payload) != len(
            data):
        raise Finding("split_auth2 lost or invented bytes")


def check_pkcs7(data: bytes, anchors: list[bytes]) -> None:
    try:
        sd = pkcs7.parse_signed_data(data)
    except pkcs7.Pkcs7Error:
        return
    for content in (b"", sd.content or b"efird"):
        if not isinstance(pkcs7.verify(sd, content, anchors), bool):
            raise Finding("pkcs7.verify answered something else than a bool")
    try:
        top, identity = pkcs7.signer_identity(sd)
    except pkcs7.Pkcs7Error:
        return
    if len(identity) != 32 or not isinstance(top, bytes):
        raise Finding("signer_identity is not (certificate DER, 32-byte digest)")


def check_siglist(data: bytes, is_pk: bool) -> None:
    try:
        lists = siglist.parse(data)
    except siglist.SignatureListError:
        return
    if b"".join(sl.pack() for sl in lists) != data:
        raise Finding("signature lists do not pack back to what was parsed")
    with contextlib.suppress(siglist.SignatureListError):
        siglist.check_format(data, is_pk=is_pk)
    siglist.describe(data)
    siglist.x509_certificates(data)
    if siglist.filter_append(data, data):
        raise Finding("appending a database to itself added entries")
    kept = siglist.filter_append(b"", data)
    if [sl for sl in lists if sl.entries] != siglist.parse(kept):
        raise Finding("appending to an empty database changed the lists")


class Harness:
    def __init__(self) -> None:
        quiet_logs()
        self.anchors = trust_anchors()
        self.service = VariableService(MemoryStore())

    def __call__(self, data: bytes) -> None:
        r = Reader(data)
        mode = r.u8() % 4
        if mode == 0:
            check_split(r.rest())
        elif mode == 1:
            check_pkcs7(r.rest(), self.anchors)
        elif mode == 2:
            check_siglist(r.rest(), is_pk=bool(len(data) & 1))
        else:
            self.set_variable(r.u8(), r.u8(), r.rest())

    def set_variable(self, which: int, attributes: int, payload: bytes) -> None:
        if which & FRESH:
            self.service = VariableService(MemoryStore())
        guid, name = VARIABLES[(which & ~FRESH) % len(VARIABLES)]
        status = self.service.set_variable(guid, name, attributes | AT, payload)
        if status not in _STATUSES:
            raise Finding(f"set_variable returned {status!r}")
        self.service.get_variable(guid, name, 1 << 16)
        self.service.mode  # noqa: B018 - derived state must stay computable
