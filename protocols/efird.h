/*
 * efird guest ABI, version 1.
 *
 * The contract between a guest (firmware, a PVH shim, a test driver) and the efird
 * daemon. protocols/PROTOCOL.md is the prose specification; this header carries the
 * same layouts for C. tests/test_abi_header.py compiles this file and checks every
 * size and offset against efird's Python schemas (efird/abi/layouts.py).
 *
 * All integers are little-endian; GUIDs are in EFI byte order. Layouts follow the
 * natural x86-64 / AArch64 C alignment that EDK2 uses (UINTN is 64-bit).
 *
 * The EDK2-compatible structures (MM communicate, SMM variable, VarCheckPolicy) carry
 * EDK2's names so buffers can be shared with EDK2 code. A translation unit that already
 * includes EDK2's own headers defines EFIRD_HAVE_EDK2_TYPES to skip them.
 */
#ifndef EFIRD_H
#define EFIRD_H

#include <stdint.h>

#define EFIRD_ABI_VERSION 1u

typedef struct {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} EFIRD_GUID;

typedef struct {
    uint16_t Year;
    uint8_t Month;
    uint8_t Day;
    uint8_t Hour;
    uint8_t Minute;
    uint8_t Second;
    uint8_t Pad1;
    uint32_t Nanosecond;
    int16_t TimeZone;
    uint8_t Daylight;
    uint8_t Pad2;
} EFIRD_TIME;

/* ---- Handler GUIDs ------------------------------------------------------------------ */
#define EFIRD_SMM_VARIABLE_PROTOCOL_GUID \
    { 0xed32d533, 0x99e6, 0x4209, { 0x9c, 0xc0, 0x2d, 0x72, 0xcd, 0xd9, 0x98, 0xa7 } }
#define EFIRD_VAR_CHECK_POLICY_MMI_GUID \
    { 0xda1b0d11, 0xd1a7, 0x46c4, { 0x9d, 0xc9, 0xf3, 0x71, 0x48, 0x75, 0xc6, 0xeb } }
#define EFIRD_EVENT_END_OF_DXE_GUID \
    { 0x02ce967a, 0xdd7e, 0x4ffc, { 0x9e, 0xe7, 0x81, 0x0c, 0xf0, 0x47, 0x08, 0x80 } }
#define EFIRD_EVENT_READY_TO_BOOT_GUID \
    { 0x7ce88fb3, 0x4bd7, 0x4679, { 0x87, 0xa8, 0xa8, 0xd8, 0xde, 0xe5, 0x0d, 0x2b } }
#define EFIRD_EVENT_EXIT_BOOT_SERVICES_GUID \
    { 0x27abf055, 0xb1b8, 0x4c26, { 0x80, 0x48, 0x74, 0x8f, 0x37, 0xba, 0xa2, 0xdf } }
#define EFIRD_TIME_SERVICE_GUID \
    { 0xb5e24cba, 0x679a, 0x4b68, { 0x93, 0x29, 0x36, 0x59, 0x96, 0xe9, 0xe6, 0x16 } }
#define EFIRD_RESET_SERVICE_GUID \
    { 0x6fd7a2a1, 0xe7d4, 0x475f, { 0x80, 0x49, 0xbd, 0x64, 0x7a, 0x97, 0x3f, 0x3e } }
#define EFIRD_BOOTMEM_SERVICE_GUID \
    { 0x15cb8aca, 0x18ce, 0x40fd, { 0xa0, 0x48, 0xf7, 0x2e, 0xac, 0x94, 0xdc, 0x8b } }
#define EFIRD_KEXEC_SERVICE_GUID \
    { 0x23cc2723, 0x8cc4, 0x46ba, { 0xaa, 0x82, 0xa2, 0x72, 0xfa, 0xad, 0x32, 0x14 } }

#ifndef EFIRD_HAVE_EDK2_TYPES
/* ---- The envelope: EDK2's EFI_MM_COMMUNICATE_HEADER ------------------------------- */
typedef struct {
    EFIRD_GUID HeaderGuid;
    uint64_t MessageLength; /* bytes of Data */
    uint8_t Data[];
} EFI_MM_COMMUNICATE_HEADER;

