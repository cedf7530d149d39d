"""`efird vars` Secure Boot commands: sb-state, sb-policy, enroll, reset-secure-boot.

enroll writes PK, KEK, db and dbx through SetVariable, exactly as a guest would: in setup
mode the store's policy (sb-policy) decides whether an unsigned PK is accepted; with the
PK's private key every write is signed, so the result also works where a self-signed PK
is required, and on a store already in user mode.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from efird.cli.vars_common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Target,
    check,
    command,
    parse_guid,
    print_json,
    read_file,
)
from efird.efi import guid as g
from efird.efi.attributes import AP, AT, BS, NV, RT
from efird.variables import secureboot
from efird.variables.model import Key

KEY_ATTRIBUTES = NV | BS | RT | AT
# SignatureOwner when --owner is not given: efird's own, so that entries it enrolled can
# be told apart from the platform vendor's.
DEFAULT_OWNER = "a4f8aef0-3a53-4f43-bcb6-6f8d3e2b6f11"
DATABASES: tuple[tuple[str, Key], ...] = (
    ("PK", secureboot.PK), ("KEK", secureboot.KEK), ("db", secureboot.DB),
    ("dbx", secureboot.DBX))
MODE_VARIABLES = (("secure_boot", secureboot.SECURE_BOOT), ("setup_mode", secureboot.SETUP_MODE),
                  ("audit_mode", secureboot.AUDIT_MODE),
                  ("deployed_mode", secureboot.DEPLOYED_MODE),
                  ("vendor_keys", secureboot.VENDOR_KEYS))


def add_parsers(cmds: Any) -> None:
    c = command(cmds, "sb-state", "Secure Boot mode and a summary of PK, KEK, db and dbx",
                "  efird vars --store vm1.efivars sb-state\n"
                "  efird vars --store vm1.efivars sb-state --json\n")
    c.add_argument("--json", action="store_true", help="machine-readable output")

    c = command(cmds, "sb-policy", "show or set the store's Secure Boot policy",
                "  efird vars --store vm1.efivars sb-policy\n"
                "  efird vars --store vm1.efivars sb-policy --require-self-signed-pk on\n",
                description="Show or set the store's Secure Boot policy. "
                            "--require-self-signed-pk on makes setup mode accept only a PK "
                            "that signed its own enrolment (EDK2's PcdRequireSelfSignedPk; "
                            "OVMF and efird default to off). The daemon and efird vars "
                            "read it from the store.")
    c.add_argument("--require-self-signed-pk", choices=("on", "off"))

    c = command(
        cmds, "enroll", "enroll PK, KEK, db and dbx (certificates, signature lists, .auth)",
        "  # setup mode, self-signed: every write signed with the new PK's key\n"
        "  efird vars --store vm1.efivars enroll --pk pk.pem --pk-key pk.key \\\n"
        "      --kek kek.pem --db db.crt --db windows-pca.der --dbx dbx.esl\n"
        "  # files signed elsewhere (sign-efi-sig-list): written as they are\n"
        "  efird vars --store vm1.efivars enroll --db db.auth --kek KEK.auth --pk PK.auth\n"
        "  # user mode: add a certificate to db, signed by the KEK\n"
        "  efird vars --store vm1.efivars enroll --append --db extra.pem \\\n"
        "      --kek-key kek.key --kek-cert kek.pem\n",
        description="Enroll Secure Boot keys through SetVariable, in the order dbx, db, "
                    "KEK, PK (so that PK, which ends setup mode, comes last). Each FILE is a "
                    "PEM or DER X.509 certificate (put in a signature list with --owner), "
                    "an EFI signature list (.esl, written as it is), or a signed .auth "
                    "file (sent unchanged; it cannot be combined with other files for the "
                    "same variable). Without a key the writes carry an empty signature, "
                    "which only setup mode accepts (unless the store requires a "
                    "self-signed PK). Each variable is its own write: if one is refused, "
                    "the ones before it stay.")
    for flag, what in (("--pk", "the platform key"), ("--kek", "a key exchange key"),
                       ("--db", "an allowed signer or hash"),
                       ("--dbx", "a forbidden signer or hash")):
        c.add_argument(flag, type=Path, action="append", default=[], metavar="FILE",
                       help=f"{what} (repeat for more)")
    c.add_argument("--owner", default=DEFAULT_OWNER, metavar="GUID",
                   help="SignatureOwner for certificates (default %(default)s)")
    c.add_argument("--pk-key", type=Path, metavar="KEY",
                   help="the PK's private key: signs PK, KEK (and db/dbx without --kek-key)")
    c.add_argument("--pk-cert", type=Path, metavar="CERT",
                   help="the certificate of --pk-key (default: the --pk certificate)")
    c.add_argument("--kek-key", type=Path, metavar="KEY", help="a KEK's key: signs db/dbx")
    c.add_argument("--kek-cert", type=Path, metavar="CERT",
                   help="the certificate of --kek-key (default: the --kek certificate)")
    c.add_argument("--append", action="store_true",
                   help="add to KEK/db/dbx instead of replacing them (APPEND_WRITE)")

    c = command(cmds, "reset-secure-boot", "back to setup mode (the PK is removed)",
                "  efird vars --store vm1.efivars reset-secure-boot\n"
                "  efird vars --store vm1.efivars reset-secure-boot --delete-keys\n",
                description="Back to setup mode, as a platform's physical-presence "
                            "'reset to setup mode': the PK is deleted, Audit and Deployed "
                            "Mode are left. With --delete-keys, KEK, db, dbx and dbt go too.")
    c.add_argument("--delete-keys", action="store_true",
                   help="also delete KEK, db, dbx and dbt")


# ------------------------------------------------------------------ sb-state ---
def describe_signature_lists(data: bytes) -> Any:
    from efird.efi import siglist

    try:
        return siglist.describe(data)
    except siglist.SignatureListError as exc:
        return {"error": str(exc)}


def _summary(data: bytes | None) -> dict[str, Any]:
    from efird.efi import siglist

    if data is None:
        return {"present": False, "certificates": [], "hashes": {}}
    try:
        lists = siglist.describe(data)
    except siglist.SignatureListError as exc:
        return {"present": True, "error": str(exc), "certificates": [], "hashes": {}}
    certificates: list[dict[str, Any]] = []
    hashes: dict[str, int] = {}
    for sig_list in lists:
        for entry in sig_list["entries"]:
            if "subject" in entry or "error" in entry:
                certificates.append({k: entry[k] for k in
                                     ("owner", "subject", "issuer", "sha256", "error")
                                     if k in entry})
            else:
                hashes[sig_list["type"]] = hashes.get(sig_list["type"], 0) + 1
    return {"present": True, "certificates": certificates, "hashes": hashes}


def _sb_state(target: Target, args: argparse.Namespace) -> int:
    state: dict[str, Any] = {"mode": target.mode()}
    for field, key in MODE_VARIABLES:
        v = target.find(*key)
        state[field] = v.data[0] if v is not None and len(v.data) == 1 else None
    state["require_self_signed_pk"] = target.require_self_signed_pk()
    keys = {}
    for name, key in DATABASES:
        v = target.find(*key)
        keys[name] = _summary(v.data if v is not None else None)
    state["keys"] = keys
    if args.json:
        print_json(state)
        return EXIT_OK
    flags = " ".join(f"{f}={state[f]}" for f, _ in MODE_VARIABLES)
    print(f"mode: {state['mode']}  ({flags})")
    print(f"self-signed PK required: {'yes' if state['require_self_signed_pk'] else 'no'}")
    for name, summary in keys.items():
        if not summary["present"]:
            print(f"{name:<4} (not enrolled)")
            continue
        parts = [f"{len(summary['certificates'])} certificate(s)"]
        parts += [f"{n} {t} hash(es)" for t, n in summary["hashes"].items()]
        print(f"{name:<4} " + ", ".join(parts) + (f"  ERROR: {summary['error']}"
                                                  if "error" in summary else ""))
        for cert in summary["certificates"]:
            print(f"       {cert.get('subject', cert.get('error'))}"
                  + (f"  (issuer {cert['issuer']})" if cert.get("issuer") != cert.get("subject")
                     and "issuer" in cert else ""))
    return EXIT_OK


def _sb_policy(target: Target, args: argparse.Namespace) -> int:
    if args.require_self_signed_pk is not None:
        target.set_require_self_signed_pk(args.require_self_signed_pk == "on")
    print(f"require-self-signed-pk: {'on' if target.require_self_signed_pk() else 'off'}")
    return EXIT_OK


def _reset(target: Target, args: argparse.Namespace) -> int:
    check(target.reset_secure_boot(args.delete_keys), "reset-secure-boot")
    print(f"mode: {target.mode()}")
    return EXIT_OK


# -------------------------------------------------------------------- enroll ---
@dataclass
class _Write:
    name: str
    key: Key
    auth_file: bytes | None  # a signed .auth, sent unchanged
    payload: bytes  # otherwise: signature lists to wrap and sign


def _is_auth(data: bytes) -> bool:
    from efird.variables import authvars

    if len(data) < authvars.AUTHINFO2_HEADER:
        return False
    length, _rev, cert_type = struct.unpack_from("<IHH", data, 16)
    return (cert_type == authvars.WIN_CERT_TYPE_EFI_GUID
            and data[24:40] == g.EFI_CERT_TYPE_PKCS7 and 24 <= length <= len(data) - 16)


def _classify(path: Path, flag: str, owner: bytes) -> tuple[str, bytes]:
    """("auth", file) or ("esl", signature lists) for one FILE."""
    from efird.efi import siglist
    from efird.variables.signing import CredentialError, load_certificate

    data = read_file(path, flag)
    if _is_auth(data):
        return "auth", data
    if b"-----BEGIN" in data or data[:1] == b"\x30":
        try:
            return "esl", siglist.build(g.EFI_CERT_X509, owner,
                                        [load_certificate(data, str(path))])
        except CredentialError as exc:
            if b"-----BEGIN" in data:
                raise CliError(EXIT_USAGE, f"{flag} {exc}") from None
    try:
        if data and siglist.parse(data):
            return "esl", data
    except siglist.SignatureListError:
        pass
    raise CliError(EXIT_USAGE, f"{flag} {path}: not a PEM/DER certificate, an EFI signature "
                               "list or a signed .auth file")


def _plan(args: argparse.Namespace) -> list[_Write]:
    owner = parse_guid(args.owner, "--owner")
    plan = []
    for name, key, files in (("dbx", secureboot.DBX, args.dbx), ("db", secureboot.DB, args.db),
                             ("KEK", secureboot.KEK, args.kek), ("PK", secureboot.PK, args.pk)):
        if not files:
            continue
        flag = f"--{name.lower()}"
        parts = [_classify(path, flag, owner) for path in files]
        if any(kind == "auth" for kind, _ in parts):
            if len(parts) > 1:
                raise CliError(EXIT_USAGE, f"{flag}: a signed .auth file must be the only "
                                           f"file for {name}")
            plan.append(_Write(name, key, parts[0][1], b""))
        else:
            plan.append(_Write(name, key, None, b"".join(data for _, data in parts)))
    if not plan:
        raise CliError(EXIT_USAGE, "nothing to enroll: give --pk, --kek, --db or --dbx")
    if any(w.name == "PK" and w.auth_file is None for w in plan) and args.append:
        raise CliError(EXIT_USAGE, "--append: PK cannot be appended to")
    return plan


def _signer(key: Path | None, cert: Path | None, default_cert: list[Path], flag: str
            ) -> Any:
    from efird.variables.signing import CredentialError, Signer, load_certificate

    if key is None:
        if cert is not None:
            raise CliError(EXIT_USAGE, f"{flag}-cert needs {flag}-key")
        return None
    if cert is None:
        if len(default_cert) != 1:
            raise CliError(EXIT_USAGE, f"{flag}-key needs {flag}-cert (or exactly one "
                                       f"{flag} certificate)")
        cert = default_cert[0]
    try:
        return Signer.load(key, load_certificate(read_file(cert, f"{flag}-cert"), str(cert)))
    except CredentialError as exc:
        raise CliError(EXIT_USAGE, f"{flag}-key: {exc}") from None


def _enroll(target: Target, args: argparse.Namespace) -> int:
    from efird.variables.signing import authenticated_write, timestamp_after

    plan = _plan(args)
    pk_signer = _signer(args.pk_key, args.pk_cert, args.pk, "--pk")
    kek_signer = _signer(args.kek_key, args.kek_cert, args.kek, "--kek")
    for w in plan:
        attributes = KEY_ATTRIBUTES | (AP if args.append else 0)
        if w.auth_file is not None:
            data = w.auth_file
            how = "signed file"
        else:
            signer = pk_signer if w.name in ("PK", "KEK") else (kek_signer or pk_signer)
            existing = target.find(*w.key)
            stamp = timestamp_after(existing.timestamp if existing and not args.append
                                    else None)
            data = authenticated_write(w.key[1], w.key[0], attributes, w.payload, stamp,
                                       signer)
            how = "unsigned" if signer is None else f"signed by {_subject(signer.certificate)}"
        status = target.set_variable(w.key[0], w.key[1], attributes, data)
        if status.name == "SECURITY_VIOLATION" and w.auth_file is None:
            hint = (" (outside setup mode, or with a self-signed PK required, give the PK's "
                    "key: --pk-key" + ("" if w.name in ("PK", "KEK") else " or --kek-key")
                    + ")")
            check(status, f"{w.name} ({how}){hint}")
        check(status, f"{w.name} ({how})")
        print(f"{w.name}: {'appended' if args.append else 'enrolled'} ({how})")
    print(f"mode: {target.mode()}")
    return EXIT_OK


def _subject(der: bytes) -> str:
    from cryptography import x509

    return str(x509.load_der_x509_certificate(der).subject.rfc4514_string())


COMMANDS: dict[str, Callable[[Target, argparse.Namespace], int]] = {
    "sb-state": _sb_state, "sb-policy": _sb_policy, "enroll": _enroll,
    "reset-secure-boot": _reset,
}
