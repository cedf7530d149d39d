"""QEMU uefi-vars JSON variable stores (QEMU >= 10 ``-device uefi-vars-*,jsonfile=``).

The layout is QEMU's ``qapi/uefi.json`` (``UefiVarStore`` / ``UefiVariable``), as written by
``hw/uefi/var-service-json.c`` and also understood by virt-firmware and python-uefivars::

    {"version": 2,
     "variables": [{"guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c", "name": "Boot0000",
                    "attr": 7, "data": "<hex>",
                    "time": "<32 hex: raw EFI_TIME>",      # time-based authenticated only
                    "digest": "<64 hex: SHA-256>"}]}      # private authenticated only

What QEMU does, and what efird does about it:

* Only non-volatile variables are saved; ``write`` drops the others and ``read`` refuses them,
  because a variable without NON_VOLATILE in a persistent store is a corrupt file.
* ``time`` is written for every variable with TIME_BASED_AUTHENTICATED_WRITE_ACCESS (0x20);
  QEMU reads it only when it has exactly 32 hex digits, efird insists on that.
* ``digest`` is QEMU's CertDB entry of a private authenticated variable: a SHA-256 over the
  creator's identity (signer CN || top-level TBSCertificate, as EDK2 computes it). It is absent
  for PK/KEK/db/dbx, whose writers are fixed by the spec. efird's ``Variable.signer`` is that
  32-byte identity followed by the top-level certificate; only the identity fits in the file,
  so the certificate is lost on export and an imported variable's signer is the bare identity.
  An all-zero digest (python-uefivars' "no digest") means no signer.
* Names: QEMU copies the UTF-8 bytes of ``name`` one per CHAR16, so it mangles non-ASCII. efird
  writes a proper JSON string of the CHAR16 units: the output is ASCII with ``\\uXXXX`` escapes,
  pairs of surrogate units come back as one character from any JSON parser and lone surrogates
  as ``\\udc00`` escapes that Python's json module round-trips; ``read`` splits characters
  outside the BMP back into their two units, so every name a guest can create survives.
* python-uefivars names the time field ``timestamp``; ``read`` accepts it as an alias.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from efird.efi import time as efitime
from efird.efi.guid import guid_bytes, guid_str
from efird.efi.ucs2 import decode_units
from efird.formats.errors import FormatError
from efird.variables.model import Variable

__all__ = ["VERSION", "FormatError", "probe", "read", "write"]

VERSION = 2
NON_VOLATILE = 0x01
TIME_BASED_AUTH = 0x20
APPEND_WRITE = 0x40
DIGEST_SIZE = 32  # SHA-256

_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")
_FIELDS = frozenset({"guid", "name", "attr", "data", "time", "timestamp", "digest"})


def probe(data: bytes) -> bool:
    """Whether data looks like a uefi-vars JSON store (an object with version and variables);
    a cheap check so a caller can pick the reader before committing to strict parsing."""
    head = data.lstrip()
    if not head.startswith(b"{"):
        return False
    try:
        doc = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and "version" in doc and "variables" in doc


def read(data: bytes, source: str = "<json>") -> list[Variable]:
    """Every variable in a uefi-vars JSON store, in file order.

    Strict on purpose: a store is imported into a firmware's trusted state, so a value QEMU
    would silently turn into zeros (bad hex, short time) is an error here, not a guess.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(source, f"not UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise FormatError(source, f"duplicate JSON key {exc.args[0]!r}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(source, f"bad JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(source, f"bad JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(source, "top level is not a JSON object")
    extra = set(doc) - {"version", "variables"}
    if extra:
        raise FormatError(source, f"unknown top-level keys {sorted(extra)}")
    version = doc.get("version")
    if type(version) is not int:
        raise FormatError(source, f"version must be an integer, not {_kind(version)}")
    if version != VERSION:
        raise FormatError(source, f"unsupported version {version} (expected {VERSION})")
    items = doc.get("variables")
    if not isinstance(items, list):
        raise FormatError(source, f"variables must be a list, not {_kind(items)}")
    out: list[Variable] = []
    seen: set[tuple[bytes, str]] = set()
    for index, item in enumerate(items):
        var = _variable(item, f"variables[{index}]", source)
        if var.key in seen:
            raise FormatError(source, f"variables[{index}]: duplicate variable "
                                      f"{guid_str(var.guid)}:{var.name!r}")
        seen.add(var.key)
        out.append(var)
    return out


def write(variables: Iterable[Variable]) -> bytes:
    """The non-volatile variables as a uefi-vars JSON store, sorted by (GUID, name) so the same
    contents always give the same bytes (diffable, testable). ValueError for variables no
    store can hold (duplicates, empty data, APPEND_WRITE, a signer shorter than a digest)."""
    entries = []
    for var in sort_for_store(variables):
        entry: dict[str, Any] = {
            "guid": guid_str(var.guid),
            "name": var.name,
            "attr": var.attributes,
            "data": var.data.hex(),
        }
        if var.attributes & TIME_BASED_AUTH:
            entry["time"] = var.timestamp.hex()
            if var.signer:
                entry["digest"] = var.signer[:DIGEST_SIZE].hex()
        entries.append(entry)
    doc = {"version": VERSION, "variables": entries}
    return (json.dumps(doc, indent=4, ensure_ascii=True) + "\n").encode("ascii")


def sort_for_store(variables: Iterable[Variable]) -> list[Variable]:
    """The NV variables in canonical order, after checking each can be stored. Volatile
    variables are dropped (QEMU saves only NV ones); the checks are ValueError because a
    caller handing over such a variable is a bug, not a bad file."""
    chosen: dict[tuple[bytes, str], Variable] = {}
    for var in variables:
        if not var.attributes & NON_VOLATILE:
            continue
        label = f"{guid_str(var.guid)}:{var.name!r}"
        if var.key in chosen:
            raise ValueError(f"duplicate variable {label}")
        check_storable(var, label)
        chosen[var.key] = var
    return [chosen[k] for k in sorted(chosen, key=lambda k: (guid_str(k[0]), k[1]))]


def check_storable(var: Variable, label: str) -> None:
    """ValueError unless var can be written to a store and read back unchanged."""
    if len(var.guid) != 16:
        raise ValueError(f"{label}: GUID is {len(var.guid)} bytes, not 16")
    if not var.name or "\0" in var.name or any(ord(c) > 0xFFFF for c in var.name):
        raise ValueError(f"{label}: name is not a non-empty CHAR16 string")
    if not 0 <= var.attributes <= 0xFFFFFFFF or var.attributes & APPEND_WRITE:
        raise ValueError(f"{label}: attributes {var.attributes:#x} cannot be stored")
    if not var.data:
        raise ValueError(f"{label}: empty data (a deleted variable) cannot be stored")
    if len(var.timestamp) != efitime.SIZE:
        raise ValueError(f"{label}: timestamp is not a {efitime.SIZE}-byte EFI_TIME")
    if var.signer and len(var.signer) < DIGEST_SIZE:
        raise ValueError(f"{label}: signer shorter than its {DIGEST_SIZE}-byte identity")


def interchange_name(name: str) -> str:
    """The name with each pair of surrogate units joined into one character, as UTF-8 and
    JSON tools expect; lone surrogates stay as they are."""
    return name.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def units_name(text: str) -> str:
    """A name from a file back to one character per CHAR16 unit (characters outside the BMP
    split into their surrogate pair), the form Variable.name keeps."""
    return decode_units(text.encode("utf-16-le", "surrogatepass"))


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys; in a store that hides which value was meant
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _variable(item: object, where: str, source: str) -> Variable:
    if not isinstance(item, dict):
        raise FormatError(source, f"{where}: not a JSON object")
    extra = set(item) - _FIELDS
    if extra:
        raise FormatError(source, f"{where}: unknown keys {sorted(extra)}")
    for field in ("guid", "name", "attr", "data"):
        if field not in item:
            raise FormatError(source, f"{where}: missing {field!r}")

    guid_text = item["guid"]
    if not isinstance(guid_text, str) or not _GUID_RE.fullmatch(guid_text):
        raise FormatError(source, f"{where}: guid {guid_text!r} is not a registry-form GUID")
    guid = guid_bytes(guid_text)

    name_text = item["name"]
    if not isinstance(name_text, str):
        raise FormatError(source, f"{where}: name must be a string, not {_kind(name_text)}")
    if not name_text or "\0" in name_text:
        raise FormatError(source, f"{where}: name must be non-empty and without NUL")
    name = units_name(name_text)
    where = f"{where} ({guid_text}:{name!r})"

    attr = item["attr"]
    if type(attr) is not int:
        raise FormatError(source, f"{where}: attr must be an integer, not {_kind(attr)}")
    if not 0 <= attr <= 0xFFFFFFFF:
        raise FormatError(source, f"{where}: attr {attr} is not a 32-bit value")
    if not attr & NON_VOLATILE:
        raise FormatError(source, f"{where}: attr {attr:#x} lacks NON_VOLATILE")
    if attr & APPEND_WRITE:
        raise FormatError(source, f"{where}: attr {attr:#x} has APPEND_WRITE, never stored")

    data = _hex(item["data"], "data", where, source)
    if not data:
        raise FormatError(source, f"{where}: empty data (a deleted variable)")

    if "time" in item and "timestamp" in item:
        raise FormatError(source, f"{where}: both 'time' and 'timestamp'")
    time_key = "time" if "time" in item else "timestamp"
    timestamp = efitime.ZERO
    signer = b""
    if attr & TIME_BASED_AUTH:
        if time_key in item:
            timestamp = _hex(item[time_key], time_key, where, source)
            if len(timestamp) != efitime.SIZE:
                raise FormatError(source, f"{where}: {time_key} is {len(timestamp)} bytes, "
                                          f"not a {efitime.SIZE}-byte EFI_TIME")
        if "digest" in item:
            digest = _hex(item["digest"], "digest", where, source)
            if len(digest) != DIGEST_SIZE:
                raise FormatError(source, f"{where}: digest is {len(digest)} bytes, "
                                          f"not a {DIGEST_SIZE}-byte SHA-256")
            signer = b"" if digest == bytes(DIGEST_SIZE) else digest
    elif time_key in item or "digest" in item:
        raise FormatError(source, f"{where}: time/digest on a variable without "
                                  f"TIME_BASED_AUTHENTICATED_WRITE_ACCESS")
    return Variable(guid, name, attr, data, timestamp, signer)


def _hex(value: object, field: str, where: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(source, f"{where}: {field} must be a hex string, not {_kind(value)}")
    if not _HEX_RE.fullmatch(value):
        raise FormatError(source, f"{where}: {field} is not an even-length hex string")
    return bytes.fromhex(value)
