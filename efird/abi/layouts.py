"""Every structure of the efird guest ABI (protocols/PROTOCOL.md, protocols/efird.h)."""

from __future__ import annotations

import construct as cs

from efird.abi.layout import Layout

GUID = cs.Bytes(16)
EFI_TIME = cs.Bytes(16)
U8, U16, U32, U64 = cs.Int8ul, cs.Int16ul, cs.Int32ul, cs.Int64ul

# --- The envelope: EDK2's EFI_MM_COMMUNICATE_HEADER ------------------------------------
MM_COMMUNICATE_HEADER = Layout(
    "EFI_MM_COMMUNICATE_HEADER",
    "HeaderGuid" / GUID,
    "MessageLength" / U64,
    tail="Data",
)

# --- EDK2's SMM variable protocol (MdeModulePkg/Include/Guid/SmmVariableCommon.h) --------
SMM_VARIABLE_COMMUNICATE_HEADER = Layout(
    "SMM_VARIABLE_COMMUNICATE_HEADER",
    "Function" / U64,
    "ReturnStatus" / U64,
    tail="Data",
)
SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE = Layout(
    "SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE",
    "Guid" / GUID,
    "DataSize" / U64,
    "NameSize" / U64,
    "Attributes" / U32,
    tail="Name",
    tail_align=2,
)
SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME = Layout(
    "SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME",
    "Guid" / GUID,
    "NameSize" / U64,
    tail="Name",
)
SMM_VARIABLE_COMMUNICATE_QUERY_VARIABLE_INFO = Layout(
    "SMM_VARIABLE_COMMUNICATE_QUERY_VARIABLE_INFO",
    "MaximumVariableStorageSize" / U64,
    "RemainingVariableStorageSize" / U64,
    "MaximumVariableSize" / U64,
    "Attributes" / U32,
)
SMM_VARIABLE_COMMUNICATE_GET_PAYLOAD_SIZE = Layout(
    "SMM_VARIABLE_COMMUNICATE_GET_PAYLOAD_SIZE",
    "VariablePayloadSize" / U64,
)

# --- EDK2's VarCheckPolicyLib MMI (MdeModulePkg/Include/Guid/VarCheckPolicyMmi.h) -------
# These structures are #pragma pack(1) in EDK2.
VAR_CHECK_POLICY_COMM_HEADER = Layout(
    "VAR_CHECK_POLICY_COMM_HEADER",
    "Signature" / U32,
    "Revision" / U32,
    "Command" / U32,
    "Result" / U64,
    tail="Data",
    packed=True,
)
VAR_CHECK_POLICY_COMM_IS_ENABLED_PARAMS = Layout(
    "VAR_CHECK_POLICY_COMM_IS_ENABLED_PARAMS",
    "State" / U8,
    packed=True,
)
VAR_CHECK_POLICY_COMM_DUMP_PARAMS = Layout(
    "VAR_CHECK_POLICY_COMM_DUMP_PARAMS",
    "PageRequested" / U32,
    "TotalSize" / U32,
    "PageSize" / U32,
    "HasMore" / U8,
    tail="Buffer",
    packed=True,
)
VARIABLE_POLICY_ENTRY = Layout(
    "VARIABLE_POLICY_ENTRY",
    "Version" / U32,
    "Size" / U16,
    "OffsetToName" / U16,
    "Namespace" / GUID,
    "MinSize" / U32,
    "MaxSize" / U32,
    "AttributesMustHave" / U32,
    "AttributesCantHave" / U32,
    "LockPolicyType" / U8,
    "Padding" / cs.Bytes(3),
    packed=True,
)
VARIABLE_LOCK_ON_VAR_STATE_POLICY = Layout(
    "VARIABLE_LOCK_ON_VAR_STATE_POLICY",
    "Namespace" / GUID,
    "Value" / U8,
    "Reserved" / U8,
    tail="Name",
    packed=True,
)
VAR_CHECK_POLICY_COMM_GET_INFO_PARAMS = Layout(
    "VAR_CHECK_POLICY_COMM_GET_INFO_PARAMS",
    "InputVendorGuid" / GUID,
    "InputVariableNameSize" / U32,
    "OutputVariableNameSize" / U32,
    "OutputPolicyEntry" / cs.Bytes(VARIABLE_POLICY_ENTRY.size),
    tail="InputVariableName",
    packed=True,
)

