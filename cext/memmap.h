/*
 * efird's EFI memory-map engine: the map a guest sees through GetMemoryMap, changed by
 * AllocatePages/FreePages, frozen by SetVirtualAddressMap, and converted to the E820 /
 * hvm_memmap tables a PVH or kexec'd kernel reads.
 *
 * Small and pure: every function works on caller-provided memory (the descriptor array,
 * the output buffers), never allocates, never writes outside what it was given, and
 * returns an EFI_STATUS value. A failing call leaves the map as it was (the one
 * exception, efird_mm_build, leaves it empty). efird/core/memmap_ref.py is the Python
 * model of the same rules; tests compare the two.
 *
 * The map
 *   descs[0..count) (somewhere inside the caller's array, see efird_mm_map) is sorted by
 *   phys_start; descriptors never overlap; two adjacent descriptors with the same type,
 *   attribute and flags are always merged, so every run of free memory is exactly one
 *   EfiConventionalMemory descriptor, with attribute UC|WC|WT|WB. Everything lies below
 *   EFIRD_MM_PHYS_LIMIT (52-bit physical addresses), so phys_start + pages * 4 KiB never
 *   overflows.
 *
 * Allocation tracking
 *   EFI_MEMORY_DESCRIPTOR has 4 bytes of padding after Type. efird_mm_desc names them
 *   `flags` and keeps EFIRD_MM_FLAG_ALLOCATED there for pages handed out by AllocatePages,
 *   so FreePages can refuse (NOT_FOUND) to free anything else - firmware regions from
 *   the toolstack keep flags 0 even when they carry an allocatable type such as
 *   EfiBootServicesData. The flag takes part in merging (an allocation never merges with
 *   a toolstack region) and is never encoded: GetMemoryMap writes the padding as zero.
 */
#ifndef EFIRD_MEMMAP_H
#define EFIRD_MEMMAP_H

#include <stdint.h>

/* ---- Limits ------------------------------------------------------------------------ */
#define EFIRD_MM_PAGE_SIZE 4096
#define EFIRD_MM_PHYS_LIMIT 0x10000000000000ull /* 1 << 52: first address past the map */
#define EFIRD_MM_DESC_VERSION 1
#define EFIRD_MM_DEFAULT_DESC_SIZE 48  /* what EDK2 returns, so callers must step by it */
#define EFIRD_MM_MAX_DESC_SIZE 4096

/* ---- EFI_STATUS values this engine returns ------------------------------------------ */
#define EFIRD_MM_SUCCESS 0ull
#define EFIRD_MM_INVALID_PARAMETER 0x8000000000000002ull
#define EFIRD_MM_UNSUPPORTED 0x8000000000000003ull
#define EFIRD_MM_BUFFER_TOO_SMALL 0x8000000000000005ull
#define EFIRD_MM_OUT_OF_RESOURCES 0x8000000000000009ull
#define EFIRD_MM_NOT_FOUND 0x800000000000000eull
#define EFIRD_MM_NO_MAPPING 0x8000000000000011ull

/* ---- Region kinds: the toolstack's description of guest-physical memory --------------
 * 1..7 are the E820 / hvm_memmap types; 0x100.. are efird's own, for what only the EFI
 * map can say. Kind -> EFI type, attribute:
 *   RAM          EfiConventionalMemory       UC|WC|WT|WB
 *   RESERVED     EfiReservedMemoryType       0
 *   ACPI         EfiACPIReclaimMemory        UC|WC|WT|WB
 *   NVS          EfiACPIMemoryNVS            UC|WC|WT|WB
 *   UNUSABLE     EfiUnusableMemory           UC|WC|WT|WB
 *   DISABLED     EfiReservedMemoryType       0
 *   PERSISTENT   EfiPersistentMemory         UC|WC|WT|WB|NV
 *   MMIO         EfiMemoryMappedIO           UC|RUNTIME
 *   RUNTIME_CODE EfiRuntimeServicesCode      UC|WC|WT|WB|RUNTIME
 *   RUNTIME_DATA EfiRuntimeServicesData      UC|WC|WT|WB|RUNTIME
 *   BOOT_DATA    EfiBootServicesData         UC|WC|WT|WB
 *   BOOT_CODE    EfiBootServicesCode         UC|WC|WT|WB
 *   LOADER_CODE  EfiLoaderCode               UC|WC|WT|WB   (e.g. the kernel image)
 *   LOADER_DATA  EfiLoaderData               UC|WC|WT|WB   (initrd, command line, ...)
 *   MMIO_PORT    EfiMemoryMappedIOPortSpace  UC|RUNTIME
 * Alignment: RAM is trimmed inward to whole pages (as Linux does with E820 RAM) and
 * vanishes if no whole page remains; every other kind must start and end on a page
 * boundary. */
