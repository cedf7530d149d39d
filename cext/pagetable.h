/*
 * x86-64 page tables for a guest, written into a caller buffer that stands for guest
 * memory at a guest-physical base (efird's BuildPageTables boot service).
 *
 * Every function returns an EFI_STATUS value: 0, or INVALID_PARAMETER,
 * BUFFER_TOO_SMALL, OUT_OF_RESOURCES, NOT_FOUND. Nothing is allocated and nothing is
 * written outside the buffer a caller passes, even if the buffer is shared guest memory
 * that changes underneath (entries are read once and table pointers bounds-checked).
 *
 * Mapping flags (efird_pt_range.flags, efird_pt_mapping.flags):
 *   EFIRD_PT_CODE      executable; every other mapping gets NX (bit 63)
 *   EFIRD_PT_READONLY  RW clear (and D clear: RW=0 D=1 would be a CET shadow-stack page)
 *   EFIRD_PT_GLOBAL    G set on the leaf
 *   bits 4..6          cache mode = the PAT entry index the leaf selects, encoded as
 *                      PWT (index bit 0), PCD (bit 1) and PAT (bit 2; bit 7 of a 4 KiB
 *                      PTE, bit 12 of a 2 MiB / 1 GiB leaf).
 *
 * The PAT MSR efird assumes is Xen's, EFIRD_PT_PAT_MSR = 0x0000050100070406:
 *   0 WB  1 WT  2 UC-  3 UC  4 WC  5 WP  6 UC  7 UC
 * Entries 0-3 equal the architectural reset value (0x0007040600070406), so WB, WT, UC-
 * and UC mean the same whether or not anyone has programmed the PAT; only WC (entry 4)
 * needs it programmed as above, and degrades to WB under the reset value. (Linux puts
 * WC in entry 1 instead; a kernel reprograms the PAT itself before relying on it.)
 *
 * Every present entry has A preset, writable leaves also D, so the CPU never has to
 * set them with locked writes; non-leaf entries are P|RW|A (the leaf decides); US is
 * never set.
 */
#ifndef EFIRD_PAGETABLE_H
#define EFIRD_PAGETABLE_H

#include <stdint.h>

#define EFIRD_PT_CODE 0x1u
#define EFIRD_PT_READONLY 0x2u
#define EFIRD_PT_GLOBAL 0x4u
#define EFIRD_PT_CACHE_SHIFT 4
#define EFIRD_PT_CACHE_MASK 0x70u
#define EFIRD_PT_CACHE_WB 0x00u       /* PAT entry 0 */
#define EFIRD_PT_CACHE_WT 0x10u       /* PAT entry 1: PWT */
#define EFIRD_PT_CACHE_UC_MINUS 0x20u /* PAT entry 2: PCD (what Linux maps non-WB EFI with) */
#define EFIRD_PT_CACHE_UC 0x30u       /* PAT entry 3: PCD|PWT (MMIO) */
#define EFIRD_PT_CACHE_WC 0x40u       /* PAT entry 4: PAT bit */
#define EFIRD_PT_CACHE_WP 0x50u       /* PAT entry 5: PAT|PWT */
#define EFIRD_PT_FLAGS_MASK 0x77u

#define EFIRD_PT_PAT_MSR 0x0000050100070406ull

/* Build flags (EFIRD_BUILD_PAGE_TABLES.Flags). */
#define EFIRD_PT_BUILD_NO_1G 0x1u  /* no 1 GiB leaves (CPUs without pdpe1gb, e.g. qemu64) */
#define EFIRD_PT_BUILD_4K_ONLY 0x2u /* only 4 KiB leaves (implies NO_1G) */
#define EFIRD_PT_BUILD_NO_NX 0x4u  /* never set NX (a loader that leaves EFER.NXE clear) */
#define EFIRD_PT_BUILD_MASK 0x7u

/* Linux's window for EFI runtime regions (arch/x86/include/asm/pgtable_64_types.h). */
#define EFIRD_PT_EFI_VA_START 0xFFFFFFFF00000000ull /* -4 GiB */
#define EFIRD_PT_EFI_VA_END 0xFFFFFFEF00000000ull   /* -68 GiB */

/* Identity-map [phys, phys + size). */
typedef struct {
    uint64_t phys;
    uint64_t size;
    uint32_t flags;
    uint32_t reserved;
} efird_pt_range;

