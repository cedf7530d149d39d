/* EFI memory-map engine; the rules are in memmap.h, the Python model of them in
 * efird/core/memmap_ref.py. */
#include <stddef.h>
#include <string.h>

#include "efird.h"
#include "memmap.h"

#define PAGE_SHIFT 12
#define PAGE_MASK 0xfffull
#define LIMIT EFIRD_MM_PHYS_LIMIT
#define MAX_PAGES (LIMIT >> PAGE_SHIFT)
#define NONE UINT64_MAX
#define RAM_ATTRS (EFIRD_MM_ATTR_UC | EFIRD_MM_ATTR_WC | EFIRD_MM_ATTR_WT | EFIRD_MM_ATTR_WB)

/* efird_mm_desc is EFI_MEMORY_DESCRIPTOR with the padding named: same bytes. */
#define SAME_OFFSET(ours, theirs) \
    (offsetof(efird_mm_desc, ours) == offsetof(EFI_MEMORY_DESCRIPTOR, theirs))
_Static_assert(sizeof(efird_mm_desc) == sizeof(EFI_MEMORY_DESCRIPTOR), "descriptor size");
_Static_assert(SAME_OFFSET(phys_start, PhysicalStart), "PhysicalStart");
_Static_assert(SAME_OFFSET(virt_start, VirtualStart), "VirtualStart");
_Static_assert(SAME_OFFSET(num_pages, NumberOfPages), "NumberOfPages");
_Static_assert(SAME_OFFSET(attribute, Attribute), "Attribute");
_Static_assert(sizeof(efird_mm_region) == 24, "hvm_memmap_table_entry layout");
_Static_assert(sizeof(efird_mm_e820_entry) == 20, "boot_e820_entry layout");
_Static_assert(sizeof(efird_mm_hvm_entry) == 24, "hvm_memmap_table_entry layout");

/* ---- Little helpers ------------------------------------------------------------------- */

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t desc_end(const efird_mm_desc *d)
{
    return d->phys_start + (d->num_pages << PAGE_SHIFT);
}

/* The map struct is the caller's too: check that descs[0..count) lies in the array. */
static int map_ok(const efird_mm_map *map)
{
    if (map == NULL || (map->base == NULL && map->capacity != 0))
        return 0;
    uintptr_t base = (uintptr_t)map->base, descs = (uintptr_t)map->descs;
    if (descs < base || (descs - base) % sizeof(efird_mm_desc) != 0)
        return 0;
    uint64_t head = (descs - base) / sizeof(efird_mm_desc);
    return head <= map->capacity && map->count <= map->capacity - head;
}

static void move_descs(efird_mm_desc *to, const efird_mm_desc *from, uint64_t n)
{
    memmove(to, from, (size_t)n * sizeof(*to));
}

/* Can b be folded into a (b starts where a ends and says the same thing)? */
static int mergeable(const efird_mm_desc *a, const efird_mm_desc *b)
{
    return desc_end(a) == b->phys_start && a->type == b->type && a->flags == b->flags &&
           a->attribute == b->attribute;
}

/* Index of the descriptor holding addr, or NONE. */
static uint64_t find(const efird_mm_map *map, uint64_t addr)
{
    uint64_t lo = 0, hi = map->count; /* first descriptor starting above addr */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (map->descs[mid].phys_start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || addr >= desc_end(&map->descs[lo - 1]))
        return NONE;
    return lo - 1;
}

