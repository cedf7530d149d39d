/*
 * efird's PVH shim: from the PVH entry to the kernel's EFI entry.
 *
 *   1. hvm_start_info: the memory map and the RSDP; ACPI for power-off and the PM timer.
 *   2. Find efird's queue carrier (a modern virtio PCI device) and set up its virtqueue.
 *   3. Ask efird to build the memory map (InitMemoryMap, from hvm_start_info's map plus
 *      the firmware tables and the device's BAR) and the page tables (BuildPageTables),
 *      and switch to them.
 *   4. Read the kernel, initrd, command line and options from QEMU's fw_cfg, lay the
 *      kernel out as a PE image, build the EFI system table, and enter the kernel through
 *      its PE entry (ms_abi) or, with `entry=handover`, the 64-bit EFI handover entry.
 */
#include "shim.h"

struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};
#define HVM_START_MAGIC 0x336ec578u

#define MAX_REGIONS 256
static EFIRD_HVM_MEMMAP_ENTRY regions[MAX_REGIONS];
static int nregions;
static CHAR16 load_options[4096];
static char cmdline[4096];
static char options[256];

typedef EFI_STATUS (EFIAPI *efi_entry_t)(EFI_HANDLE, EFI_SYSTEM_TABLE *);
typedef void (*handover_t)(EFI_HANDLE, EFI_SYSTEM_TABLE *, void *);
typedef EFI_STATUS (EFIAPI *get_variable_t)(CHAR16 *, EFI_GUID *, uint32_t *, uint64_t *, void *);

static const EFI_GUID g_mem = EFIRD_BOOTMEM_SERVICE_GUID;
static const EFI_GUID g_var = EFIRD_SMM_VARIABLE_PROTOCOL_GUID;
static const EFI_GUID g_kexec = EFIRD_KEXEC_SERVICE_GUID;

/* ---- the memory map handed to efird -------------------------------------------------------- */
static void add_region(uint64_t start, uint64_t end, uint32_t kind)
{
    if (end <= start) return;
    if (nregions >= MAX_REGIONS) panic("memory map: more than %d regions", MAX_REGIONS);
    regions[nregions++] = (EFIRD_HVM_MEMMAP_ENTRY){ start, end - start, kind, 0 };
}

struct span { uint64_t start, end; uint32_t kind; };

static void sort_spans(struct span *s, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && s[j].start < s[j - 1].start; j--) {
            struct span t = s[j]; s[j] = s[j - 1]; s[j - 1] = t;
        }
}

/* hvm_memmap plus what only the shim knows (the firmware tables that sit in RAM, the
 * device's BAR) as efird's region kinds, page-aligned and without overlaps: RAM is
 * trimmed inward and loses whatever any other region covers. */
static void build_regions(const EFIRD_HVM_MEMMAP_ENTRY *mm, uint32_t n, const struct acpi_info *acpi,
                          const uint64_t smb[2], const struct rt_device *dev)
{
    static struct span special[MAX_REGIONS], ram[MAX_REGIONS];
    int ns = 0, nr = 0;
    for (uint32_t i = 0; i < n && ns < MAX_REGIONS - 80 && nr < MAX_REGIONS; i++) {
        if (!mm[i].Size) continue;
        uint64_t s = mm[i].Addr, e = mm[i].Addr + mm[i].Size;
        if (mm[i].Type == 1)
            ram[nr++] = (struct span){ ALIGN_UP(s, PAGE_SIZE), e & ~(PAGE_SIZE - 1), 1 };
        else
            special[ns++] = (struct span){ s & ~(PAGE_SIZE - 1), ALIGN_UP(e, PAGE_SIZE), mm[i].Type };
    }
    for (int i = 0; i < acpi->nranges; i++)
        special[ns++] = (struct span){ acpi->ranges[i][0], acpi->ranges[i][1], 3 };
    if (smb[1])
        special[ns++] = (struct span){ smb[0] & ~(PAGE_SIZE - 1), ALIGN_UP(smb[0] + smb[1], PAGE_SIZE), 2 };
    special[ns++] = (struct span){ 0xf0000, 0x100000, 2 }; /* BIOS area: SMBIOS, RSDP */
    special[ns++] = (struct span){ dev->bar_phys, dev->bar_phys + ALIGN_UP(dev->bar_size, PAGE_SIZE), EFIRD_REGION_MMIO };
    sort_spans(special, ns);
    /* No overlaps among the special regions: a later one loses what an earlier one has. */
    uint64_t covered = 0;
    int out = 0;
    for (int i = 0; i < ns; i++) {
        struct span s = special[i];
        if (s.start < covered) s.start = covered;
        if (s.end <= s.start) continue;
        special[out++] = s;
        covered = s.end;
    }
    ns = out;
    for (int i = 0; i < ns; i++) add_region(special[i].start, special[i].end, special[i].kind);
    for (int r = 0; r < nr; r++) {
        uint64_t s = ram[r].start;
        for (int i = 0; i < ns && s < ram[r].end; i++) {
            if (special[i].end <= s || special[i].start >= ram[r].end) continue;
            add_region(s, special[i].start, 1);
            if (special[i].end > s) s = special[i].end;
        }
        add_region(s, ram[r].end, 1);
    }
}

