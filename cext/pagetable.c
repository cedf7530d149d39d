/* x86-64 4- and 5-level page tables over a caller buffer (see pagetable.h).
 * efird/core/pagetable_ref.py is the same algorithm in Python, byte for byte. */
#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define HAVE_SSE2 1
#endif

#include "efird.h"
#include "pagetable.h"

#define ST_SUCCESS 0ull
#define ST_INVALID_PARAMETER 0x8000000000000002ull
#define ST_BUFFER_TOO_SMALL 0x8000000000000005ull
#define ST_OUT_OF_RESOURCES 0x8000000000000009ull
#define ST_NOT_FOUND 0x800000000000000Eull

#define PAGE 4096ull
#define PHYS_LIMIT (1ull << 52)
#define ADDR_MASK 0x000FFFFFFFFFF000ull

#define E_P (1ull << 0)
#define E_RW (1ull << 1)
#define E_PWT (1ull << 3)
#define E_PCD (1ull << 4)
#define E_A (1ull << 5)
#define E_D (1ull << 6)
#define E_PS (1ull << 7)
#define E_PAT_4K (1ull << 7)
#define E_G (1ull << 8)
#define E_PAT_LARGE (1ull << 12)
#define E_NX (1ull << 63)
#define TABLE_BITS (E_P | E_RW | E_A)

/* Builds with more tables than this write them with streaming stores (see fill). */
#define STREAM_MIN (16ull << 20)

/* Entries go through memcpy: the buffer may be a slice at any byte offset. */
static inline uint64_t load(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void store(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, sizeof(v));
}

/*
 * n entries e, e + step, e + 2 step, ... from p on: the loop the time goes into. Two
 * entries a 16-byte store where SSE2 is there (the baseline of x86-64, not something
 * -O2 vectorises by itself). A build that writes far more than the caches hold (64 GiB
 * in 4 KiB pages is 128 MiB of tables) is bound by memory bandwidth, and a plain store
 * first reads the cache line it is about to overwrite; streaming stores skip that read,
 * as memset does for large sizes. efird_pt_build fences them before it returns.
 */
static void fill(uint8_t *p, uint64_t n, uint64_t e, uint64_t step, int stream)
{
#ifdef HAVE_SSE2
    if (n >= 4) {
        uint64_t pairs;
        __m128i v, twice;
        if (((uintptr_t)p & 15) == 8) {
            store(p, e);
            p += 8;
            e += step;
            n--;
        }
        v = _mm_set_epi64x((long long)(e + step), (long long)e);
        twice = _mm_set1_epi64x((long long)(2 * step));
        pairs = n / 2;
        e += 2 * pairs * step;
        n -= 2 * pairs;
        if (stream && !((uintptr_t)p & 15))
            for (; pairs; pairs--, p += 16, v = _mm_add_epi64(v, twice))
                _mm_stream_si128((__m128i *)(void *)p, v);
        else
            for (; pairs; pairs--, p += 16, v = _mm_add_epi64(v, twice))
                _mm_storeu_si128((__m128i *)(void *)p, v);
    }
#else
    (void)stream;
#endif
    for (; n; n--, p += 8, e += step)
        store(p, e);
}

static inline unsigned slot_shift(unsigned level)
{
    return 12 + 9 * (level - 1);
}

static int canonical(uint64_t va, uint32_t levels)
{
    uint64_t top = va >> (levels == 5 ? 56 : 47);
    return top == 0 || top == (UINT64_MAX >> (levels == 5 ? 56 : 47));
}

/* ---- building ------------------------------------------------------------------------ */

typedef struct {
    uint64_t virt, phys, size;
    uint32_t flags;
} item;

typedef struct {
    uint8_t *buf;
    uint64_t size, base, used;
    uint64_t leaf[4];  /* leaf entry bits of the current run by level (1..3) */
    int allow[4];      /* leaves allowed at level (1..3) */
    int stream;        /* fill with streaming stores: a build bigger than the caches */
} builder;

static item get_item(const efird_pt_range *r, uint64_t nr, const efird_pt_mapping *m,
                     uint64_t i)
{
    item it;
    if (i < nr) {
        it.virt = r[i].phys;
        it.phys = r[i].phys;
        it.size = r[i].size;
        it.flags = r[i].flags;
    } else {
        it.virt = m[i - nr].virt;
        it.phys = m[i - nr].phys;
        it.size = m[i - nr].size;
        it.flags = m[i - nr].flags;
    }
    return it;
}