/* Number of descriptors starting below addr. */
static uint64_t count_below(const efird_mm_map *map, uint64_t addr)
{
    uint64_t lo = 0, hi = map->count;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (map->descs[mid].phys_start < addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int is_runtime_type(uint32_t t)
{
    /* EDK2 gives these types the RUNTIME attribute (mMemoryTypeStatistics[].Runtime). */
    return t == EFIRD_MM_EFI_RUNTIME_CODE || t == EFIRD_MM_EFI_RUNTIME_DATA ||
           t == EFIRD_MM_EFI_PAL_CODE;
}

static int allocatable(uint32_t t)
{
    if (t >= EFIRD_MM_EFI_OEM_MIN)
        return 1; /* OEM and OS-loader ranges */
    return t < EFIRD_MM_EFI_PERSISTENT && t != EFIRD_MM_EFI_CONVENTIONAL;
}

/* ---- Build ---------------------------------------------------------------------------- */

static int kind_to_efi(uint32_t kind, uint32_t *type, uint64_t *attr)
{
    switch (kind) {
    case EFIRD_MM_KIND_RAM: *type = EFIRD_MM_EFI_CONVENTIONAL; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_RESERVED: *type = EFIRD_MM_EFI_RESERVED; *attr = 0; return 1;
    case EFIRD_MM_KIND_ACPI: *type = EFIRD_MM_EFI_ACPI_RECLAIM; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_NVS: *type = EFIRD_MM_EFI_ACPI_NVS; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_UNUSABLE: *type = EFIRD_MM_EFI_UNUSABLE; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_DISABLED: *type = EFIRD_MM_EFI_RESERVED; *attr = 0; return 1;
    case EFIRD_MM_KIND_PERSISTENT:
        *type = EFIRD_MM_EFI_PERSISTENT;
        *attr = RAM_ATTRS | EFIRD_MM_ATTR_NV;
        return 1;
    case EFIRD_MM_KIND_MMIO:
        *type = EFIRD_MM_EFI_MMIO;
        *attr = EFIRD_MM_ATTR_UC | EFIRD_MM_ATTR_RUNTIME;
        return 1;
    case EFIRD_MM_KIND_RUNTIME_CODE:
        *type = EFIRD_MM_EFI_RUNTIME_CODE;
        *attr = RAM_ATTRS | EFIRD_MM_ATTR_RUNTIME;
        return 1;
    case EFIRD_MM_KIND_RUNTIME_DATA:
        *type = EFIRD_MM_EFI_RUNTIME_DATA;
        *attr = RAM_ATTRS | EFIRD_MM_ATTR_RUNTIME;
        return 1;
    case EFIRD_MM_KIND_BOOT_DATA: *type = EFIRD_MM_EFI_BOOT_DATA; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_BOOT_CODE: *type = EFIRD_MM_EFI_BOOT_CODE; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_LOADER_CODE: *type = EFIRD_MM_EFI_LOADER_CODE; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_LOADER_DATA: *type = EFIRD_MM_EFI_LOADER_DATA; *attr = RAM_ATTRS; return 1;
    case EFIRD_MM_KIND_MMIO_PORT:
        *type = EFIRD_MM_EFI_MMIO_PORT;
        *attr = EFIRD_MM_ATTR_UC | EFIRD_MM_ATTR_RUNTIME;
        return 1;
    default: return 0;
    }
}

/* Sorting by phys_start, in place: introsort (quicksort with median-of-three pivots,
 * insertion sort for short runs, heapsort once recursion gets deeper than 2 log2 n), so
 * O(n log n) for any input, no scratch memory - libc's qsort may malloc - and a key
 * comparison the compiler can inline. */
static void swap_desc(efird_mm_desc *a, efird_mm_desc *b)
{
    efird_mm_desc t = *a;
    *a = *b;
    *b = t;
}

static void insertion_sort(efird_mm_desc *d, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        efird_mm_desc t = d[i];
        size_t j = i;
        for (; j > 0 && d[j - 1].phys_start > t.phys_start; j--)
            d[j] = d[j - 1];
        d[j] = t;
    }
}

static void sift_down(efird_mm_desc *d, size_t root, size_t n)
{
    for (size_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && d[child + 1].phys_start > d[child].phys_start)
            child++;
        if (d[root].phys_start >= d[child].phys_start)
            return;
        swap_desc(&d[root], &d[child]);
    }
}

static void heap_sort(efird_mm_desc *d, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(d, i, n);
    for (size_t end = n; end-- > 1;) {
        swap_desc(&d[0], &d[end]);
        sift_down(d, 0, end);
    }
}

static void intro_sort(efird_mm_desc *d, size_t n, unsigned depth)
{
    while (n > 16) {
        if (depth-- == 0) {
            heap_sort(d, n);
            return;
        }
        size_t mid = n / 2;
        if (d[mid].phys_start < d[0].phys_start)
            swap_desc(&d[mid], &d[0]);
        if (d[n - 1].phys_start < d[0].phys_start)
            swap_desc(&d[n - 1], &d[0]);
        if (d[n - 1].phys_start < d[mid].phys_start)
            swap_desc(&d[n - 1], &d[mid]);
        uint64_t pivot = d[mid].phys_start;
        /* Hoare partition: d[0..j] <= pivot <= d[j+1..n), both sides non-empty. */
        size_t i = 0, j = n - 1;
        for (;;) {
            while (d[i].phys_start < pivot)
                i++;
            while (d[j].phys_start > pivot)
                j--;
            if (i >= j)
                break;
            swap_desc(&d[i], &d[j]);
            i++;
            j--;
        }
        size_t left = j + 1;
        if (left < n - left) { /* recurse into the smaller side, loop on the larger */
            intro_sort(d, left, depth);
            d += left;
            n -= left;
        } else {
            intro_sort(d + left, n - left, depth);
            n = left;
        }
    }
    insertion_sort(d, n);
}