/* ---- EDK2 SMM variable protocol (SmmVariableCommon.h) ------------------------------ */
#define SMM_VARIABLE_FUNCTION_GET_VARIABLE 1
#define SMM_VARIABLE_FUNCTION_GET_NEXT_VARIABLE_NAME 2
#define SMM_VARIABLE_FUNCTION_SET_VARIABLE 3
#define SMM_VARIABLE_FUNCTION_QUERY_VARIABLE_INFO 4
#define SMM_VARIABLE_FUNCTION_READY_TO_BOOT 5
#define SMM_VARIABLE_FUNCTION_EXIT_BOOT_SERVICE 6
#define SMM_VARIABLE_FUNCTION_GET_STATISTICS 7
#define SMM_VARIABLE_FUNCTION_LOCK_VARIABLE 8
#define SMM_VARIABLE_FUNCTION_VAR_CHECK_VARIABLE_PROPERTY_SET 9
#define SMM_VARIABLE_FUNCTION_VAR_CHECK_VARIABLE_PROPERTY_GET 10
#define SMM_VARIABLE_FUNCTION_GET_PAYLOAD_SIZE 11

typedef struct {
    uint64_t Function;
    uint64_t ReturnStatus;
    uint8_t Data[];
} SMM_VARIABLE_COMMUNICATE_HEADER;

typedef struct {
    EFIRD_GUID Guid;
    uint64_t DataSize;
    uint64_t NameSize;
    uint32_t Attributes;
    uint16_t Name[]; /* NameSize bytes of UCS-2 with its NUL, then DataSize bytes of data */
} SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE;

typedef struct {
    EFIRD_GUID Guid;
    uint64_t NameSize;
    uint16_t Name[];
} SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME;

/* LockVariable uses the same layout as GetNextVariableName. */
typedef SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME SMM_VARIABLE_COMMUNICATE_LOCK_VARIABLE;

typedef struct {
    uint64_t MaximumVariableStorageSize;
    uint64_t RemainingVariableStorageSize;
    uint64_t MaximumVariableSize;
    uint32_t Attributes;
} SMM_VARIABLE_COMMUNICATE_QUERY_VARIABLE_INFO;

typedef struct {
    uint64_t VariablePayloadSize;
} SMM_VARIABLE_COMMUNICATE_GET_PAYLOAD_SIZE;

/* ---- EDK2 VarCheckPolicyLib MMI (VarCheckPolicyMmi.h, VariablePolicy.h) ------------ */
#define VAR_CHECK_POLICY_COMM_SIG 0x43504356u /* SIGNATURE_32('V','C','P','C') */
#define VAR_CHECK_POLICY_COMM_REVISION 1
#define VAR_CHECK_POLICY_COMMAND_DISABLE 1
#define VAR_CHECK_POLICY_COMMAND_IS_ENABLED 2
#define VAR_CHECK_POLICY_COMMAND_REGISTER 3
#define VAR_CHECK_POLICY_COMMAND_DUMP 4
#define VAR_CHECK_POLICY_COMMAND_LOCK 5
#define VAR_CHECK_POLICY_COMMAND_GET_INFO 6
#define VAR_CHECK_POLICY_COMMAND_GET_LOCK_VAR_STATE_INFO 7

#pragma pack(push, 1)
typedef struct {
    uint32_t Signature;
    uint32_t Revision;
    uint32_t Command;
    uint64_t Result; /* an EFI_STATUS */
    uint8_t Data[];
} VAR_CHECK_POLICY_COMM_HEADER;

typedef struct {
    uint8_t State;
} VAR_CHECK_POLICY_COMM_IS_ENABLED_PARAMS;

typedef struct {
    uint32_t PageRequested;
    uint32_t TotalSize;
    uint32_t PageSize;
    uint8_t HasMore;
    uint8_t Buffer[];
} VAR_CHECK_POLICY_COMM_DUMP_PARAMS;

#define VARIABLE_POLICY_ENTRY_REVISION 0x00010000u
#define VARIABLE_POLICY_NO_MIN_SIZE 0u
#define VARIABLE_POLICY_NO_MAX_SIZE 0xffffffffu
#define VARIABLE_POLICY_TYPE_NO_LOCK 0
#define VARIABLE_POLICY_TYPE_LOCK_NOW 1
#define VARIABLE_POLICY_TYPE_LOCK_ON_CREATE 2
#define VARIABLE_POLICY_TYPE_LOCK_ON_VAR_STATE 3

typedef struct {
    uint32_t Version;
    uint16_t Size;         /* the whole entry: this header, lock policy, name */
    uint16_t OffsetToName; /* == Size when the entry has no name (any name matches) */
    EFIRD_GUID Namespace;
    uint32_t MinSize;
    uint32_t MaxSize;
    uint32_t AttributesMustHave;
    uint32_t AttributesCantHave;
    uint8_t LockPolicyType;
    uint8_t Padding[3];
    /* LockPolicy (for LOCK_ON_VAR_STATE) then Name follow */
} VARIABLE_POLICY_ENTRY;