/* Map [virt, virt + size) to [phys, phys + size). */
typedef struct {
    uint64_t virt;
    uint64_t phys;
    uint64_t size;
    uint32_t flags;
    uint32_t reserved;
} efird_pt_mapping;

/* What efird_pt_walk found for one virtual address. */
typedef struct {
    uint64_t phys;      /* the translated address */
    uint64_t leaf_size; /* 4 KiB, 2 MiB or 1 GiB */
    uint64_t entry;     /* the leaf entry as stored */
    uint32_t flags;     /* effective EFIRD_PT_* flags over the whole walk */
    uint32_t level;     /* of the leaf: 1 PTE, 2 PDE, 3 PDPTE */
} efird_pt_translation;

/*
 * Write page tables for `levels` (4 or 5) paging into buf[0, buf_size), which is guest
 * memory at guest-physical `base` (4 KiB aligned). Identity ranges first, then the
 * extra mappings, each as consecutive entries merged into runs while they continue one
 * another (same flags, contiguous virt and phys). Tables are carved from the start of
 * the buffer in order, the root first, each zeroed (one that a run covers whole is not
 * zeroed first: every entry gets written). Leaves are the largest that the run covers
 * and that the alignment of virt and phys allows: 1 GiB, 2 MiB, then 4 KiB; a run never
 * turns an existing table back into a leaf, so overlapping runs are mapped in order.
 *
 * Overlaps that translate the same way with the same flags are accepted; any other
 * overlap is INVALID_PARAMETER, as are: levels not 4/5, unknown flags, a base that is
 * not 4 KiB aligned, a zero or non-4 KiB size or address, a physical range beyond
 * 2^52, a virtual range that is not canonical for `levels` (identity ranges included)
 * or wraps. On success *cr3 = base (the root) and *bytes_used = bytes of tables.
 * BUFFER_TOO_SMALL sets *bytes_used to a size that is enough (exact for a single run, an
 * upper bound otherwise): call with buf_size 0 to learn it. After an error the buffer
 * contents are unspecified, but only buf[0, buf_size) was written.
 */
uint64_t efird_pt_build(void *buf, uint64_t buf_size, uint64_t base, uint32_t levels,
                        uint32_t build_flags, const efird_pt_range *ranges,
                        uint64_t range_count, const efird_pt_mapping *maps,
                        uint64_t map_count, uint64_t *cr3, uint64_t *bytes_used);

/*
 * Translate `va` through the tables at guest-physical `cr3` (low 12 bits ignored) in
 * buf (guest memory at `base`). NOT_FOUND when not mapped; INVALID_PARAMETER for a
 * non-canonical va, bad levels, a table outside the buffer or a malformed entry
 * (PS in a PML4E/PML5E, reserved address bits in a large leaf).
 */
uint64_t efird_pt_walk(const void *buf, uint64_t buf_size, uint64_t base, uint64_t cr3,
                       uint32_t levels, uint64_t va, efird_pt_translation *out);

/*
 * The virtual addresses that Linux (x86-64, native 64-bit EFI, not mixed mode, not
 * efi=old_map) gives the regions of an EFI memory map when it calls
 * SetVirtualAddressMap, written to virt[i] for descriptor i (0 = Linux leaves it
 * unmapped). Mirrors arch/x86/platform/efi: efi_merge_regions() joins a descriptor
 * with the previous one of the same type and attribute that it continues;
 * efi_map_regions() walks the map backwards (efi_map_next_entry_reverse) and maps what
 * should_map_region() picks (EFI_MEMORY_RUNTIME, or BootServicesCode/Data) with
 * efi_map_region(): top-down from EFI_VA_START, keeping the offset of the physical
 * address within its 2 MiB page. A descriptor merged into a previous one gets that
 * one's address plus its offset. The map is the one Linux holds at that point: the
 * firmware's, unless Linux split it first (efi_mem_reserve() for tables in boot services
 * memory, efi_fake_mem=). desc_size >= 40 (sizeof(EFI_MEMORY_DESCRIPTOR)),
 * map_size a multiple of it, virt_count >= the number of descriptors. Returns
 * OUT_OF_RESOURCES (virt still filled) when a region falls below EFI_VA_END, where
 * Linux warns and leaves it unmapped.
 */
uint64_t efird_pt_linux_efi_va(const void *map, uint64_t map_size, uint64_t desc_size,
                               uint64_t *virt, uint64_t virt_count);

/* memset(buf, 0, size): the floor the page-table benchmark compares against. */
void efird_pt_bench_memset(void *buf, uint64_t size);

#endif