static void sort_by_start(efird_mm_desc *d, size_t n)
{
    unsigned depth = 0;
    for (size_t k = n; k > 1; k >>= 1)
        depth += 2;
    intro_sort(d, n, depth);
}

uint64_t efird_mm_init(efird_mm_map *map, efird_mm_desc *descs, uint64_t capacity)
{
    if (map == NULL || (descs == NULL && capacity != 0))
        return EFIRD_MM_INVALID_PARAMETER;
    memset(map, 0, sizeof(*map));
    map->base = map->descs = descs;
    map->capacity = capacity;
    return EFIRD_MM_SUCCESS;
}

uint64_t efird_mm_build(efird_mm_map *map, const efird_mm_region *regions, uint64_t count)
{
    if (!map_ok(map) || (regions == NULL && count != 0))
        return EFIRD_MM_INVALID_PARAMETER;
    map->descs = map->base;
    map->count = 0;
    map->virtual_mode = 0;
    map->map_key++;
    if (count > map->capacity)
        return EFIRD_MM_OUT_OF_RESOURCES;

    efird_mm_desc *d = map->base;
    uint64_t n = 0;
    int sorted = 1;
    for (uint64_t i = 0; i < count; i++) {
        const efird_mm_region *r = &regions[i];
        uint32_t type;
        uint64_t attr;
        if (!kind_to_efi(r->kind, &type, &attr) || r->size == 0 || r->addr >= LIMIT ||
            r->size > LIMIT - r->addr)
            return EFIRD_MM_INVALID_PARAMETER;
        uint64_t start = r->addr, end = r->addr + r->size;
        if (r->kind == EFIRD_MM_KIND_RAM) {
            start = (start + PAGE_MASK) & ~PAGE_MASK;
            end &= ~PAGE_MASK;
            if (start >= end)
                continue;
        } else if ((start | end) & PAGE_MASK) {
            return EFIRD_MM_INVALID_PARAMETER;
        }
        if (n > 0 && start < d[n - 1].phys_start)
            sorted = 0;
        d[n].type = type;
        d[n].flags = 0;
        d[n].phys_start = start;
        d[n].virt_start = 0;
        d[n].num_pages = (end - start) >> PAGE_SHIFT;
        d[n].attribute = attr;
        n++;
    }
    if (!sorted) /* toolstacks usually hand over sorted tables: skip the sort then */
        sort_by_start(d, (size_t)n);

    uint64_t out = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (out > 0) {
            efird_mm_desc *prev = &d[out - 1];
            if (d[i].phys_start < desc_end(prev))
                return EFIRD_MM_INVALID_PARAMETER; /* overlap; the map stays empty */
            if (mergeable(prev, &d[i])) {
                prev->num_pages += d[i].num_pages;
                continue;
            }
        }
        d[out++] = d[i];
    }
    /* Centre the map in the array, so that changes at either end find room. */
    uint64_t head = (map->capacity - out) / 2;
    move_descs(d + head, d, out);
    map->descs = d + head;
    map->count = out;
    return EFIRD_MM_SUCCESS;
}

/* ---- Changing the map ---------------------------------------------------------------- */

/* Turn the window descs[lo..hi) into m slots (their contents left to the caller) by
 * shifting the shorter side of the map when the array has room there, else the other
 * side, else (the room is split between both ends) after gathering it at the end. The
 * caller has checked that the new count fits. */
static void resize_window(efird_mm_map *map, uint64_t lo, uint64_t hi, uint64_t m)
{
    efird_mm_desc *d = map->descs;
    uint64_t before = lo, after = map->count - hi;
    uint64_t head = (uint64_t)(d - map->base), tail = map->capacity - head - map->count;
    if (m > hi - lo) {
        uint64_t grow = m - (hi - lo);
        int left = head >= grow && (before <= after || tail < grow);
        if (!left && tail < grow) {
            move_descs(map->base, d, map->count);
            map->descs = d = map->base;
        }
        if (left) {
            move_descs(d - grow, d, before);
            map->descs = d - grow;
        } else {
            move_descs(d + hi + grow, d + hi, after);
        }
    } else if (m < hi - lo) {
        uint64_t shrink = (hi - lo) - m;
        if (before <= after) {
            move_descs(d + shrink, d, before);
            map->descs = d + shrink;
        } else {
            move_descs(d + lo + m, d + hi, after);
        }
    }
}