/* With a map from the toolstack (`efird serve --memmap`), the runtime services can only
 * reach the device after ExitBootServices if that map has its BAR as runtime MMIO. */
static void require_runtime_mmio(const struct rt_device *dev)
{
    static uint8_t map[RT_BUFFER_SIZE / 2];
    uint64_t size = sizeof(map), key, dsize;
    uint32_t version;
    EFI_STATUS s = bs_get_memory_map(&size, map, &key, &dsize, &version);
    if (s) panic("GetMemoryMap failed: 0x%lx", s);
    for (uint64_t off = 0; off + dsize <= size; off += dsize) {
        const EFI_MEMORY_DESCRIPTOR_T *d = (const EFI_MEMORY_DESCRIPTOR_T *)(map + off);
        uint64_t end = d->PhysicalStart + d->NumberOfPages * PAGE_SIZE;
        if (d->PhysicalStart <= dev->bar_phys && dev->bar_phys + dev->bar_size <= end &&
            d->Type == EfiMemoryMappedIO && (d->Attribute & (1ull << 63)))
            return;
    }
    panic("the toolstack's memory map for efird (--memmap) does not cover the device's BAR "
          "0x%lx+0x%lx as runtime MMIO; add the line '0x%lx 0x%lx mmio'",
          dev->bar_phys, dev->bar_size, dev->bar_phys, dev->bar_size);
}

/* ---- early mappings for a BAR above 4 GiB -------------------------------------------------- */
extern uint64_t early_pml4[512];
static uint64_t spare[8][512] __attribute__((aligned(4096)));
static int nspare;

static uint64_t *next_table(uint64_t *entry)
{
    if (!(*entry & 1)) {
        if (nspare == 8) panic("out of early page tables for the device BAR");
        uint64_t *t = spare[nspare++];
        *entry = (uint64_t)(uintptr_t)t | 3;
    }
    return (uint64_t *)(uintptr_t)(*entry & 0x000ffffffffff000ull);
}

static void early_map(uint64_t start, uint64_t size)
{
    for (uint64_t a = start & ~0x1fffffull; a < start + size; a += 0x200000) {
        if (a < 0x100000000ull) continue;
        uint64_t *pdpt = next_table(&early_pml4[(a >> 39) & 511]);
        uint64_t *pd = next_table(&pdpt[(a >> 30) & 511]);
        pd[(a >> 21) & 511] = a | 0x83 | 0x18; /* 2 MiB, uncached */
    }
    __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
}

/* ---- fw_cfg inputs ------------------------------------------------------------------------ */
static int read_string(const char *name, char *buf, uint32_t cap)
{
    uint16_t sel;
    uint32_t size;
    buf[0] = 0;
    if (fwcfg_find(name, &sel, &size)) return 0;
    if (size >= cap) panic("fw_cfg %s: %u bytes, at most %u allowed", name, size, cap - 1);
    if (fwcfg_read(sel, buf, size)) panic("fw_cfg %s: read failed", name);
    buf[size] = 0;
    while (size && (buf[size - 1] == '\n' || buf[size - 1] == 0)) buf[--size] = 0;
    return 1;
}

static const char *option(const char *key)
{
    size_t k = 0;
    while (key[k]) k++;
    for (const char *p = options; *p;) {
        while (*p == ' ' || *p == ',') p++;
        if (!memcmp(p, key, k) && p[k] == '=') return p + k + 1;
        while (*p && *p != ' ' && *p != ',') p++;
    }
    return 0;
}

