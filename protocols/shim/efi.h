/*
 * The UEFI 2.10 types the shim needs, written from the specification (chapters 4, 7, 8,
 * 9, 10 and 12). Only what the shim serves or hands to an OS loader is here.
 */
#ifndef SHIM_EFI_H
#define SHIM_EFI_H

#include <stddef.h>
#include <stdint.h>

#include "../efird.h"

#define EFIAPI __attribute__((ms_abi))

typedef uint64_t EFI_STATUS;
typedef void *EFI_HANDLE;
typedef uint16_t CHAR16;
typedef EFIRD_GUID EFI_GUID;
typedef EFIRD_TIME EFI_TIME;

#define EFI_ERR(n) (0x8000000000000000ull | (n))
#define EFI_SUCCESS 0ull
#define EFI_LOAD_ERROR EFI_ERR(1)
#define EFI_INVALID_PARAMETER EFI_ERR(2)
#define EFI_UNSUPPORTED EFI_ERR(3)
#define EFI_BAD_BUFFER_SIZE EFI_ERR(4)
#define EFI_BUFFER_TOO_SMALL EFI_ERR(5)
#define EFI_NOT_READY EFI_ERR(6)
#define EFI_DEVICE_ERROR EFI_ERR(7)
#define EFI_OUT_OF_RESOURCES EFI_ERR(9)
#define EFI_NOT_FOUND EFI_ERR(14)
#define EFI_TIMEOUT EFI_ERR(18)

typedef struct {
    uint64_t Signature;
    uint32_t Revision;
    uint32_t HeaderSize;
    uint32_t CRC32;
    uint32_t Reserved;
} EFI_TABLE_HEADER;

#define EFI_SYSTEM_TABLE_SIGNATURE 0x5453595320494249ull   /* "IBI SYST" */
#define EFI_BOOT_SERVICES_SIGNATURE 0x56524553544f4f42ull  /* "BOOTSERV" */
#define EFI_RUNTIME_SERVICES_SIGNATURE 0x56524553544e5552ull /* "RUNTSERV" */
#define EFI_REVISION_2_70 ((2u << 16) | 70u)

typedef struct {
    uint32_t Type;
    uint32_t Pad;
    uint64_t PhysicalStart;
    uint64_t VirtualStart;
    uint64_t NumberOfPages;
    uint64_t Attribute;
} EFI_MEMORY_DESCRIPTOR_T;

enum {
    EfiReservedMemoryType, EfiLoaderCode, EfiLoaderData, EfiBootServicesCode,
    EfiBootServicesData, EfiRuntimeServicesCode, EfiRuntimeServicesData,
    EfiConventionalMemory, EfiUnusableMemory, EfiACPIReclaimMemory, EfiACPIMemoryNVS,
    EfiMemoryMappedIO, EfiMemoryMappedIOPortSpace, EfiPalCode, EfiPersistentMemory,
};
enum { AllocateAnyPages, AllocateMaxAddress, AllocateAddress };

typedef struct {
    EFI_TABLE_HEADER Hdr;
    void *Slot[44]; /* RaiseTPL .. CreateEventEx, in the specification's order */
} EFI_BOOT_SERVICES;