/* Rewrite [mid->phys_start, end of mid), which lies inside descriptors first..last
 * (contiguous), as `mid`: keep the parts of first and last outside it, merge with the
 * neighbours, then make room or close the gap (resize_window). At most 5 descriptors
 * result (left neighbour, head, mid, tail, right neighbour), so the check against
 * capacity is exact and done before anything moves. */
static uint64_t replace_range(efird_mm_map *map, uint64_t first, uint64_t last,
                              const efird_mm_desc *mid)
{
    efird_mm_desc *d = map->descs;
    efird_mm_desc piece[5];
    int n = 0;
    uint64_t lo = first, hi = last + 1; /* the window of d being replaced */

    if (first > 0)
        piece[n++] = d[--lo];
    if (d[first].phys_start < mid->phys_start) {
        piece[n] = d[first];
        piece[n].num_pages = (mid->phys_start - d[first].phys_start) >> PAGE_SHIFT;
        n++;
    }
    piece[n++] = *mid;
    uint64_t mid_end = desc_end(mid), last_end = desc_end(&d[last]);
    if (mid_end < last_end) {
        piece[n] = d[last];
        piece[n].phys_start = mid_end;
        piece[n].num_pages = (last_end - mid_end) >> PAGE_SHIFT;
        n++;
    }
    if (hi < map->count)
        piece[n++] = d[hi++];

    int m = 0;
    for (int k = 0; k < n; k++) {
        if (m > 0 && mergeable(&piece[m - 1], &piece[k]))
            piece[m - 1].num_pages += piece[k].num_pages;
        else
            piece[m++] = piece[k];
    }

    uint64_t new_count = map->count - (hi - lo) + (uint64_t)m;
    if (new_count > map->capacity)
        return EFIRD_MM_OUT_OF_RESOURCES;
    resize_window(map, lo, hi, (uint64_t)m);
    memcpy(&map->descs[lo], piece, (size_t)m * sizeof(*piece));
    map->count = new_count;
    map->map_key++;
    return EFIRD_MM_SUCCESS;
}

/* Top-down search for `pages` free pages ending at or below `top`; NONE if none. */
static uint64_t find_free(const efird_mm_map *map, uint64_t top, uint64_t pages,
                          uint64_t *start)
{
    uint64_t size = pages << PAGE_SHIFT;
    for (uint64_t i = count_below(map, top); i-- > 0;) {
        const efird_mm_desc *d = &map->descs[i];
        if (d->type != EFIRD_MM_EFI_CONVENTIONAL)
            continue;
        uint64_t end = desc_end(d) < top ? desc_end(d) : top;
        if (end - d->phys_start >= size) {
            *start = end - size;
            return i;
        }
    }
    return NONE;
}

uint64_t efird_mm_allocate_pages(efird_mm_map *map, uint32_t type, uint32_t memory_type,
                                 uint64_t pages, uint64_t *memory)
{
    if (!map_ok(map) || memory == NULL)
        return EFIRD_MM_INVALID_PARAMETER;
    if (map->virtual_mode)
        return EFIRD_MM_UNSUPPORTED;
    if (type > EFIRD_MM_ALLOCATE_ADDRESS || !allocatable(memory_type) || pages == 0)
        return EFIRD_MM_INVALID_PARAMETER;

    uint64_t start, i;
    if (type == EFIRD_MM_ALLOCATE_ADDRESS) {
        start = *memory;
        if (start & PAGE_MASK)
            return EFIRD_MM_INVALID_PARAMETER;
        if (start >= LIMIT || pages > (LIMIT - start) >> PAGE_SHIFT)
            return EFIRD_MM_NOT_FOUND;
        i = find(map, start);
        if (i == NONE || map->descs[i].type != EFIRD_MM_EFI_CONVENTIONAL ||
            desc_end(&map->descs[i]) < start + (pages << PAGE_SHIFT))
            return EFIRD_MM_NOT_FOUND;
    } else {
        uint64_t top = LIMIT;
        /* *memory is the highest byte usable: allocations end at or below the start of
         * the page holding it, unless it is a page's last byte (EDK2's reading). */
        if (type == EFIRD_MM_ALLOCATE_MAX_ADDRESS && *memory < LIMIT - 1)
            top = (*memory + 1) & ~PAGE_MASK;
        if (pages > MAX_PAGES)
            return EFIRD_MM_OUT_OF_RESOURCES;
        i = find_free(map, top, pages, &start);
        if (i == NONE)
            return EFIRD_MM_OUT_OF_RESOURCES;
    }

    efird_mm_desc mid = map->descs[i];
    mid.type = memory_type;
    mid.flags = EFIRD_MM_FLAG_ALLOCATED;
    mid.phys_start = start;
    mid.num_pages = pages;
    if (is_runtime_type(memory_type))
        mid.attribute |= EFIRD_MM_ATTR_RUNTIME;
    uint64_t status = replace_range(map, i, i, &mid);
    if (status == EFIRD_MM_SUCCESS)
        *memory = start;
    return status;
}