static uint64_t option_u(const char *key, uint64_t dflt)
{
    const char *v = option(key);
    if (!v || *v < '0' || *v > '9') return dflt;
    uint64_t n = 0;
    while (*v >= '0' && *v <= '9') n = n * 10 + (uint64_t)(*v++ - '0');
    return n;
}

static void *load_file(const char *name, uint16_t sel, uint32_t size, uint32_t mtype, uint64_t max)
{
    uint64_t addr = max;
    if (bs_allocate_pages(AllocateMaxAddress, mtype, ALIGN_UP(size, PAGE_SIZE) / PAGE_SIZE, &addr))
        panic("no memory for %s (%u bytes)", name, size);
    if (fwcfg_read(sel, (void *)(uintptr_t)addr, size)) panic("fw_cfg %s: read failed", name);
    return (void *)(uintptr_t)addr;
}

static void report_samples(const char *what, uint64_t *t, uint32_t n, EFI_STATUS s)
{
    for (uint32_t i = 1; i < n; i++)
        for (uint32_t j = i; j > 0 && t[j] < t[j - 1]; j--) { uint64_t x = t[j]; t[j] = t[j - 1]; t[j - 1] = x; }
    printf("efird-shim: self-test: %s x%u: status 0x%lx, median %lu ns, min %lu ns, p90 %lu ns\n",
           what, n, s, t[n / 2] * 1000000 / g_tsc_per_ms, t[0] * 1000000 / g_tsc_per_ms,
           t[n * 9 / 10] * 1000000 / g_tsc_per_ms);
}

/* GetVariable as the guest sees it, timed with the TSC (shim option selftest=N). */
static void self_test(uint32_t n)
{
    get_variable_t gv = (get_variable_t)rt_runtime.Slot[RT_GET_VARIABLE];
    static uint64_t t[1024];
    if (n > 1024) n = 1024;
    EFI_GUID gv_guid = EFI_GLOBAL_VARIABLE_GUID;
    CHAR16 name[] = u"SecureBoot";
    EFI_STATUS s = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t data[8];
        uint64_t size = sizeof(data);
        uint64_t t0 = rdtsc();
        s = gv(name, &gv_guid, 0, &size, data);
        t[i] = rdtsc() - t0;
    }
    report_samples("GetVariable(SecureBoot)", t, n, s);
    /* The floor: the same round trip for a request efird refuses unread (unknown handler
     * GUID), i.e. the queue and the vhost-user hop without any service. */
    static const EFI_GUID unknown = GUID(0x0badf00d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    int transport = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t t0 = rdtsc();
        s = rt_service(&unknown, 0, 0, &transport);
        t[i] = rdtsc() - t0;
    }
    report_samples(transport ? "refused request (floor)" : "unknown GUID answered?!", t, n, s);
}

/* Shim option torture=1: act as a hostile guest for a moment — garbage envelopes, a
 * chain pointing outside guest memory, a corrupted avail index — and show that efird
 * answers each with an error (or completes it empty), keeps serving, and that the shim
 * gets its queue back with a device reset. */
