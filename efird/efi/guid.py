"""GUIDs in EFI byte order, and the names of the ones an operator meets."""

from __future__ import annotations

import uuid
from functools import lru_cache


def guid_bytes(text: str) -> bytes:
    """Registry form ("8be4df61-...") to the 16 bytes stored in EFI structures."""
    return uuid.UUID(text).bytes_le


@lru_cache(maxsize=1024)  # a store has few distinct vendor GUIDs and many variables
def guid_str(raw: bytes) -> str:
    """16 bytes in EFI order to lowercase registry form."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


# Namespaces and handler GUIDs (UEFI 2.10, EDK2 MdeModulePkg / SecurityPkg).
EFI_GLOBAL_VARIABLE = guid_bytes("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = guid_bytes("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_SECURE_BOOT_ENABLE_DISABLE = guid_bytes("f0a30bc7-af08-4556-99c4-001009c93a44")
EFI_HARDWARE_ERROR_VARIABLE = guid_bytes("414e6bdd-e47b-47cc-b244-bb61020cf516")
EFI_CERT_DB = guid_bytes("d9bee56e-75dc-49d9-b4d7-b534210f637a")
SHIM_LOCK = guid_bytes("605dab50-e046-4300-abb6-3dd810dd8b23")

SMM_VARIABLE_PROTOCOL = guid_bytes("ed32d533-99e6-4209-9cc0-2d72cdd998a7")
VAR_CHECK_POLICY_MMI = guid_bytes("da1b0d11-d1a7-46c4-9dc9-f3714875c6eb")
EVENT_END_OF_DXE = guid_bytes("02ce967a-dd7e-4ffc-9ee7-810cf0470880")
EVENT_READY_TO_BOOT = guid_bytes("7ce88fb3-4bd7-4679-87a8-a8d8dee50d2b")
EVENT_EXIT_BOOT_SERVICES = guid_bytes("27abf055-b1b8-4c26-8048-748f37baa2df")

# efird's own services (protocols/PROTOCOL.md).
EFIRD_TIME_SERVICE = guid_bytes("b5e24cba-679a-4b68-9329-365996e9e616")
EFIRD_RESET_SERVICE = guid_bytes("6fd7a2a1-e7d4-475f-8049-bd647a973f3e")
EFIRD_BOOTMEM_SERVICE = guid_bytes("15cb8aca-18ce-40fd-a048-f72eac94dc8b")
EFIRD_KEXEC_SERVICE = guid_bytes("23cc2723-8cc4-46ba-aa82-a272faad3214")

# Certificates and signature types.
EFI_CERT_TYPE_PKCS7 = guid_bytes("4aafd29d-68df-49ee-8aa9-347d375665a7")
EFI_CERT_SHA1 = guid_bytes("826ca512-cf10-4ac9-b187-be01496631bd")
EFI_CERT_SHA224 = guid_bytes("0b6e5233-a65c-44c9-9407-d9ab83bfc8bd")
EFI_CERT_SHA256 = guid_bytes("c1c41626-504c-4092-aca9-41f936934328")
EFI_CERT_SHA384 = guid_bytes("ff3e5307-9fd0-48c9-85f1-8ad56c701e01")
EFI_CERT_SHA512 = guid_bytes("093e0fae-a6c4-4f50-9f1b-d41e2b89c19a")
EFI_CERT_RSA2048 = guid_bytes("3c5766e8-269c-4e34-aa14-ed776e85b3b6")
EFI_CERT_RSA2048_SHA256 = guid_bytes("e2b36190-879b-4a3d-ad8d-f2e7bba32784")
EFI_CERT_RSA2048_SHA1 = guid_bytes("67f8444f-8743-48f1-a328-1eaab8736080")
EFI_CERT_X509 = guid_bytes("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_X509_SHA256 = guid_bytes("3bd2a492-96c0-4079-b420-fcf98ef103ed")
EFI_CERT_X509_SHA384 = guid_bytes("7076876e-80c2-4ee6-aad2-28b349a6865b")
EFI_CERT_X509_SHA512 = guid_bytes("446dbf63-2502-4cda-bcfa-2465d2b0fe9d")
EFI_RT_PROPERTIES_TABLE = guid_bytes("eb66918a-7eef-402a-842e-931d21c38ae9")

NAMES: dict[bytes, str] = {
    EFI_GLOBAL_VARIABLE: "EfiGlobalVariable",
    EFI_IMAGE_SECURITY_DATABASE: "EfiImageSecurityDatabase",
    EFI_SECURE_BOOT_ENABLE_DISABLE: "EfiSecureBootEnableDisable",
    EFI_HARDWARE_ERROR_VARIABLE: "EfiHardwareErrorVariable",
    EFI_CERT_DB: "EfiCertDb",
    SHIM_LOCK: "ShimLock",
    SMM_VARIABLE_PROTOCOL: "EfiSmmVariableProtocol",
    VAR_CHECK_POLICY_MMI: "VarCheckPolicyLibMmiHandler",
    EVENT_END_OF_DXE: "EndOfDxeEventGroup",
    EVENT_READY_TO_BOOT: "EventReadyToBoot",
    EVENT_EXIT_BOOT_SERVICES: "EventExitBootServices",
    EFIRD_TIME_SERVICE: "EfirdTimeService",
    EFIRD_RESET_SERVICE: "EfirdResetService",
    EFIRD_BOOTMEM_SERVICE: "EfirdBootMemoryService",
    EFIRD_KEXEC_SERVICE: "EfirdKexecService",
    EFI_CERT_TYPE_PKCS7: "EfiCertTypePkcs7",
    EFI_CERT_SHA1: "EfiCertSha1",
    EFI_CERT_SHA224: "EfiCertSha224",
    EFI_CERT_SHA256: "EfiCertSha256",
    EFI_CERT_SHA384: "EfiCertSha384",
    EFI_CERT_SHA512: "EfiCertSha512",
    EFI_CERT_RSA2048: "EfiCertRsa2048",
    EFI_CERT_RSA2048_SHA256: "EfiCertRsa2048Sha256",
    EFI_CERT_RSA2048_SHA1: "EfiCertRsa2048Sha1",
    EFI_CERT_X509: "EfiCertX509",
    EFI_CERT_X509_SHA256: "EfiCertX509Sha256",
    EFI_CERT_X509_SHA384: "EfiCertX509Sha384",
    EFI_CERT_X509_SHA512: "EfiCertX509Sha512",
}


def guid_name(raw: bytes) -> str:
    """Friendly name when known, else the registry form."""
    return NAMES.get(bytes(raw), guid_str(raw))


def parse_guid(text: str) -> bytes:
    """A GUID from registry form or a friendly name (case-insensitive)."""
    for raw, name in NAMES.items():
        if name.lower() == text.lower():
            return raw
    try:
        return guid_bytes(text)
    except ValueError:
        raise ValueError(f"not a GUID or known GUID name: {text!r}") from None
