"""Secure Boot platform mode and the firmware-owned variables that report it.

UEFI 2.10 §32.3: four modes, derived from whether a PK is enrolled and two persisted
flags (AuditMode, DeployedMode). SecureBoot, SetupMode, AuditMode, DeployedMode,
SignatureSupport and VendorKeys are volatile BS|RT variables owned by the firmware;
the guest reads them and can only move AuditMode/DeployedMode through the transitions
the spec allows. The flags and VendorKeys persist in store metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from efird.efi import guid as g
from efird.efi.attributes import BS_RT
from efird.variables.model import Key, Variable


class Mode(Enum):
    SETUP = "setup"
    USER = "user"
    AUDIT = "audit"
    DEPLOYED = "deployed"


GLOBAL = g.EFI_GLOBAL_VARIABLE
PK: Key = (GLOBAL, "PK")
KEK: Key = (GLOBAL, "KEK")
DB: Key = (g.EFI_IMAGE_SECURITY_DATABASE, "db")
DBX: Key = (g.EFI_IMAGE_SECURITY_DATABASE, "dbx")
DBT: Key = (g.EFI_IMAGE_SECURITY_DATABASE, "dbt")
# dbr is a private authenticated variable in EDK2 (AuthVariableLibProcessVariable).
SECURITY_DATABASES = frozenset({DB, DBX, DBT})
KEY_VARIABLES = frozenset({PK, KEK}) | SECURITY_DATABASES

SECURE_BOOT: Key = (GLOBAL, "SecureBoot")
SETUP_MODE: Key = (GLOBAL, "SetupMode")
AUDIT_MODE: Key = (GLOBAL, "AuditMode")
DEPLOYED_MODE: Key = (GLOBAL, "DeployedMode")
SIGNATURE_SUPPORT: Key = (GLOBAL, "SignatureSupport")
VENDOR_KEYS: Key = (GLOBAL, "VendorKeys")
# Written only by the firmware: any SetVariable on them is WRITE_PROTECTED.
READ_ONLY = frozenset({SECURE_BOOT, SETUP_MODE, SIGNATURE_SUPPORT, VENDOR_KEYS})
MODE_SWITCHES = frozenset({AUDIT_MODE, DEPLOYED_MODE})
FIRMWARE_OWNED = READ_ONLY | MODE_SWITCHES

# What AuthVariableLibInitialize publishes in SignatureSupport.
SIGNATURE_SUPPORT_TYPES = (g.EFI_CERT_SHA1, g.EFI_CERT_SHA256, g.EFI_CERT_SHA384,
                           g.EFI_CERT_SHA512, g.EFI_CERT_RSA2048, g.EFI_CERT_X509)

META_AUDIT = "sb.audit_mode"
META_DEPLOYED = "sb.deployed_mode"
META_VENDOR_KEYS = "sb.vendor_keys"
# The store's own policy (EDK2 PcdRequireSelfSignedPk, a build-time choice there): must a PK
# enrolled in setup mode have signed itself? Kept with the store so that the daemon and
# `efird vars` decide alike; set with `efird vars sb-policy`.
META_SELF_SIGNED_PK = "sb.require_self_signed_pk"


@dataclass
class SecureBootState:
    """The persisted part of the platform mode; PK presence is the rest."""

    audit: bool = False
    deployed: bool = False
    vendor_keys: bool = True
    require_self_signed_pk: bool = False

    def mode(self, pk_enrolled: bool) -> Mode:
        if pk_enrolled:
            return Mode.DEPLOYED if self.deployed else Mode.USER
        return Mode.AUDIT if self.audit else Mode.SETUP

    def meta(self) -> dict[str, bytes]:
        return {
            META_AUDIT: bytes([self.audit]),
            META_DEPLOYED: bytes([self.deployed]),
            META_VENDOR_KEYS: bytes([self.vendor_keys]),
            META_SELF_SIGNED_PK: bytes([self.require_self_signed_pk]),
        }

    @classmethod
    def from_meta(cls, get: dict[str, bytes | None]) -> SecureBootState:
        def flag(key: str, default: bool) -> bool:
            raw = get.get(key)
            return default if raw is None else raw == b"\x01"

        return cls(flag(META_AUDIT, False), flag(META_DEPLOYED, False),
                   flag(META_VENDOR_KEYS, True), flag(META_SELF_SIGNED_PK, False))


def firmware_variables(state: SecureBootState, pk_enrolled: bool) -> list[Variable]:
    """The firmware-owned variables as the guest sees them in this state."""
    mode = state.mode(pk_enrolled)
    setup = mode in (Mode.SETUP, Mode.AUDIT)
    values = {
        SECURE_BOOT: bytes([not setup]),
        SETUP_MODE: bytes([setup]),
        AUDIT_MODE: bytes([mode is Mode.AUDIT]),
        DEPLOYED_MODE: bytes([mode is Mode.DEPLOYED]),
        SIGNATURE_SUPPORT: b"".join(SIGNATURE_SUPPORT_TYPES),
        VENDOR_KEYS: bytes([state.vendor_keys]),
    }
    return [Variable(key[0], key[1], BS_RT, data) for key, data in values.items()]