enum {
    BS_RAISE_TPL, BS_RESTORE_TPL, BS_ALLOCATE_PAGES, BS_FREE_PAGES, BS_GET_MEMORY_MAP,
    BS_ALLOCATE_POOL, BS_FREE_POOL, BS_CREATE_EVENT, BS_SET_TIMER, BS_WAIT_FOR_EVENT,
    BS_SIGNAL_EVENT, BS_CLOSE_EVENT, BS_CHECK_EVENT, BS_INSTALL_PROTOCOL_INTERFACE,
    BS_REINSTALL_PROTOCOL_INTERFACE, BS_UNINSTALL_PROTOCOL_INTERFACE, BS_HANDLE_PROTOCOL,
    BS_RESERVED, BS_REGISTER_PROTOCOL_NOTIFY, BS_LOCATE_HANDLE, BS_LOCATE_DEVICE_PATH,
    BS_INSTALL_CONFIGURATION_TABLE, BS_LOAD_IMAGE, BS_START_IMAGE, BS_EXIT, BS_UNLOAD_IMAGE,
    BS_EXIT_BOOT_SERVICES, BS_GET_NEXT_MONOTONIC_COUNT, BS_STALL, BS_SET_WATCHDOG_TIMER,
    BS_CONNECT_CONTROLLER, BS_DISCONNECT_CONTROLLER, BS_OPEN_PROTOCOL, BS_CLOSE_PROTOCOL,
    BS_OPEN_PROTOCOL_INFORMATION, BS_PROTOCOLS_PER_HANDLE, BS_LOCATE_HANDLE_BUFFER,
    BS_LOCATE_PROTOCOL, BS_INSTALL_MULTIPLE_PROTOCOL_INTERFACES,
    BS_UNINSTALL_MULTIPLE_PROTOCOL_INTERFACES, BS_CALCULATE_CRC32, BS_COPY_MEM, BS_SET_MEM,
    BS_CREATE_EVENT_EX, BS_COUNT
};

typedef struct {
    EFI_TABLE_HEADER Hdr;
    void *Slot[14]; /* GetTime .. QueryVariableInfo */
} EFI_RUNTIME_SERVICES;

enum {
    RT_GET_TIME, RT_SET_TIME, RT_GET_WAKEUP_TIME, RT_SET_WAKEUP_TIME,
    RT_SET_VIRTUAL_ADDRESS_MAP, RT_CONVERT_POINTER, RT_GET_VARIABLE,
    RT_GET_NEXT_VARIABLE_NAME, RT_SET_VARIABLE, RT_GET_NEXT_HIGH_MONOTONIC_COUNT,
    RT_RESET_SYSTEM, RT_UPDATE_CAPSULE, RT_QUERY_CAPSULE_CAPABILITIES,
    RT_QUERY_VARIABLE_INFO, RT_COUNT
};

/* EFI_RT_PROPERTIES_TABLE bits (UEFI 2.10 §4.6.2) */
#define EFI_RT_SUPPORTED_GET_TIME 0x0001u
#define EFI_RT_SUPPORTED_SET_TIME 0x0002u
#define EFI_RT_SUPPORTED_GET_WAKEUP_TIME 0x0004u
#define EFI_RT_SUPPORTED_SET_WAKEUP_TIME 0x0008u
#define EFI_RT_SUPPORTED_GET_VARIABLE 0x0010u
#define EFI_RT_SUPPORTED_GET_NEXT_VARIABLE_NAME 0x0020u
#define EFI_RT_SUPPORTED_SET_VARIABLE 0x0040u
#define EFI_RT_SUPPORTED_SET_VIRTUAL_ADDRESS_MAP 0x0080u
#define EFI_RT_SUPPORTED_CONVERT_POINTER 0x0100u
#define EFI_RT_SUPPORTED_GET_NEXT_HIGH_MONOTONIC_COUNT 0x0200u
#define EFI_RT_SUPPORTED_RESET_SYSTEM 0x0400u
#define EFI_RT_SUPPORTED_QUERY_VARIABLE_INFO 0x2000u

typedef struct {
    uint16_t Version; /* 1 */
    uint16_t Length;  /* 8 */
    uint32_t RuntimeServicesSupported;
} EFI_RT_PROPERTIES_TABLE;

typedef struct {
    EFI_GUID VendorGuid;
    void *VendorTable;
} EFI_CONFIGURATION_TABLE;

typedef struct {
    int32_t MaxMode, Mode, Attribute, CursorColumn, CursorRow;
    uint8_t CursorVisible;
} SIMPLE_TEXT_OUTPUT_MODE;