/* The run that starts at entry i: it and the entries after it that continue it with the
 * same flags (memory maps list neighbours one by one). Returns the index after it. */
static uint64_t next_run(const efird_pt_range *r, uint64_t nr, const efird_pt_mapping *m,
                         uint64_t n, uint64_t i, item *run)
{
    *run = get_item(r, nr, m, i);
    for (i++; i < n; i++) {
        item x = get_item(r, nr, m, i);
        uint64_t last = run->virt + run->size - 1;
        if (x.flags != run->flags || last == UINT64_MAX || x.virt != last + 1 ||
            x.phys != run->phys + run->size)
            break;
        run->size += x.size;
    }
    return i;
}

static uint64_t leaf_bits(uint32_t flags, uint32_t build_flags, unsigned level)
{
    uint64_t e = E_P | E_A;
    unsigned pat = (flags & EFIRD_PT_CACHE_MASK) >> EFIRD_PT_CACHE_SHIFT;

    if (!(flags & EFIRD_PT_READONLY))
        e |= E_RW | E_D;
    if (!(flags & EFIRD_PT_CODE) && !(build_flags & EFIRD_PT_BUILD_NO_NX))
        e |= E_NX;
    if (flags & EFIRD_PT_GLOBAL)
        e |= E_G;
    if (pat & 1)
        e |= E_PWT;
    if (pat & 2)
        e |= E_PCD;
    if (pat & 4)
        e |= level == 1 ? E_PAT_4K : E_PAT_LARGE;
    if (level > 1)
        e |= E_PS;
    return e;
}

static int valid_virt(uint64_t virt, uint64_t size, uint32_t levels)
{
    uint64_t last;
    if (size == 0 || (size & (PAGE - 1)) || (virt & (PAGE - 1)) || size - 1 > UINT64_MAX - virt)
        return 0;
    last = virt + size - 1;
    return canonical(virt, levels) && canonical(last, levels) && (virt >> 63) == (last >> 63);
}