uint64_t efird_mm_free_pages(efird_mm_map *map, uint64_t memory, uint64_t pages)
{
    if (!map_ok(map))
        return EFIRD_MM_INVALID_PARAMETER;
    if (map->virtual_mode)
        return EFIRD_MM_UNSUPPORTED;
    if (pages == 0 || (memory & PAGE_MASK))
        return EFIRD_MM_INVALID_PARAMETER;
    if (memory >= LIMIT || pages > (LIMIT - memory) >> PAGE_SHIFT)
        return EFIRD_MM_NOT_FOUND;

    uint64_t end = memory + (pages << PAGE_SHIFT);
    uint64_t first = find(map, memory), last = first;
    if (first == NONE)
        return EFIRD_MM_NOT_FOUND;
    for (;;) {
        const efird_mm_desc *d = &map->descs[last];
        if (!(d->flags & EFIRD_MM_FLAG_ALLOCATED))
            return EFIRD_MM_NOT_FOUND;
        if (desc_end(d) >= end)
            break;
        if (last + 1 == map->count || map->descs[last + 1].phys_start != desc_end(d))
            return EFIRD_MM_NOT_FOUND; /* a hole in the range */
        last++;
    }

    efird_mm_desc mid = {
        .type = EFIRD_MM_EFI_CONVENTIONAL,
        .flags = 0,
        .phys_start = memory,
        .virt_start = 0,
        .num_pages = pages,
        .attribute = RAM_ATTRS, /* what free memory always carries */
    };
    return replace_range(map, first, last, &mid);
}

/* ---- GetMemoryMap --------------------------------------------------------------------- */

static int descriptor_size_ok(uint64_t size)
{
    return size >= sizeof(EFI_MEMORY_DESCRIPTOR) && size <= EFIRD_MM_MAX_DESC_SIZE &&
           size % 8 == 0;
}

uint64_t efird_mm_get_memory_map(const efird_mm_map *map, uint8_t *buffer,
                                 uint64_t *map_size, uint64_t *map_key,
                                 uint64_t *descriptor_size, uint32_t *descriptor_version)
{
    if (!map_ok(map) || map_size == NULL || map_key == NULL || descriptor_size == NULL ||
        descriptor_version == NULL)
        return EFIRD_MM_INVALID_PARAMETER;
    uint64_t size = *descriptor_size ? *descriptor_size : EFIRD_MM_DEFAULT_DESC_SIZE;
    if (!descriptor_size_ok(size))
        return EFIRD_MM_INVALID_PARAMETER;
    uint64_t need = map->count * size;
    int fits = *map_size >= need;
    if (fits && buffer == NULL && need != 0)
        return EFIRD_MM_INVALID_PARAMETER;

    *descriptor_size = size;
    *descriptor_version = EFIRD_MM_DESC_VERSION;
    *map_key = map->map_key;
    *map_size = need;
    if (!fits)
        return EFIRD_MM_BUFFER_TOO_SMALL;

    for (uint64_t i = 0; i < map->count; i++) {
        const efird_mm_desc *d = &map->descs[i];
        uint8_t *p = buffer + i * size;
        put_le32(p, d->type);
        put_le32(p + 4, 0);
        put_le64(p + 8, d->phys_start);
        put_le64(p + 16, d->virt_start);
        put_le64(p + 24, d->num_pages);
        put_le64(p + 32, d->attribute);
        memset(p + 40, 0, (size_t)(size - 40));
    }
    return EFIRD_MM_SUCCESS;
}