typedef struct {
    void *Reset, *OutputString, *TestString, *QueryMode, *SetMode, *SetAttribute,
        *ClearScreen, *SetCursorPosition, *EnableCursor;
    SIMPLE_TEXT_OUTPUT_MODE *Mode;
} EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL;

typedef struct {
    void *Reset, *ReadKeyStroke, *WaitForKey;
} EFI_SIMPLE_TEXT_INPUT_PROTOCOL;

typedef struct {
    EFI_TABLE_HEADER Hdr;
    CHAR16 *FirmwareVendor;
    uint32_t FirmwareRevision;
    EFI_HANDLE ConsoleInHandle;
    EFI_SIMPLE_TEXT_INPUT_PROTOCOL *ConIn;
    EFI_HANDLE ConsoleOutHandle;
    EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL *ConOut;
    EFI_HANDLE StandardErrorHandle;
    EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL *StdErr;
    EFI_RUNTIME_SERVICES *RuntimeServices;
    EFI_BOOT_SERVICES *BootServices;
    uint64_t NumberOfTableEntries;
    EFI_CONFIGURATION_TABLE *ConfigurationTable;
} EFI_SYSTEM_TABLE;

typedef struct {
    uint8_t Type, SubType;
    uint8_t Length[2];
} EFI_DEVICE_PATH;

typedef struct {
    uint32_t Revision;
    EFI_HANDLE ParentHandle;
    EFI_SYSTEM_TABLE *SystemTable;
    EFI_HANDLE DeviceHandle;
    EFI_DEVICE_PATH *FilePath;
    void *Reserved;
    uint32_t LoadOptionsSize;
    void *LoadOptions;
    void *ImageBase;
    uint64_t ImageSize;
    uint32_t ImageCodeType;
    uint32_t ImageDataType;
    void *Unload;
} EFI_LOADED_IMAGE_PROTOCOL;

typedef struct {
    void *LoadFile;
} EFI_LOAD_FILE2_PROTOCOL;

#define GUID(a, b, c, d0, d1, d2, d3, d4, d5, d6, d7) \
    { a, b, c, { d0, d1, d2, d3, d4, d5, d6, d7 } }
#define LOADED_IMAGE_PROTOCOL_GUID \
    GUID(0x5b1b31a1, 0x9562, 0x11d2, 0x8e, 0x3f, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b)
#define DEVICE_PATH_PROTOCOL_GUID \
    GUID(0x09576e91, 0x6d3f, 0x11d2, 0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b)
#define LOAD_FILE2_PROTOCOL_GUID \
    GUID(0x4006c0c1, 0xfcb3, 0x403e, 0x99, 0x6d, 0x4a, 0x6c, 0x87, 0x24, 0xe0, 0x6d)
#define LINUX_EFI_INITRD_MEDIA_GUID \
    GUID(0x5568e427, 0x68fc, 0x4f3d, 0xac, 0x74, 0xca, 0x55, 0x52, 0x31, 0xcc, 0x68)
#define ACPI_20_TABLE_GUID \
    GUID(0x8868e871, 0xe4f1, 0x11d3, 0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c, 0x88, 0x81)
#define SMBIOS_TABLE_GUID \
    GUID(0xeb9d2d31, 0x2d88, 0x11d3, 0x9a, 0x16, 0x00, 0x90, 0x27, 0x3f, 0xc1, 0x4d)
#define SMBIOS3_TABLE_GUID \
    GUID(0xf2fd1544, 0x9794, 0x4a2c, 0x99, 0x2e, 0xe5, 0xbb, 0xcf, 0x20, 0xe3, 0x94)
#define EFI_RT_PROPERTIES_TABLE_GUID \
    GUID(0xeb66918a, 0x7eef, 0x402a, 0x84, 0x2e, 0x93, 0x1d, 0x21, 0xc3, 0x8a, 0xe9)
#define EFI_GLOBAL_VARIABLE_GUID \
    GUID(0x8be4df61, 0x93ca, 0x11d2, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c)

#endif