typedef struct {
    EFIRD_GUID Namespace;
    uint8_t Value;
    uint8_t Reserved;
    uint16_t Name[];
} VARIABLE_LOCK_ON_VAR_STATE_POLICY;

typedef struct {
    EFIRD_GUID InputVendorGuid;
    uint32_t InputVariableNameSize;
    uint32_t OutputVariableNameSize;
    uint8_t OutputPolicyEntry[44]; /* VARIABLE_POLICY_ENTRY or VARIABLE_LOCK_ON_VAR_STATE_POLICY */
    uint16_t InputVariableName[];
} VAR_CHECK_POLICY_COMM_GET_INFO_PARAMS;
#pragma pack(pop)

/* ---- The UEFI memory descriptor, version 1 ------------------------------------------ */
typedef struct {
    uint32_t Type;
    uint64_t PhysicalStart;
    uint64_t VirtualStart;
    uint64_t NumberOfPages;
    uint64_t Attribute;
} EFI_MEMORY_DESCRIPTOR;
#endif /* EFIRD_HAVE_EDK2_TYPES */

/* ---- efird's own services: header, then function data -------------------------------- */
typedef struct {
    uint64_t Function;
    uint64_t ReturnStatus;
    uint8_t Data[];
} EFIRD_SERVICE_HEADER;

/* Time service (EFIRD_TIME_SERVICE_GUID) */
#define EFIRD_TIME_GET_TIME 1
#define EFIRD_TIME_SET_TIME 2
#define EFIRD_TIME_GET_WAKEUP_TIME 3
#define EFIRD_TIME_SET_WAKEUP_TIME 4
#define EFIRD_TIME_GET_NEXT_HIGH_MONOTONIC_COUNT 5

typedef struct {
    EFIRD_TIME Time;
    uint32_t Resolution; /* EFI_TIME_CAPABILITIES */
    uint32_t Accuracy;
    uint8_t SetsToZero;
    uint8_t Reserved[7];
} EFIRD_TIME_ACCESS;

typedef struct {
    uint8_t Enabled;
    uint8_t Pending;
    uint8_t Reserved[6];
    EFIRD_TIME Time;
} EFIRD_WAKEUP_ACCESS;

typedef struct {
    uint32_t HighCount;
    uint32_t Reserved;
} EFIRD_MONOTONIC_COUNT;

/* Reset service (EFIRD_RESET_SERVICE_GUID) */
#define EFIRD_RESET_RESET_SYSTEM 1

typedef struct {
    uint32_t ResetType; /* EFI_RESET_TYPE: 0 cold, 1 warm, 2 shutdown, 3 platform specific */
    uint32_t Reserved;
    uint64_t ResetStatus;
    uint64_t DataSize;
    uint8_t Data[]; /* ResetData: UCS-2 string, NUL, then an EFI_GUID for type 3 */
} EFIRD_RESET_SYSTEM;

/* Boot-memory service (EFIRD_BOOTMEM_SERVICE_GUID) */
#define EFIRD_BOOTMEM_GET_MEMORY_MAP 1
#define EFIRD_BOOTMEM_ALLOCATE_PAGES 2
#define EFIRD_BOOTMEM_FREE_PAGES 3
#define EFIRD_BOOTMEM_EXIT_BOOT_SERVICES 4
#define EFIRD_BOOTMEM_SET_VIRTUAL_ADDRESS_MAP 5
#define EFIRD_BOOTMEM_CONVERT_POINTER 6
#define EFIRD_BOOTMEM_BUILD_PAGE_TABLES 7
#define EFIRD_BOOTMEM_EXIT 8
#define EFIRD_BOOTMEM_INIT_MEMORY_MAP 9

typedef struct {
    uint64_t MemoryMapSize; /* in: bytes of MemoryMap available; out: bytes written/needed */
    uint64_t MapKey;
    uint64_t DescriptorSize; /* in: wanted (0 = default 48, else >= 40); out: used */
    uint32_t DescriptorVersion;
    uint32_t Reserved;
    uint8_t MemoryMap[];
} EFIRD_GET_MEMORY_MAP;

typedef struct {
    uint32_t Type; /* EFI_ALLOCATE_TYPE */
    uint32_t MemoryType;
    uint64_t Pages;
    uint64_t Memory; /* in/out */
} EFIRD_ALLOCATE_PAGES;

typedef struct {
    uint64_t Memory;
    uint64_t Pages;
} EFIRD_FREE_PAGES;

typedef struct {
    uint64_t MapKey;
} EFIRD_EXIT_BOOT_SERVICES;