# --- efird's own services: a common header, then function data -----------------------
EFIRD_SERVICE_HEADER = Layout(
    "EFIRD_SERVICE_HEADER",
    "Function" / U64,
    "ReturnStatus" / U64,
    tail="Data",
)
EFIRD_TIME_ACCESS = Layout(
    "EFIRD_TIME_ACCESS",
    "Time" / EFI_TIME,
    "Resolution" / U32,
    "Accuracy" / U32,
    "SetsToZero" / U8,
    "Reserved" / cs.Bytes(7),
)
EFIRD_WAKEUP_ACCESS = Layout(
    "EFIRD_WAKEUP_ACCESS",
    "Enabled" / U8,
    "Pending" / U8,
    "Reserved" / cs.Bytes(6),
    "Time" / EFI_TIME,
)
EFIRD_MONOTONIC_COUNT = Layout(
    "EFIRD_MONOTONIC_COUNT",
    "HighCount" / U32,
    "Reserved" / U32,
)
EFIRD_RESET_SYSTEM = Layout(
    "EFIRD_RESET_SYSTEM",
    "ResetType" / U32,
    "Reserved" / U32,
    "ResetStatus" / U64,
    "DataSize" / U64,
    tail="Data",
)
EFIRD_GET_MEMORY_MAP = Layout(
    "EFIRD_GET_MEMORY_MAP",
    "MemoryMapSize" / U64,
    "MapKey" / U64,
    "DescriptorSize" / U64,
    "DescriptorVersion" / U32,
    "Reserved" / U32,
    tail="MemoryMap",
)
EFIRD_ALLOCATE_PAGES = Layout(
    "EFIRD_ALLOCATE_PAGES",
    "Type" / U32,
    "MemoryType" / U32,
    "Pages" / U64,
    "Memory" / U64,
)
EFIRD_FREE_PAGES = Layout(
    "EFIRD_FREE_PAGES",
    "Memory" / U64,
    "Pages" / U64,
)
EFIRD_EXIT_BOOT_SERVICES = Layout(
    "EFIRD_EXIT_BOOT_SERVICES",
    "MapKey" / U64,
)
EFIRD_SET_VIRTUAL_ADDRESS_MAP = Layout(
    "EFIRD_SET_VIRTUAL_ADDRESS_MAP",
    "MemoryMapSize" / U64,
    "DescriptorSize" / U64,
    "DescriptorVersion" / U32,
    "Reserved" / U32,
    tail="VirtualMap",
)
EFIRD_CONVERT_POINTER = Layout(
    "EFIRD_CONVERT_POINTER",
    "DebugDisposition" / U64,
    "Address" / U64,
)
EFIRD_BUILD_PAGE_TABLES = Layout(
    "EFIRD_BUILD_PAGE_TABLES",
    "TableBase" / U64,
    "TableSize" / U64,
    "Levels" / U32,
    "Flags" / U32,
    "Cr3" / U64,
    "BytesUsed" / U64,
)
EFIRD_EXIT = Layout(
    "EFIRD_EXIT",
    "ExitStatus" / U64,
    "ExitDataSize" / U64,
    tail="ExitData",
)
EFIRD_HVM_MEMMAP_ENTRY = Layout(
    "EFIRD_HVM_MEMMAP_ENTRY",
    "Addr" / U64,
    "Size" / U64,
    "Type" / U32,
    "Reserved" / U32,
)
EFIRD_INIT_MEMORY_MAP = Layout(
    "EFIRD_INIT_MEMORY_MAP",
    "EntryCount" / U64,
    "Flags" / U64,
    tail="Entries",
    tail_align=8,
)
EFIRD_RUNTIME_MAP = Layout(
    "EFIRD_RUNTIME_MAP",
    "MapSize" / U64,
    "DescriptorSize" / U64,
    "DescriptorVersion" / U32,
    "Reserved" / U32,
    tail="Map",
)
EFIRD_SETUP_DATA = Layout(
    "EFIRD_SETUP_DATA",
    "Size" / U64,
    tail="Data",
)
EFIRD_SOFT_RESET = Layout(
    "EFIRD_SOFT_RESET",
    "Flags" / U64,
)
EFIRD_FIRMWARE_TABLES = Layout(
    "EFIRD_FIRMWARE_TABLES",
    "FwVendor" / U64,
    "Tables" / U64,
    "Smbios" / U64,
    "Reserved" / U64,
)
EFI_MEMORY_DESCRIPTOR = Layout(
    "EFI_MEMORY_DESCRIPTOR",
    "Type" / U32,
    "_pad" / cs.Padding(4),
    "PhysicalStart" / U64,
    "VirtualStart" / U64,
    "NumberOfPages" / U64,
    "Attribute" / U64,
)

ALL_LAYOUTS: tuple[Layout, ...] = tuple(
    v for v in list(globals().values()) if isinstance(v, Layout)
)

# Function numbers (protocols/PROTOCOL.md).
class VarFunction:
    GET_VARIABLE = 1
    GET_NEXT_VARIABLE_NAME = 2
    SET_VARIABLE = 3
    QUERY_VARIABLE_INFO = 4
    READY_TO_BOOT = 5
    EXIT_BOOT_SERVICE = 6
    GET_STATISTICS = 7
    LOCK_VARIABLE = 8
    VAR_CHECK_PROPERTY_SET = 9
    VAR_CHECK_PROPERTY_GET = 10
    GET_PAYLOAD_SIZE = 11


class TimeFunction:
    GET_TIME = 1
    SET_TIME = 2
    GET_WAKEUP_TIME = 3
    SET_WAKEUP_TIME = 4
    GET_NEXT_HIGH_MONOTONIC_COUNT = 5


class ResetFunction:
    RESET_SYSTEM = 1


class BootMemFunction:
    GET_MEMORY_MAP = 1
    ALLOCATE_PAGES = 2
    FREE_PAGES = 3
    EXIT_BOOT_SERVICES = 4
    SET_VIRTUAL_ADDRESS_MAP = 5
    CONVERT_POINTER = 6
    BUILD_PAGE_TABLES = 7
    EXIT = 8
    INIT_MEMORY_MAP = 9


class KexecFunction:
    GET_RUNTIME_MAP = 1
    GET_SETUP_DATA = 2
    SOFT_RESET = 3
    SET_FIRMWARE_TABLES = 4


# VarCheckPolicyLib MMI
VAR_CHECK_POLICY_COMM_SIG = int.from_bytes(b"VCPC", "little")  # SIGNATURE_32('V','C','P','C')
VAR_CHECK_POLICY_COMM_REVISION = 1


class PolicyCommand:
    DISABLE = 1
    IS_ENABLED = 2
    REGISTER = 3
    DUMP = 4
    LOCK = 5
    GET_INFO = 6
    GET_LOCK_VAR_STATE_INFO = 7