/* ---- E820 / hvm_memmap ------------------------------------------------------------------ */

/* Linux's setup_e820 (drivers/firmware/efi/libstub/x86-stub.c); 0 = no entry (its
 * `default: continue`, which drops OEM/OS-loader types, and unaccepted memory when the
 * kernel lacks support). efird never sets EFI_MEMORY_SP, so soft-reserved never arises. */
static uint32_t e820_type(uint32_t efi_type)
{
    switch (efi_type) {
    case EFIRD_MM_EFI_RESERVED:
    case EFIRD_MM_EFI_RUNTIME_CODE:
    case EFIRD_MM_EFI_RUNTIME_DATA:
    case EFIRD_MM_EFI_MMIO:
    case EFIRD_MM_EFI_MMIO_PORT:
    case EFIRD_MM_EFI_PAL_CODE: return EFIRD_MM_E820_RESERVED;
    case EFIRD_MM_EFI_UNUSABLE: return EFIRD_MM_E820_UNUSABLE;
    case EFIRD_MM_EFI_ACPI_RECLAIM: return EFIRD_MM_E820_ACPI;
    case EFIRD_MM_EFI_LOADER_CODE:
    case EFIRD_MM_EFI_LOADER_DATA:
    case EFIRD_MM_EFI_BOOT_CODE:
    case EFIRD_MM_EFI_BOOT_DATA:
    case EFIRD_MM_EFI_CONVENTIONAL: return EFIRD_MM_E820_RAM;
    case EFIRD_MM_EFI_ACPI_NVS: return EFIRD_MM_E820_NVS;
    case EFIRD_MM_EFI_PERSISTENT: return EFIRD_MM_E820_PMEM;
    default: return 0;
    }
}

static void emit(uint8_t *p, size_t stride, uint64_t addr, uint64_t size, uint32_t type)
{
    put_le64(p, addr);
    put_le64(p + 8, size);
    put_le32(p + 16, type);
    if (stride > 20)
        put_le32(p + 20, 0); /* hvm_memmap_table_entry.reserved */
}

/* Walk the map as setup_e820 does (merging an entry into the previous one when the type
 * matches and it starts where that one ends). Writes entries of `stride` bytes into out
 * when out is not NULL; returns the number of entries. */
static uint64_t e820_walk(const efird_mm_map *map, uint8_t *out, size_t stride)
{
    uint64_t n = 0, addr = 0, size = 0;
    uint32_t type = 0;
    for (uint64_t i = 0; i < map->count; i++) {
        const efird_mm_desc *d = &map->descs[i];
        uint32_t t = e820_type(d->type);
        if (t == 0)
            continue;
        if (n > 0 && t == type && addr + size == d->phys_start) {
            size += d->num_pages << PAGE_SHIFT;
            continue;
        }
        if (n > 0 && out != NULL)
            emit(out + (n - 1) * stride, stride, addr, size, type);
        addr = d->phys_start;
        size = d->num_pages << PAGE_SHIFT;
        type = t;
        n++;
    }
    if (n > 0 && out != NULL)
        emit(out + (n - 1) * stride, stride, addr, size, type);
    return n;
}

static uint64_t to_table(const efird_mm_map *map, uint8_t *out, uint64_t *count, size_t stride)
{
    if (!map_ok(map) || count == NULL || (out == NULL && *count != 0))
        return EFIRD_MM_INVALID_PARAMETER;
    uint64_t need = e820_walk(map, NULL, stride);
    if (need > *count) {
        *count = need;
        return EFIRD_MM_BUFFER_TOO_SMALL;
    }
    e820_walk(map, out, stride);
    *count = need;
    return EFIRD_MM_SUCCESS;
}

uint64_t efird_mm_to_e820(const efird_mm_map *map, efird_mm_e820_entry *out, uint64_t *count)
{
    return to_table(map, (uint8_t *)out, count, sizeof(efird_mm_e820_entry));
}

uint64_t efird_mm_to_hvm_memmap(const efird_mm_map *map, efird_mm_hvm_entry *out,
                                uint64_t *count)
{
    return to_table(map, (uint8_t *)out, count, sizeof(efird_mm_hvm_entry));
}

/* ---- Runtime: SetVirtualAddressMap, ConvertPointer ------------------------------------ */