typedef struct {
    uint64_t MemoryMapSize;
    uint64_t DescriptorSize;
    uint32_t DescriptorVersion;
    uint32_t Reserved;
    uint8_t VirtualMap[];
} EFIRD_SET_VIRTUAL_ADDRESS_MAP;

typedef struct {
    uint64_t DebugDisposition;
    uint64_t Address; /* in/out */
} EFIRD_CONVERT_POINTER;

#define EFIRD_PT_RUNTIME_MAPPINGS 0x1u /* also map runtime regions at Linux's -4 GiB layout */
#define EFIRD_PT_NO_1G 0x2u           /* no 1 GiB leaves (CPU without pdpe1gb) */
#define EFIRD_PT_4K_ONLY 0x4u         /* 4 KiB leaves only */
#define EFIRD_PT_NO_NX 0x8u           /* no NX bits (EFER.NXE left clear) */

typedef struct {
    uint64_t TableBase; /* guest-physical address of the area for the tables */
    uint64_t TableSize; /* bytes available there */
    uint32_t Levels;    /* 4 or 5 */
    uint32_t Flags;
    uint64_t Cr3;       /* out */
    uint64_t BytesUsed; /* out */
} EFIRD_BUILD_PAGE_TABLES;

typedef struct {
    uint64_t ExitStatus;
    uint64_t ExitDataSize;
    uint8_t ExitData[];
} EFIRD_EXIT;

/* PVH's struct hvm_memmap_table_entry (Xen public/arch-x86/hvm/start_info.h). */
typedef struct {
    uint64_t Addr;
    uint64_t Size;
    uint32_t Type; /* 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable, 6 disabled, 7 PMEM,
                    * or one of efird's own region kinds below */
    uint32_t Reserved;
} EFIRD_HVM_MEMMAP_ENTRY;

/* Region kinds InitMemoryMap (and `efird serve --memmap`) accept beyond hvm_memmap's
 * 1..7, for what only the EFI map can say; the EFI type and attributes they get are in
 * PROTOCOL.md §5.1. A PVH shim reports its queue carrier's BAR as EFIRD_REGION_MMIO so
 * that the runtime services can reach it after ExitBootServices. */
#define EFIRD_REGION_MMIO 0x100u         /* EfiMemoryMappedIO, UC|RUNTIME */
#define EFIRD_REGION_RUNTIME_CODE 0x101u /* EfiRuntimeServicesCode */
#define EFIRD_REGION_RUNTIME_DATA 0x102u /* EfiRuntimeServicesData */
#define EFIRD_REGION_BOOT_DATA 0x103u    /* EfiBootServicesData */
#define EFIRD_REGION_BOOT_CODE 0x104u    /* EfiBootServicesCode */
#define EFIRD_REGION_LOADER_CODE 0x105u  /* EfiLoaderCode */
#define EFIRD_REGION_LOADER_DATA 0x106u  /* EfiLoaderData */
#define EFIRD_REGION_MMIO_PORT 0x107u    /* EfiMemoryMappedIOPortSpace, UC|RUNTIME */

/* Build the boot memory map from the guest's hvm_start_info memory map (what a PVH
 * shim has) when the toolstack gave efird none. */
typedef struct {
    uint64_t EntryCount;
    uint64_t Flags;
    EFIRD_HVM_MEMMAP_ENTRY Entries[];
} EFIRD_INIT_MEMORY_MAP;

/* kexec service (EFIRD_KEXEC_SERVICE_GUID) */
#define EFIRD_KEXEC_GET_RUNTIME_MAP 1
#define EFIRD_KEXEC_GET_SETUP_DATA 2
#define EFIRD_KEXEC_SOFT_RESET 3
#define EFIRD_KEXEC_SET_FIRMWARE_TABLES 4

typedef struct {
    uint64_t MapSize; /* in: bytes available; out: bytes written/needed */
    uint64_t DescriptorSize;
    uint32_t DescriptorVersion;
    uint32_t Reserved;
    uint8_t Map[];
} EFIRD_RUNTIME_MAP;

typedef struct {
    uint64_t Size; /* in: bytes available; out: bytes written/needed */
    uint8_t Data[];
} EFIRD_SETUP_DATA;

typedef struct {
    uint64_t Flags;
} EFIRD_SOFT_RESET;

/* What the next kernel's SETUP_EFI needs that only the guest knows: the physical
 * addresses of the firmware vendor string, the configuration table and SMBIOS. */
typedef struct {
    uint64_t FwVendor;
    uint64_t Tables;
    uint64_t Smbios;
    uint64_t Reserved;
} EFIRD_FIRMWARE_TABLES;

#endif /* EFIRD_H */