static int valid_phys(uint64_t phys, uint64_t size)
{
    return !(phys & (PAGE - 1)) && phys < PHYS_LIMIT && size <= PHYS_LIMIT - phys;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/*
 * Tables one run needs below the root in an empty tree, less the one it shares with the
 * previous run at each level (consecutive sorted runs meet in at most one table). The
 * builder only ever allocates tables that some run needs this way, so the sum bounds it.
 */
static uint64_t run_tables(const builder *b, uint32_t levels, const item *run,
                           uint64_t prev[5], int have_prev[5])
{
    uint64_t delta = run->phys - run->virt, last = run->virt + run->size - 1, sum = 0;
    for (unsigned k = 1; k < levels; k++) {
        unsigned s = slot_shift(k + 1);
        uint64_t mask = (1ull << s) - 1;
        uint64_t n0 = run->virt >> s, n1 = last >> s, need, first, lastn;
        int leafable = k <= 2 && b->allow[k + 1] && !(delta & mask);
        if (leafable) {
            int hp = (run->virt & mask) != 0, tp = ((last + 1) & mask) != 0;
            if (n0 == n1) {
                need = hp || tp;
                first = lastn = n0;
            } else {
                need = (uint64_t)hp + (uint64_t)tp;
                first = hp ? n0 : n1;
                lastn = tp ? n1 : n0;
            }
        } else {
            need = n1 - n0 + 1;
            first = n0;
            lastn = n1;
        }
        if (!need)
            continue;
        if (have_prev[k] && prev[k] == first)
            need--;
        prev[k] = lastn;
        have_prev[k] = 1;
        sum = sat_add(sum, need);
    }
    return sum;
}

static int carve(builder *b, int zero, uint64_t *off)
{
    if (b->size < b->used || b->size - b->used < PAGE)
        return 0;
    *off = b->used;
    if (zero)
        memset(b->buf + b->used, 0, PAGE);
    b->used += PAGE;
    return 1;
}

/* The table an existing entry points at: it must be one this build carved. */
static int child_of(const builder *b, uint64_t entry, uint64_t *off)
{
    uint64_t addr = entry & ADDR_MASK;
    if (entry != (addr | TABLE_BITS) || addr < b->base || addr - b->base >= b->used)
        return 0;
    *off = addr - b->base;
    return 1;
}

/*
 * Map [va, last] (inside this table's reach) to va + delta. `fresh`: the table was just
 * carved by this run, so its entries are known to be empty and need not be read.
 */
static uint64_t map_table(builder *b, uint64_t off, unsigned level, uint64_t va, uint64_t last,
                          uint64_t delta, int fresh)
{
    uint8_t *t = b->buf + off;

    if (level == 1) {
        uint8_t *p = t + ((va >> 12) & 511) * 8;
        uint64_t n = ((last - va) >> 12) + 1;
        uint64_t e = (va + delta) | b->leaf[1];
        if (fresh) {
            fill(p, n, e, PAGE, b->stream);
            return ST_SUCCESS;
        }
        for (; n; n--, p += 8, e += PAGE) {
            uint64_t old = load(p);
            if (old == e)
                continue;
            if (old)
                return ST_INVALID_PARAMETER;
            store(p, e);
        }
        return ST_SUCCESS;
    }

    unsigned shift = slot_shift(level);
    uint64_t span = 1ull << shift, cur = va;
    for (;;) {
        uint64_t sbase = cur & ~(span - 1), slast = sbase + (span - 1);
        uint64_t seg_last = slast < last ? slast : last;
        uint64_t pa = sbase + delta; /* where this run puts the slot's first byte */
        uint8_t *p = t + ((cur >> shift) & 511) * 8;
        uint64_t old = fresh ? 0 : load(p);
        int full = cur == sbase && seg_last == slast;
        uint64_t st = ST_SUCCESS, child;
        int leaf = full && level <= 3 && b->allow[level] && !(pa & (span - 1));

        if (old && !(old & E_P))
            return ST_INVALID_PARAMETER;
        if (leaf && fresh) {
            /* Every slot from here that the run covers whole: one row of leaves. */
            uint64_t room = 512 - ((cur >> shift) & 511);
            uint64_t whole = ((last - cur) >> shift) + (((last - cur) & (span - 1)) == span - 1);
            uint64_t n = whole < room ? whole : room;
            fill(p, n, pa | b->leaf[level], span, b->stream);
            seg_last = cur + (n << shift) - 1;
        } else if (leaf) {
            uint64_t e = pa | b->leaf[level];
            if (!old)
                store(p, e);
            else if (old & E_PS) {
                if (old != e)
                    return ST_INVALID_PARAMETER;
            } else if (!child_of(b, old, &child))
                return ST_INVALID_PARAMETER;
            else
                st = map_table(b, child, level - 1, cur, seg_last, delta, 0);
        } else if (!old) {
            /* A child this run covers whole gets every entry written: no need to zero. */
            if (!carve(b, !full, &child))
                return ST_BUFFER_TOO_SMALL;
            store(p, (b->base + child) | TABLE_BITS);
            st = map_table(b, child, level - 1, cur, seg_last, delta, 1);
        } else if (old & E_PS) {
            /* Part of a large leaf mapped before: fine if it translates the same way. */
            if (level > 3 || (pa & (span - 1)) || pa >= PHYS_LIMIT || old != (pa | b->leaf[level]))
                return ST_INVALID_PARAMETER;
        } else if (!child_of(b, old, &child))
            return ST_INVALID_PARAMETER;
        else
            st = map_table(b, child, level - 1, cur, seg_last, delta, 0);

        if (st != ST_SUCCESS)
            return st;
        if (seg_last == last)
            return ST_SUCCESS;
        cur = seg_last + 1;
    }
}

uint64_t efird_pt_build(void *buf, uint64_t buf_size, uint64_t base, uint32_t levels,
                        uint32_t build_flags, const efird_pt_range *ranges,
                        uint64_t range_count, const efird_pt_mapping *maps,
                        uint64_t map_count, uint64_t *cr3, uint64_t *bytes_used)
{
    builder b;
    uint64_t n, i, root, bound, st, prev[5] = {0};
    int have_prev[5] = {0};
    item run;

    if (bytes_used)
        *bytes_used = 0;
    if (!cr3 || !bytes_used || (levels != 4 && levels != 5) ||
        (build_flags & ~EFIRD_PT_BUILD_MASK) || (!buf && buf_size) ||
        (range_count && !ranges) || (map_count && !maps) ||
        range_count > UINT64_MAX - map_count || (base & (PAGE - 1)) || base >= PHYS_LIMIT ||
        buf_size > PHYS_LIMIT - base)
        return ST_INVALID_PARAMETER;
    for (i = 0; i < range_count; i++)
        if ((ranges[i].flags & ~EFIRD_PT_FLAGS_MASK) || !valid_phys(ranges[i].phys, ranges[i].size) ||
            !valid_virt(ranges[i].phys, ranges[i].size, levels))
            return ST_INVALID_PARAMETER;
    for (i = 0; i < map_count; i++)
        if ((maps[i].flags & ~EFIRD_PT_FLAGS_MASK) || !valid_phys(maps[i].phys, maps[i].size) ||
            !valid_virt(maps[i].virt, maps[i].size, levels))
            return ST_INVALID_PARAMETER;

    memset(&b, 0, sizeof(b));
    b.buf = buf;
    b.size = buf_size;
    b.base = base;
    b.allow[1] = 1;
    b.allow[2] = !(build_flags & EFIRD_PT_BUILD_4K_ONLY);
    b.allow[3] = b.allow[2] && !(build_flags & EFIRD_PT_BUILD_NO_1G);
    n = range_count + map_count;

    bound = 1;
    for (i = 0; i < n;) {
        i = next_run(ranges, range_count, maps, n, i, &run);
        bound = sat_add(bound, run_tables(&b, levels, &run, prev, have_prev));
    }
    bound = bound > UINT64_MAX / PAGE ? UINT64_MAX : bound * PAGE;

    b.stream = bound >= STREAM_MIN;
    if (!carve(&b, 1, &root)) {
        *bytes_used = bound;
        return ST_BUFFER_TOO_SMALL;
    }
    for (i = 0, st = ST_SUCCESS; i < n && st == ST_SUCCESS;) {
        i = next_run(ranges, range_count, maps, n, i, &run);
        for (unsigned level = 1; level <= 3; level++)
            b.leaf[level] = leaf_bits(run.flags, build_flags, level);
        st = map_table(&b, root, levels, run.virt, run.virt + run.size - 1, run.phys - run.virt, 0);
    }
#ifdef HAVE_SSE2
    if (b.stream)
        _mm_sfence();
#endif
    if (st == ST_BUFFER_TOO_SMALL) {
        /* Cannot happen while the bound holds; never claim less than we had. */
        *bytes_used = bound > buf_size ? bound : sat_add(buf_size, PAGE);
        return st;
    }
    if (st != ST_SUCCESS)
        return st;
    *cr3 = base + root;
    *bytes_used = b.used;
    return ST_SUCCESS;
}

/* ---- walking ------------------------------------------------------------------------- */

uint64_t efird_pt_walk(const void *buf, uint64_t buf_size, uint64_t base, uint64_t cr3,
                       uint32_t levels, uint64_t va, efird_pt_translation *out)
{
    const uint8_t *b = buf;
    uint64_t table = cr3 & ADDR_MASK;
    int writable = 1, nx = 0;

    if (!out || (levels != 4 && levels != 5) || (!buf && buf_size) || !canonical(va, levels))
        return ST_INVALID_PARAMETER;
    for (unsigned level = levels; level >= 1; level--) {
        unsigned shift = slot_shift(level);
        uint64_t e, off = table - base;
        if (table < base || buf_size < PAGE || off > buf_size - PAGE)
            return ST_INVALID_PARAMETER;
        e = load(b + off + ((va >> shift) & 511) * 8);
        if (!(e & E_P))
            return ST_NOT_FOUND;
        writable &= (e & E_RW) != 0;
        nx |= (e & E_NX) != 0;
        if (level == 1 || (e & E_PS)) {
            uint64_t span = 1ull << shift, addr, pat;
            if (level > 3)
                return ST_INVALID_PARAMETER;
            if (level == 1) {
                addr = e & ADDR_MASK;
                pat = (e & E_PAT_4K) != 0;
            } else {
                if (e & ADDR_MASK & (span - 1) & ~E_PAT_LARGE)
                    return ST_INVALID_PARAMETER;
                addr = e & ADDR_MASK & ~(span - 1);
                pat = (e & E_PAT_LARGE) != 0;
            }
            out->phys = addr | (va & (span - 1));
            out->leaf_size = span;
            out->entry = e;
            out->level = level;
            out->flags = (nx ? 0 : EFIRD_PT_CODE) | (writable ? 0 : EFIRD_PT_READONLY) |
                         ((e & E_G) ? EFIRD_PT_GLOBAL : 0) |
                         (uint32_t)((((e & E_PWT) ? 1 : 0) | ((e & E_PCD) ? 2 : 0) | (pat << 2))
                                    << EFIRD_PT_CACHE_SHIFT);
            return ST_SUCCESS;
        }
        table = e & ADDR_MASK;
    }
    return ST_INVALID_PARAMETER; /* not reached: level 1 always returns */
}

/* ---- Linux's EFI runtime layout ------------------------------------------------------ */

#define EFI_BOOT_SERVICES_CODE 3u
#define EFI_BOOT_SERVICES_DATA 4u
#define EFI_MEMORY_RUNTIME (1ull << 63)
#define PMD_SIZE (1ull << 21)

static EFI_MEMORY_DESCRIPTOR desc_at(const uint8_t *map, uint64_t desc_size, uint64_t i)
{
    EFI_MEMORY_DESCRIPTOR d;
    memcpy(&d, map + i * desc_size, sizeof(d));
    return d;
}

/*
 * efi_merge_regions() folds descriptor i into the region before it when the type and
 * attribute match and i starts where that region ends. The region before it is i-1, or
 * the head i-1 was folded into, which then ends where i-1 ends: so whether i is folded
 * is a property of i-1 and i alone.
 */
static int merged_into_previous(const uint8_t *map, uint64_t desc_size, uint64_t i)
{
    EFI_MEMORY_DESCRIPTOR d, p;
    if (i == 0)
        return 0;
    d = desc_at(map, desc_size, i);
    p = desc_at(map, desc_size, i - 1);
    return d.Type == p.Type && d.Attribute == p.Attribute &&
           d.PhysicalStart == p.PhysicalStart + (p.NumberOfPages << 12);
}

uint64_t efird_pt_linux_efi_va(const void *map, uint64_t map_size, uint64_t desc_size,
                               uint64_t *virt, uint64_t virt_count)
{
    const uint8_t *m = map;
    uint64_t n, i, efi_va = EFIRD_PT_EFI_VA_START, folded = 0, status = ST_SUCCESS;

    if (desc_size < sizeof(EFI_MEMORY_DESCRIPTOR) || map_size % desc_size || (!map && map_size))
        return ST_INVALID_PARAMETER;
    n = map_size / desc_size;
    if (virt_count < n || (!virt && n))
        return ST_BUFFER_TOO_SMALL;

    /* efi_map_regions() walks the map backwards (efi_map_next_entry_reverse), so the
     * descriptors folded into a head are seen, and summed, before the head itself. */
    for (i = n; i-- > 0;) {
        EFI_MEMORY_DESCRIPTOR d = desc_at(m, desc_size, i);
        uint64_t size, pa = d.PhysicalStart;

        virt[i] = 0;
        if (merged_into_previous(m, desc_size, i)) {
            folded += d.NumberOfPages; /* now EFI_RESERVED_TYPE: should_map_region() no */
            continue;
        }
        size = (d.NumberOfPages + folded) << 12;
        folded = 0;
        /* should_map_region(), native 64-bit: runtime, or boot services code/data */
        if (!(d.Attribute & EFI_MEMORY_RUNTIME) && d.Type != EFI_BOOT_SERVICES_CODE &&
            d.Type != EFI_BOOT_SERVICES_DATA)
            continue;
        /* efi_map_region() */
        efi_va -= size;
        if (!(pa & (PMD_SIZE - 1))) {
            efi_va &= ~(PMD_SIZE - 1);
        } else {
            uint64_t prev_va = efi_va;
            efi_va = (efi_va & ~(PMD_SIZE - 1)) + (pa & (PMD_SIZE - 1));
            if (efi_va > prev_va)
                efi_va -= PMD_SIZE;
        }
        if (efi_va < EFIRD_PT_EFI_VA_END) {
            status = ST_OUT_OF_RESOURCES; /* Linux: "VA address range overflow!" */
            continue;
        }
        virt[i] = efi_va;
    }
    /* A folded descriptor sits right after the one before it in the head's mapping. */
    for (i = 1; i < n; i++)
        if (virt[i - 1] && merged_into_previous(m, desc_size, i))
            virt[i] = virt[i - 1] + (desc_at(m, desc_size, i - 1).NumberOfPages << 12);
    return status;
}

void efird_pt_bench_memset(void *buf, uint64_t size)
{
    memset(buf, 0, size);
}