#define EFIRD_MM_KIND_RAM 1
#define EFIRD_MM_KIND_RESERVED 2
#define EFIRD_MM_KIND_ACPI 3
#define EFIRD_MM_KIND_NVS 4
#define EFIRD_MM_KIND_UNUSABLE 5
#define EFIRD_MM_KIND_DISABLED 6
#define EFIRD_MM_KIND_PERSISTENT 7
#define EFIRD_MM_KIND_MMIO 0x100
#define EFIRD_MM_KIND_RUNTIME_CODE 0x101
#define EFIRD_MM_KIND_RUNTIME_DATA 0x102
#define EFIRD_MM_KIND_BOOT_DATA 0x103
#define EFIRD_MM_KIND_BOOT_CODE 0x104
#define EFIRD_MM_KIND_LOADER_CODE 0x105
#define EFIRD_MM_KIND_LOADER_DATA 0x106
#define EFIRD_MM_KIND_MMIO_PORT 0x107

/* ---- EFI_MEMORY_TYPE ------------------------------------------------------------------ */
#define EFIRD_MM_EFI_RESERVED 0
#define EFIRD_MM_EFI_LOADER_CODE 1
#define EFIRD_MM_EFI_LOADER_DATA 2
#define EFIRD_MM_EFI_BOOT_CODE 3
#define EFIRD_MM_EFI_BOOT_DATA 4
#define EFIRD_MM_EFI_RUNTIME_CODE 5
#define EFIRD_MM_EFI_RUNTIME_DATA 6
#define EFIRD_MM_EFI_CONVENTIONAL 7
#define EFIRD_MM_EFI_UNUSABLE 8
#define EFIRD_MM_EFI_ACPI_RECLAIM 9
#define EFIRD_MM_EFI_ACPI_NVS 10
#define EFIRD_MM_EFI_MMIO 11
#define EFIRD_MM_EFI_MMIO_PORT 12
#define EFIRD_MM_EFI_PAL_CODE 13
#define EFIRD_MM_EFI_PERSISTENT 14
#define EFIRD_MM_EFI_UNACCEPTED 15
#define EFIRD_MM_EFI_OEM_MIN 0x70000000u
#define EFIRD_MM_EFI_OS_MIN 0x80000000u

/* ---- EFI_MEMORY_DESCRIPTOR.Attribute --------------------------------------------------- */
#define EFIRD_MM_ATTR_UC 0x1ull
#define EFIRD_MM_ATTR_WC 0x2ull
#define EFIRD_MM_ATTR_WT 0x4ull
#define EFIRD_MM_ATTR_WB 0x8ull
#define EFIRD_MM_ATTR_NV 0x8000ull
#define EFIRD_MM_ATTR_RUNTIME 0x8000000000000000ull

/* ---- EFI_ALLOCATE_TYPE, ConvertPointer's DebugDisposition ------------------------------ */
#define EFIRD_MM_ALLOCATE_ANY_PAGES 0
#define EFIRD_MM_ALLOCATE_MAX_ADDRESS 1
#define EFIRD_MM_ALLOCATE_ADDRESS 2
#define EFIRD_MM_OPTIONAL_PTR 0x1ull

/* ---- E820 / hvm_memmap types written by the conversions ------------------------------- */
#define EFIRD_MM_E820_RAM 1
#define EFIRD_MM_E820_RESERVED 2
#define EFIRD_MM_E820_ACPI 3
#define EFIRD_MM_E820_NVS 4
#define EFIRD_MM_E820_UNUSABLE 5
#define EFIRD_MM_E820_PMEM 7

/* efird_mm_desc.flags bits (efird's bookkeeping in the descriptor's padding) */
#define EFIRD_MM_FLAG_ALLOCATED 0x1u
#define EFIRD_MM_FLAG_MATCHED 0x2u /* transient, inside SetVirtualAddressMap only */

/* One input region; laid out like struct hvm_memmap_table_entry, so a PVH start_info
 * memory map can be passed as it is. `reserved` is ignored. */
typedef struct {
    uint64_t addr;
    uint64_t size;
    uint32_t kind;
    uint32_t reserved;
} efird_mm_region;

/* EFI_MEMORY_DESCRIPTOR with its padding named (see "Allocation tracking"). */
typedef struct {
    uint32_t type;
    uint32_t flags;
    uint64_t phys_start;
    uint64_t virt_start;
    uint64_t num_pages;
    uint64_t attribute;
} efird_mm_desc;

/* Linux's struct boot_e820_entry and QEMU's etc/e820 entry: packed, 20 bytes. */
#pragma pack(push, 1)
typedef struct {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
} efird_mm_e820_entry;
#pragma pack(pop)

/* struct hvm_memmap_table_entry (PVH start_info memory map): 24 bytes. */
typedef struct {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
} efird_mm_hvm_entry;

/* The map. It lives in the caller's array base[0..capacity) as descs[0..count), with
 * free slots on either side: an insertion or removal then shifts whichever part of the
 * array is shorter (half the copying, on average, of always shifting the tail). */
typedef struct {
    efird_mm_desc *base;
    efird_mm_desc *descs;
    uint64_t count;
    uint64_t capacity;
    uint64_t map_key;      /* bumped by every change; GetMemoryMap reports it */
    uint32_t virtual_mode; /* 1 once SetVirtualAddressMap has succeeded */
    uint32_t reserved;
} efird_mm_map;