static void torture(void)
{
    static const EFI_GUID unknown = GUID(0xdeadbeef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
    uint32_t used = 0;
    int t = 0;
    EFI_STATUS s;
    uint64_t buf = (uint64_t)(uintptr_t)rt_buffer; /* identity-mapped at boot */

    s = rt_service(&unknown, 1, 64, &t);
    printf("efird-shim: torture: unknown handler GUID: %s\n", t ? rt_device_error(t) : "answered?!");
    memcpy(rt_buffer, &g_var, 16);
    uint64_t huge = 1ull << 40;
    memcpy(rt_buffer + 16, &huge, 8); /* MessageLength far past the buffer */
    t = rt_send_raw(buf, 64, 0, 2000, &used);
    printf("efird-shim: torture: MessageLength past the buffer: %s\n",
           t ? rt_device_error(t) : used ? "answered?!" : "refused (used length 0)");
    s = rt_service(&g_var, 99, 64, &t);
    printf("efird-shim: torture: unknown variable function: status 0x%lx\n", s);
    SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE av = { EFI_GLOBAL_VARIABLE_GUID, 4, ~0ull - 3, 0 };
    memcpy(rt_buffer + DATA_AT, &av, 36);
    s = rt_service(&g_var, SMM_VARIABLE_FUNCTION_GET_VARIABLE, 64, &t);
    printf("efird-shim: torture: GetVariable with NameSize+DataSize overflowing: status 0x%lx\n", s);
    t = rt_send_raw(0xfffffff00000ull, 4096, 0, 2000, &used);
    printf("efird-shim: torture: descriptor outside guest memory: %s\n",
           t ? rt_device_error(t) : used ? "answered?!" : "completed empty (used length 0)");
    t = rt_send_raw(buf, 64, 1000, 2000, &used);
    printf("efird-shim: torture: avail index 1000 entries ahead: %s\n",
           t ? rt_device_error(t) : "answered?!");
    uint8_t data[8];
    uint64_t size = sizeof(data);
    EFI_GUID gv = EFI_GLOBAL_VARIABLE_GUID;
    s = ((get_variable_t)rt_runtime.Slot[RT_GET_VARIABLE])(u"SetupMode", &gv, 0, &size, data);
    printf("efird-shim: torture: after a device reset, GetVariable(SetupMode): status 0x%lx%s\n",
           s, s == EFI_SUCCESS ? " - efird still serving" : "");
}

static void handover(struct boot_image *img, EFI_SYSTEM_TABLE *st, uint16_t rd_sel, uint32_t rd_size)
{
    const uint8_t *f = img->file;
    uint64_t bp_addr = 0xffffffffull;
    if (bs_allocate_pages(AllocateMaxAddress, EfiLoaderData, 4, &bp_addr)) panic("no memory for boot_params");
    uint8_t *bp = (uint8_t *)(uintptr_t)bp_addr;
    memset(bp, 0, 4 * PAGE_SIZE);
    uint32_t hdr_end = 0x202 + f[0x201];
    memcpy(bp + 0x1f1, f + 0x1f1, hdr_end - 0x1f1);
    bp[0x210] = 0xff; /* type_of_loader: undefined */
    char *cl = (char *)(bp + 2 * PAGE_SIZE);
    memcpy(cl, cmdline, sizeof(cmdline) < 2 * PAGE_SIZE ? sizeof(cmdline) : 2 * PAGE_SIZE);
    uint32_t cl32 = (uint32_t)(uintptr_t)cl;
    memcpy(bp + 0x228, &cl32, 4);
    if (rd_size) {
        uint32_t max;
        memcpy(&max, f + 0x22c, 4);
        void *rd = load_file("opt/efird/initrd", rd_sel, rd_size, EfiLoaderData, max);
        uint32_t a = (uint32_t)(uintptr_t)rd;
        memcpy(bp + 0x218, &a, 4);
        memcpy(bp + 0x21c, &rd_size, 4);
        printf("efird-shim: initrd (%u bytes) at %p for the handover entry\n", rd_size, rd);
    }
    printf("efird-shim: entering the kernel via the 64-bit EFI handover entry at 0x%lx (tsc %lu)\n",
           img->handover64, rdtsc());
    ((handover_t)(uintptr_t)img->handover64)(g_image_handle, st, bp);
    panic("the kernel's handover entry returned");
}

void shim_main(struct hvm_start_info *si);
void shim_main(struct hvm_start_info *si)
{
    uint64_t tsc0 = rdtsc();
    serial_init();
    idt_install();
    printf("\nefird-shim: PVH entry (tsc %lu)\n", tsc0);
    if (!si || si->magic != HVM_START_MAGIC) panic("no hvm_start_info (magic %x): not started as a PVH guest", si ? si->magic : 0);
    if (si->version < 1 || !si->memmap_paddr || !si->memmap_entries)
        panic("hvm_start_info v%u has no memory map", si->version);

    struct acpi_info acpi;
    acpi_scan(si->rsdp_paddr, &acpi);
    rt_set_power(acpi.pm1a_cnt, acpi.slp_typ_s5);
    g_tsc_per_ms = tsc_calibrate(acpi.pm_tmr);
    printf("efird-shim: RSDP 0x%lx, PM1a_CNT 0x%x, TSC %lu kHz\n", acpi.rsdp, acpi.pm1a_cnt, g_tsc_per_ms);

    struct rt_device dev;
    int r = virtio_find(&dev);
    if (r == -1)
        panic("efird is not attached: no virtio device 1af4:1044 on PCI bus 0 "
              "(start QEMU with -device vhost-user-rng-pci,chardev=<efird's socket>)");
    if (r < 0) panic("the virtio device on PCI bus 0 has no usable virtio 1.x capabilities (%d)", r);
    printf("efird-shim: efird device at %02x:%02x.%x, BAR 0x%lx (+0x%lx)\n",
           (dev.pci_addr >> 16) & 0xff, (dev.pci_addr >> 11) & 0x1f, (dev.pci_addr >> 8) & 7,
           dev.bar_phys, dev.bar_size);
    if (dev.bar_phys + dev.bar_size > 0x100000000ull) early_map(dev.bar_phys, dev.bar_size);
    r = rt_device_init(&dev, g_tsc_per_ms);
    if (r) panic("cannot set up the efird device: %s", rt_device_error(r));
    int transport = 0;
    memset(rt_buffer + DATA_AT - 16, 0, 24);
    EFI_STATUS s = rt_service(&g_var, SMM_VARIABLE_FUNCTION_GET_PAYLOAD_SIZE, 8, &transport);
    if (transport) panic("efird does not answer on its queue: %s", rt_device_error(transport));
    if (s) panic("efird refused GetPayloadSize: 0x%lx", s);

    /* The memory map. */
    uint64_t smb[2];
    int smb3 = 0;
    uint64_t smbios = smbios_find(&smb3, smb);
    build_regions((const EFIRD_HVM_MEMMAP_ENTRY *)(uintptr_t)si->memmap_paddr, si->memmap_entries,
                  &acpi, smb, &dev);
    EFIRD_INIT_MEMORY_MAP im = { (uint64_t)nregions, 0, };
    memcpy(rt_buffer + DATA_AT, &im, sizeof(im));
    memcpy(rt_buffer + DATA_AT + sizeof(im), regions, nregions * sizeof(regions[0]));
    s = rt_service(&g_mem, EFIRD_BOOTMEM_INIT_MEMORY_MAP, sizeof(im) + nregions * sizeof(regions[0]), 0);
    if (s == EFI_ERR(20) /* ALREADY_STARTED: the toolstack gave efird a map */) {
        printf("efird-shim: efird already has a memory map from the toolstack\n");
        require_runtime_mmio(&dev);
    } else if (s)
        panic("efird refused the memory map (%d regions): 0x%lx", nregions, s);
    uint64_t img_start = (uint64_t)(uintptr_t)__image_start, rt_start = (uint64_t)(uintptr_t)__rt_start;
    uint64_t rt_end = (uint64_t)(uintptr_t)__rt_end;
    uint64_t a = img_start;
    if (bs_allocate_pages(AllocateAddress, EfiBootServicesCode, (rt_start - img_start) / PAGE_SIZE, &a))
        panic("cannot reserve the shim's boot image at 0x%lx", img_start);
    a = rt_start;
    if (bs_allocate_pages(AllocateAddress, EfiRuntimeServicesCode, (rt_end - rt_start) / PAGE_SIZE, &a))
        panic("cannot reserve the shim's runtime region at 0x%lx", rt_start);

    /* Page tables from efird: identity map of the map, UC for the BAR; no NX (the loader
     * runs code from memory it allocated as data, as under most firmware). */
    uint32_t eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0x80000001u), "c"(0));
    uint32_t flags = EFIRD_PT_NO_NX | ((edx & (1u << 26)) ? 0 : EFIRD_PT_NO_1G);
    uint64_t pages = 16;
    for (int attempt = 0;; attempt++) {
        uint64_t base = 0xffffffffull;
        if (bs_allocate_pages(AllocateMaxAddress, EfiBootServicesData, pages, &base))
            panic("no memory for page tables");
        EFIRD_BUILD_PAGE_TABLES pt = { base, pages * PAGE_SIZE, 4, flags, 0, 0 };
        s = rt_call(&g_mem, EFIRD_BOOTMEM_BUILD_PAGE_TABLES, &pt, sizeof(pt));
        if (s == EFI_SUCCESS) {
            __asm__ volatile("mov %0, %%cr3" ::"r"(pt.Cr3) : "memory");
            printf("efird-shim: memory map of %d regions; page tables from efird (%lu bytes), CR3 0x%lx\n",
                   nregions, pt.BytesUsed, pt.Cr3);
            break;
        }
        bs_free_pages(base, pages);
        if (s != EFI_BUFFER_TOO_SMALL || attempt) panic("efird could not build page tables: 0x%lx", s);
        pages = ALIGN_UP(pt.BytesUsed, PAGE_SIZE) / PAGE_SIZE;
    }

    /* Inputs from fw_cfg. */
    read_string("opt/efird/cmdline", cmdline, sizeof(cmdline));
    read_string("opt/efird/options", options, sizeof(options));
    uint16_t ksel, rsel = 0;
    uint32_t ksize, rsize = 0;
    if (fwcfg_find("opt/efird/kernel", &ksel, &ksize))
        panic("no kernel: pass it with -fw_cfg name=opt/efird/kernel,file=<bzImage or EFI application>");
    if (fwcfg_find("opt/efird/initrd", &rsel, &rsize)) rsize = 0;
    uint8_t *kfile = load_file("opt/efird/kernel", ksel, ksize, EfiLoaderData, ~0ull);
    struct boot_image img;
    const char *err = pe_load(kfile, ksize, &img);
    if (err) panic("%s (opt/efird/kernel, %u bytes)", err, ksize);
    printf("efird-shim: kernel %u bytes, image at %p (+0x%lx), entry 0x%lx%s; initrd %u bytes\n",
           ksize, img.base, img.size, img.entry, img.handover64 ? ", handover available" : "", rsize);

    /* The EFI system table: in the runtime region, so that it outlives the boot services
     * (a kexec'd kernel reads it again). */
    rt_setup_tables();
    EFI_SYSTEM_TABLE *st = &rt_systab;
    st->Hdr = (EFI_TABLE_HEADER){ EFI_SYSTEM_TABLE_SIGNATURE, EFI_REVISION_2_70, sizeof(*st), 0, 0 };
    st->FirmwareVendor = rt_vendor;
    st->FirmwareRevision = 0x00010000;
    st->RuntimeServices = &rt_runtime;
    st->ConfigurationTable = rt_config;
    st->NumberOfTableEntries = 0;
    int n = 0;
    if (acpi.rsdp) rt_config[n++] = (EFI_CONFIGURATION_TABLE){ ACPI_20_TABLE_GUID, (void *)(uintptr_t)acpi.rsdp };
    if (smbios) {
        if (smb3) rt_config[n++] = (EFI_CONFIGURATION_TABLE){ SMBIOS3_TABLE_GUID, (void *)(uintptr_t)smbios };
        else rt_config[n++] = (EFI_CONFIGURATION_TABLE){ SMBIOS_TABLE_GUID, (void *)(uintptr_t)smbios };
    }
    rt_config[n++] = (EFI_CONFIGURATION_TABLE){ EFI_RT_PROPERTIES_TABLE_GUID, &rt_properties };
    st->NumberOfTableEntries = (uint64_t)n;

    EFIRD_FIRMWARE_TABLES ft = { (uint64_t)(uintptr_t)rt_vendor, (uint64_t)(uintptr_t)rt_config, smbios, 0 };
    s = rt_call(&g_kexec, EFIRD_KEXEC_SET_FIRMWARE_TABLES, &ft, sizeof(ft));
    if (s) printf("efird-shim: warning: SetFirmwareTables: 0x%lx\n", s);

    uint32_t nopt = 0;
    for (; cmdline[nopt] && nopt < sizeof(load_options) / 2 - 1; nopt++) load_options[nopt] = (uint8_t)cmdline[nopt];
    load_options[nopt] = 0;
    bs_init(st, load_options, (nopt + 1) * 2, &img, rsel, rsize);
    rt_table_crc(&st->Hdr, sizeof(*st));

    if (option_u("torture", 0)) torture();
    uint64_t selftest = option_u("selftest", 0);
    if (selftest) self_test((uint32_t)selftest);

    /* Hand over: the 8259 PICs masked, interrupts off. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    const char *entry = option("entry");
    if (entry && !memcmp(entry, "handover", 8)) {
        if (!img.handover64) panic("entry=handover, but the kernel has no 64-bit EFI handover entry");
        handover(&img, st, rsel, rsize);
    }
    bs_free_pages((uint64_t)(uintptr_t)kfile, ALIGN_UP(ksize, PAGE_SIZE) / PAGE_SIZE);
    printf("efird-shim: entering the kernel via its PE entry at 0x%lx (tsc %lu, %lu ms after PVH entry)\n",
           img.entry, rdtsc(), (rdtsc() - tsc0) / g_tsc_per_ms);
    s = ((efi_entry_t)(uintptr_t)img.entry)(g_image_handle, st);
    panic("the kernel's EFI entry returned 0x%lx", s);
}