/* Check one descriptor of the guest's virtual map; for a runtime region, note its
 * virtual start and mark it matched. */
static uint64_t map_one(efird_mm_map *map, const uint8_t *p)
{
    uint64_t phys = get_le64(p + 8), virt = get_le64(p + 16);
    uint64_t pages = get_le64(p + 24), attr = get_le64(p + 32);
    if (pages == 0 || (phys & PAGE_MASK))
        return EFIRD_MM_INVALID_PARAMETER;
    if (phys >= LIMIT || pages > (LIMIT - phys) >> PAGE_SHIFT)
        return EFIRD_MM_NOT_FOUND;
    uint64_t i = find(map, phys);
    if (i == NONE || desc_end(&map->descs[i]) < phys + (pages << PAGE_SHIFT))
        return EFIRD_MM_NOT_FOUND;
    efird_mm_desc *d = &map->descs[i];
    if (!(d->attribute & EFIRD_MM_ATTR_RUNTIME))
        return EFIRD_MM_SUCCESS; /* e.g. Linux's boot-services mappings: nothing to do */
    if (d->phys_start != phys || d->num_pages != pages || !(attr & EFIRD_MM_ATTR_RUNTIME) ||
        (d->flags & EFIRD_MM_FLAG_MATCHED))
        return EFIRD_MM_INVALID_PARAMETER;
    if ((virt & PAGE_MASK) || pages - 1 > (UINT64_MAX - virt) >> PAGE_SHIFT)
        return EFIRD_MM_INVALID_PARAMETER; /* misaligned, or runs past 2^64 */
    d->virt_start = virt;
    d->flags |= EFIRD_MM_FLAG_MATCHED;
    return EFIRD_MM_SUCCESS;
}

uint64_t efird_mm_set_virtual_address_map(efird_mm_map *map, const uint8_t *virtual_map,
                                          uint64_t map_size, uint64_t descriptor_size,
                                          uint32_t descriptor_version)
{
    if (!map_ok(map))
        return EFIRD_MM_INVALID_PARAMETER;
    if (map->virtual_mode)
        return EFIRD_MM_UNSUPPORTED;
    if (descriptor_version != EFIRD_MM_DESC_VERSION || !descriptor_size_ok(descriptor_size) ||
        map_size % descriptor_size != 0 || (virtual_map == NULL && map_size != 0))
        return EFIRD_MM_INVALID_PARAMETER;

    uint64_t status = EFIRD_MM_SUCCESS;
    for (uint64_t off = 0; off < map_size && status == EFIRD_MM_SUCCESS; off += descriptor_size)
        status = map_one(map, virtual_map + off);

    for (uint64_t i = 0; i < map->count; i++) {
        efird_mm_desc *d = &map->descs[i];
        if (status == EFIRD_MM_SUCCESS && (d->attribute & EFIRD_MM_ATTR_RUNTIME) &&
            !(d->flags & EFIRD_MM_FLAG_MATCHED))
            status = EFIRD_MM_NO_MAPPING;
    }
    /* Undo on failure (virtual starts are all 0 until the one successful call). */
    for (uint64_t i = 0; i < map->count; i++) {
        efird_mm_desc *d = &map->descs[i];
        if (status != EFIRD_MM_SUCCESS && (d->flags & EFIRD_MM_FLAG_MATCHED))
            d->virt_start = 0;
        d->flags &= ~EFIRD_MM_FLAG_MATCHED;
    }
    if (status == EFIRD_MM_SUCCESS)
        map->virtual_mode = 1;
    return status;
}

uint64_t efird_mm_convert_pointer(const efird_mm_map *map, uint64_t debug_disposition,
                                  uint64_t *address)
{
    if (!map_ok(map) || address == NULL)
        return EFIRD_MM_INVALID_PARAMETER;
    if (!map->virtual_mode)
        return EFIRD_MM_UNSUPPORTED;
    if (*address == 0)
        return (debug_disposition & EFIRD_MM_OPTIONAL_PTR) ? EFIRD_MM_SUCCESS
                                                           : EFIRD_MM_INVALID_PARAMETER;
    uint64_t i = find(map, *address);
    if (i == NONE || !(map->descs[i].attribute & EFIRD_MM_ATTR_RUNTIME))
        return EFIRD_MM_NOT_FOUND;
    *address = map->descs[i].virt_start + (*address - map->descs[i].phys_start);
    return EFIRD_MM_SUCCESS;
}