/* An empty map over the caller's array descs[0..capacity). */
uint64_t efird_mm_init(efird_mm_map *map, efird_mm_desc *descs, uint64_t capacity);

/* Replace the map with one built from the toolstack's regions: validate, trim RAM to
 * pages, sort, reject overlaps, convert to EFI types, merge. Needs capacity >= count
 * (the array doubles as the sort space). Leaves virtual mode off and bumps the map key.
 * INVALID_PARAMETER: unknown kind, size 0, misaligned non-RAM region, end past 2^52,
 * overlap (after RAM trimming). OUT_OF_RESOURCES: count > capacity. On error the map is
 * empty. */
uint64_t efird_mm_build(efird_mm_map *map, const efird_mm_region *regions, uint64_t count);

/* AllocatePages. type: 0 any (top-down from the highest free memory), 1 max address
 * (*memory is the highest byte the allocation may use), 2 at exactly *memory.
 * memory_type: 0..14 except conventional (7) and persistent (14), or 0x70000000 and up.
 * INVALID_PARAMETER: bad type/memory_type, pages 0, memory NULL, *memory misaligned for
 * AllocateAddress. OUT_OF_RESOURCES: nothing fits (any/max), or the descriptor array is
 * full. NOT_FOUND: AllocateAddress range not entirely free. UNSUPPORTED: after
 * SetVirtualAddressMap (boot services are gone). *memory is written only on success. */
uint64_t efird_mm_allocate_pages(efird_mm_map *map, uint32_t type, uint32_t memory_type,
                                 uint64_t pages, uint64_t *memory);

/* FreePages: back to EfiConventionalMemory, merged with free neighbours. The range may
 * span several allocations, but every page of it must have come from AllocatePages.
 * INVALID_PARAMETER: pages 0 or memory misaligned. NOT_FOUND: a page in the range was
 * never allocated. OUT_OF_RESOURCES: splitting needs more descriptors than the array
 * has. UNSUPPORTED: after SetVirtualAddressMap. */
uint64_t efird_mm_free_pages(efird_mm_map *map, uint64_t memory, uint64_t pages);

/* GetMemoryMap into buffer[0..*map_size). *descriptor_size in: wanted (0 = 48; else a
 * multiple of 8 from 40 to 4096), out: used. On SUCCESS and BUFFER_TOO_SMALL,
 * *map_size, *map_key, *descriptor_size and *descriptor_version (1) are all written;
 * *map_size is then the bytes written or needed. Descriptors are padded with zeros.
 * INVALID_PARAMETER: an out pointer is NULL, bad descriptor size, or buffer NULL while
 * *map_size is big enough. Nothing is written to buffer unless the status is SUCCESS. */
uint64_t efird_mm_get_memory_map(const efird_mm_map *map, uint8_t *buffer,
                                 uint64_t *map_size, uint64_t *map_key,
                                 uint64_t *descriptor_size, uint32_t *descriptor_version);

/* The E820 / hvm_memmap table Linux's EFI stub (setup_e820) would derive from this map.
 * *count in: entries available in out; out: entries written, or needed with
 * BUFFER_TOO_SMALL (then nothing is written). */
uint64_t efird_mm_to_e820(const efird_mm_map *map, efird_mm_e820_entry *out, uint64_t *count);
uint64_t efird_mm_to_hvm_memmap(const efird_mm_map *map, efird_mm_hvm_entry *out,
                                uint64_t *count);

/* SetVirtualAddressMap over the guest's virtual map (map_size bytes of descriptors of
 * descriptor_size bytes). Runtime regions (RUNTIME attribute) of this map must each be
 * given exactly once, with the same start and page count, the RUNTIME attribute and a
 * page-aligned virtual start; other descriptors (Linux passes its boot-services regions
 * and ranges it reserved itself) must lie inside one descriptor of the map and are
 * otherwise ignored. All or nothing.
 * UNSUPPORTED: already called once successfully. INVALID_PARAMETER: version != 1, bad
 * descriptor size, map_size not a multiple of it, a descriptor with 0 pages or
 * misaligned, a runtime region given partially, twice, without RUNTIME, or with a
 * misaligned / overflowing virtual range. NOT_FOUND: a descriptor outside the map.
 * NO_MAPPING: a runtime region missing.
 * The map key does not change (it only matters before ExitBootServices). UEFI's other
 * UNSUPPORTED case, a call before ExitBootServices, is the boot-phase state's to check:
 * that lives with ExitBootServices in the service layer, not in the map. */
uint64_t efird_mm_set_virtual_address_map(efird_mm_map *map, const uint8_t *virtual_map,
                                          uint64_t map_size, uint64_t descriptor_size,
                                          uint32_t descriptor_version);

/* ConvertPointer: a physical address inside a runtime region becomes its virtual one.
 * INVALID_PARAMETER: address NULL, or *address 0 without EFIRD_MM_OPTIONAL_PTR (with it:
 * SUCCESS, unchanged). UNSUPPORTED: the virtual map is not set yet. NOT_FOUND: not in a
 * runtime region. */
uint64_t efird_mm_convert_pointer(const efird_mm_map *map, uint64_t debug_disposition,
                                  uint64_t *address);

#endif
