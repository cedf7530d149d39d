/*
 * The boot services a loader such as Linux's EFI stub needs, and no more: memory
 * (GetMemoryMap, AllocatePages, FreePages) and ExitBootServices go to efird; pool
 * allocation, the loaded-image protocol, the initrd's LoadFile2, configuration tables,
 * the serial console and a few trivial services are served here. Everything else
 * answers EFI_UNSUPPORTED (locating protocols and handles: EFI_NOT_FOUND).
 */
#include "shim.h"

static const EFI_GUID g_mem = EFIRD_BOOTMEM_SERVICE_GUID;
static const EFI_GUID g_loaded_image = LOADED_IMAGE_PROTOCOL_GUID;
static const EFI_GUID g_device_path = DEVICE_PATH_PROTOCOL_GUID;
static const EFI_GUID g_load_file2 = LOAD_FILE2_PROTOCOL_GUID;

static EFI_BOOT_SERVICES bs;
static EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL con_out;
static SIMPLE_TEXT_OUTPUT_MODE con_mode = { 1, 0, 0x07, 0, 0, 0 };
static EFI_SIMPLE_TEXT_INPUT_PROTOCOL con_in;
static EFI_LOADED_IMAGE_PROTOCOL loaded_image;
static EFI_LOAD_FILE2_PROTOCOL initrd_lf2;
static struct __attribute__((packed)) {
    EFI_DEVICE_PATH vendor;
    EFI_GUID guid;
    EFI_DEVICE_PATH end;
} initrd_path = { { 4, 3, { 20, 0 } }, LINUX_EFI_INITRD_MEDIA_GUID, { 0x7f, 0xff, { 4, 0 } } };
static struct { int x; } image_handle_obj, initrd_handle_obj, console_handle_obj;
EFI_HANDLE g_image_handle = &image_handle_obj;
static EFI_HANDLE initrd_handle = &initrd_handle_obj;
static uint16_t initrd_select;
static uint32_t initrd_size;
static EFI_SYSTEM_TABLE *systab;
static int exited; /* ExitBootServices succeeded */
static uint64_t monotonic;
uint64_t g_ebs_tsc;

static int guid_eq(const EFI_GUID *a, const EFI_GUID *b) { return !memcmp(a, b, sizeof(*a)); }

/* ---- memory, through efird ----------------------------------------------------------------- */
EFI_STATUS bs_allocate_pages(uint32_t type, uint32_t mtype, uint64_t pages, uint64_t *addr)
{
    EFIRD_ALLOCATE_PAGES a = { type, mtype, pages, *addr };
    EFI_STATUS s = rt_call(&g_mem, EFIRD_BOOTMEM_ALLOCATE_PAGES, &a, sizeof(a));
    if (s == EFI_SUCCESS) *addr = a.Memory;
    return s;
}

EFI_STATUS bs_free_pages(uint64_t addr, uint64_t pages)
{
    EFIRD_FREE_PAGES f = { addr, pages };
    return rt_call(&g_mem, EFIRD_BOOTMEM_FREE_PAGES, &f, sizeof(f));
}

static EFIAPI EFI_STATUS allocate_pages(uint32_t type, uint32_t mtype, uint64_t pages, uint64_t *memory)
{
    if (!memory) return EFI_INVALID_PARAMETER;
    return exited ? EFI_UNSUPPORTED : bs_allocate_pages(type, mtype, pages, memory);
}

static EFIAPI EFI_STATUS free_pages(uint64_t memory, uint64_t pages)
{
    return exited ? EFI_UNSUPPORTED : bs_free_pages(memory, pages);
}

EFIAPI EFI_STATUS bs_get_memory_map(uint64_t *size, void *map, uint64_t *key,
                                    uint64_t *desc_size, uint32_t *version)
{
    if (!size || !key || !desc_size || !version || (*size && !map)) return EFI_INVALID_PARAMETER;
    uint64_t room = RT_BUFFER_SIZE - DATA_AT - sizeof(EFIRD_GET_MEMORY_MAP);
    EFIRD_GET_MEMORY_MAP g = { *size < room ? *size : room, 0, 0, 0, 0 };
    memcpy(rt_buffer + DATA_AT, &g, sizeof(g));
    EFI_STATUS s = rt_service(&g_mem, EFIRD_BOOTMEM_GET_MEMORY_MAP, sizeof(g) + g.MemoryMapSize, 0);
    memcpy(&g, rt_buffer + DATA_AT, sizeof(g));
    if (s == EFI_SUCCESS) {
        if (g.MemoryMapSize > *size) return EFI_DEVICE_ERROR;
        memcpy(map, rt_buffer + DATA_AT + sizeof(g), g.MemoryMapSize);
    }
    if (s == EFI_SUCCESS || s == EFI_BUFFER_TOO_SMALL) {
        *size = g.MemoryMapSize;
        *key = g.MapKey;
        *desc_size = g.DescriptorSize;
        *version = g.DescriptorVersion;
    }
    return s;
}

static EFIAPI EFI_STATUS exit_boot_services(EFI_HANDLE image, uint64_t key)
{
    (void)image;
    if (exited) return EFI_SUCCESS;
    EFIRD_EXIT_BOOT_SERVICES e = { key };
    EFI_STATUS s = rt_call(&g_mem, EFIRD_BOOTMEM_EXIT_BOOT_SERVICES, &e, sizeof(e));
    if (s != EFI_SUCCESS) return s;
    g_ebs_tsc = rdtsc();
    exited = 1;
    printf("efird-shim: ExitBootServices (tsc %lu)\n", g_ebs_tsc);
    /* What is gone with the boot services, as EDK2 leaves the table. */
    systab->BootServices = 0;
    systab->ConIn = 0;
    systab->ConOut = 0;
    systab->StdErr = 0;
    systab->ConsoleInHandle = systab->ConsoleOutHandle = systab->StandardErrorHandle = 0;
    rt_table_crc(&systab->Hdr, sizeof(*systab));
    return EFI_SUCCESS;
}

/* ---- pool: a bump arena in EfiBootServicesData; FreePool returns the last block ------------ */
static uint8_t *pool_top, *pool_end, *pool_last;
#define POOL_PAGES 256 /* 1 MiB; larger blocks get pages of their own */

static EFIAPI EFI_STATUS allocate_pool(uint32_t type, uint64_t size, void **buffer)
{
    (void)type;
    if (!buffer) return EFI_INVALID_PARAMETER;
    if (exited) return EFI_UNSUPPORTED;
    uint64_t need = ALIGN_UP(size + 16, 16);
    if (size > (uint64_t)(pool_end - pool_top) || need > (uint64_t)(pool_end - pool_top)) {
        /* Larger than the arena can take: whole pages of their own. */
        uint64_t addr = 0;
        EFI_STATUS s = bs_allocate_pages(AllocateAnyPages, EfiBootServicesData,
                                         ALIGN_UP(size + 16, PAGE_SIZE) / PAGE_SIZE, &addr);
        if (s != EFI_SUCCESS) return EFI_OUT_OF_RESOURCES;
        *(uint64_t *)(uintptr_t)addr = 0;
        *buffer = (void *)(uintptr_t)(addr + 16);
        return EFI_SUCCESS;
    }
    pool_last = pool_top;
    *(uint64_t *)pool_top = need;
    *buffer = pool_top + 16;
    pool_top += need;
    return EFI_SUCCESS;
}

static EFIAPI EFI_STATUS free_pool(void *buffer)
{
    if (!buffer) return EFI_INVALID_PARAMETER; /* and no crash */
    uint8_t *b = (uint8_t *)buffer - 16;
    if (b == pool_last) { pool_top = pool_last; pool_last = 0; }
    return EFI_SUCCESS;
}

/* ---- protocols and handles ------------------------------------------------------------------ */
static EFIAPI EFI_STATUS handle_protocol(EFI_HANDLE handle, EFI_GUID *guid, void **iface)
{
    if (!handle || !guid || !iface) return EFI_INVALID_PARAMETER;
    if (handle == g_image_handle && guid_eq(guid, &g_loaded_image)) { *iface = &loaded_image; return EFI_SUCCESS; }
    if (handle == initrd_handle && initrd_size && guid_eq(guid, &g_load_file2)) { *iface = &initrd_lf2; return EFI_SUCCESS; }
    if (handle == initrd_handle && initrd_size && guid_eq(guid, &g_device_path)) { *iface = &initrd_path; return EFI_SUCCESS; }
    return EFI_UNSUPPORTED;
}

static EFIAPI EFI_STATUS open_protocol(EFI_HANDLE handle, EFI_GUID *guid, void **iface,
                                       EFI_HANDLE agent, EFI_HANDLE controller, uint32_t attrs)
{
    (void)agent, (void)controller;
    void *found;
    EFI_STATUS s = handle_protocol(handle, guid, &found);
    if (s == EFI_SUCCESS && iface && attrs != 0x04 /* TEST_PROTOCOL */) *iface = found;
    return s;
}

static EFIAPI EFI_STATUS close_protocol(EFI_HANDLE h, EFI_GUID *g, EFI_HANDLE a, EFI_HANDLE c)
{
    (void)h, (void)g, (void)a, (void)c;
    return EFI_SUCCESS;
}

static EFIAPI EFI_STATUS locate_handle(uint32_t type, EFI_GUID *guid, void *key, uint64_t *size, EFI_HANDLE *buf)
{
    (void)type, (void)guid, (void)key, (void)size, (void)buf;
    return EFI_NOT_FOUND;
}

static EFIAPI EFI_STATUS locate_handle_buffer(uint32_t type, EFI_GUID *guid, void *key, uint64_t *n, EFI_HANDLE **buf)
{
    (void)type, (void)guid, (void)key;
    if (n) *n = 0;
    if (buf) *buf = 0;
    return EFI_NOT_FOUND;
}

static EFIAPI EFI_STATUS locate_protocol(EFI_GUID *guid, void *reg, void **iface)
{
    (void)guid, (void)reg;
    if (iface) *iface = 0;
    return EFI_NOT_FOUND;
}

/* Only the Linux initrd media path has a handle: the initrd, through LoadFile2. */
static EFIAPI EFI_STATUS locate_device_path(EFI_GUID *guid, EFI_DEVICE_PATH **path, EFI_HANDLE *device)
{
    if (!guid || !path || !*path || !device) return EFI_INVALID_PARAMETER;
    if (!initrd_size || !guid_eq(guid, &g_load_file2)) return EFI_NOT_FOUND;
    const uint8_t *p = (const uint8_t *)*path;
    if (p[0] != 4 || p[1] != 3 || p[2] != 20 || p[3] != 0 || memcmp(p + 4, &initrd_path.guid, 16))
        return EFI_NOT_FOUND;
    *path = (EFI_DEVICE_PATH *)(p + 20);
    *device = initrd_handle;
    return EFI_SUCCESS;
}

static EFIAPI EFI_STATUS initrd_load(EFI_LOAD_FILE2_PROTOCOL *self, EFI_DEVICE_PATH *path,
                                     uint8_t boot_policy, uint64_t *size, void *buffer)
{
    (void)path;
    if (self != &initrd_lf2 || !size) return EFI_INVALID_PARAMETER;
    if (boot_policy) return EFI_UNSUPPORTED;
    if (!buffer || *size < initrd_size) {
        *size = initrd_size;
        return EFI_BUFFER_TOO_SMALL;
    }
    if (fwcfg_read(initrd_select, buffer, initrd_size)) return EFI_DEVICE_ERROR;
    *size = initrd_size;
    printf("efird-shim: initrd (%u bytes) loaded through LoadFile2 at %p\n", initrd_size, buffer);
    return EFI_SUCCESS;
}

static EFIAPI EFI_STATUS install_configuration_table(EFI_GUID *guid, void *table)
{
    if (!guid) return EFI_INVALID_PARAMETER;
    uint64_t n = systab->NumberOfTableEntries;
    for (uint64_t i = 0; i < n; i++) {
        if (!guid_eq(&rt_config[i].VendorGuid, guid)) continue;
        if (table) {
            rt_config[i].VendorTable = table;
        } else {
            memmove(&rt_config[i], &rt_config[i + 1], (n - i - 1) * sizeof(rt_config[0]));
            systab->NumberOfTableEntries = n - 1;
        }
        rt_table_crc(&systab->Hdr, sizeof(*systab));
        return EFI_SUCCESS;
    }
    if (!table) return EFI_NOT_FOUND;
    if (n >= RT_MAX_CONFIG_TABLES) return EFI_OUT_OF_RESOURCES;
    rt_config[n] = (EFI_CONFIGURATION_TABLE){ *guid, table };
    systab->NumberOfTableEntries = n + 1;
    rt_table_crc(&systab->Hdr, sizeof(*systab));
    return EFI_SUCCESS;
}

/* Exit: the image gave up. efird records it and tells the toolstack; the shim stops. */
static EFIAPI EFI_STATUS bs_exit(EFI_HANDLE image, EFI_STATUS status, uint64_t size, CHAR16 *data)
{
    (void)image;
    uint64_t n = data ? size : 0;
    if (n > RT_BUFFER_SIZE - DATA_AT - sizeof(EFIRD_EXIT)) n = 0;
    EFIRD_EXIT e = { status, n };
    memcpy(rt_buffer + DATA_AT, &e, sizeof(e));
    if (n) memcpy(rt_buffer + DATA_AT + sizeof(e), data, n);
    rt_service(&g_mem, EFIRD_BOOTMEM_EXIT, sizeof(e) + n, 0);
    printf("efird-shim: the kernel image exited with status 0x%lx", status);
    if (n) {
        printf(": ");
        for (uint64_t i = 0; i + 1 < n / 2 && data[i]; i++) putc_serial((char)(data[i] < 0x80 ? data[i] : '?'));
    }
    panic("boot failed (reported to efird)");
}

/* ---- trivial services --------------------------------------------------------------------- */
static EFIAPI uint64_t raise_tpl(uint64_t tpl) { (void)tpl; return 4; /* TPL_APPLICATION */ }
static EFIAPI void restore_tpl(uint64_t tpl) { (void)tpl; }
static EFIAPI EFI_STATUS get_next_monotonic_count(uint64_t *c)
{
    if (!c) return EFI_INVALID_PARAMETER;
    *c = ++monotonic;
    return EFI_SUCCESS;
}
static EFIAPI EFI_STATUS stall(uint64_t us)
{
    uint64_t t0 = rdtsc(), n = g_tsc_per_ms * us / 1000;
    while (rdtsc() - t0 < n) cpu_relax();
    return EFI_SUCCESS;
}
static EFIAPI EFI_STATUS set_watchdog_timer(uint64_t t, uint64_t c, uint64_t n, CHAR16 *d)
{
    (void)t, (void)c, (void)n, (void)d;
    return EFI_SUCCESS;
}
static EFIAPI EFI_STATUS calculate_crc32(void *data, uint64_t size, uint32_t *crc)
{
    if (!data || !size || !crc) return EFI_INVALID_PARAMETER;
    *crc = rt_crc32(data, size);
    return EFI_SUCCESS;
}
static EFIAPI void copy_mem(void *d, void *s, uint64_t n) { memmove(d, s, n); }
static EFIAPI void set_mem(void *d, uint64_t n, uint8_t v) { memset(d, v, n); }
static EFIAPI EFI_STATUS unsupported(void) { return EFI_UNSUPPORTED; }

/* ---- console: ConOut on COM1, ConIn never has a key ----------------------------------------- */
static EFIAPI EFI_STATUS con_reset(void *self, uint8_t ext) { (void)self, (void)ext; return EFI_SUCCESS; }
static EFIAPI EFI_STATUS con_output(void *self, CHAR16 *s)
{
    (void)self;
    for (; s && *s; s++) {
        if (*s == '\r') continue; /* putc_serial adds it before '\n' */
        putc_serial(*s < 0x80 ? (char)*s : '?');
    }
    return EFI_SUCCESS;
}
static EFIAPI EFI_STATUS con_test(void *self, CHAR16 *s) { (void)self, (void)s; return EFI_SUCCESS; }
static EFIAPI EFI_STATUS con_query_mode(void *self, uint64_t mode, uint64_t *cols, uint64_t *rows)
{
    (void)self;
    if (mode != 0) return EFI_UNSUPPORTED;
    if (cols) *cols = 80;
    if (rows) *rows = 25;
    return EFI_SUCCESS;
}
static EFIAPI EFI_STATUS con_set_mode(void *self, uint64_t mode) { (void)self; return mode ? EFI_UNSUPPORTED : EFI_SUCCESS; }
static EFIAPI EFI_STATUS con_set_attr(void *self, uint64_t a) { (void)self; con_mode.Attribute = (int32_t)a; return EFI_SUCCESS; }
static EFIAPI EFI_STATUS con_clear(void *self) { (void)self; return EFI_SUCCESS; }
static EFIAPI EFI_STATUS con_cursor(void *self, uint64_t c, uint64_t r) { (void)self, (void)c, (void)r; return EFI_SUCCESS; }
static EFIAPI EFI_STATUS con_enable_cursor(void *self, uint8_t v) { (void)self, (void)v; return EFI_SUCCESS; }
static EFIAPI EFI_STATUS con_read_key(void *self, void *key) { (void)self, (void)key; return EFI_NOT_READY; }

void bs_init(EFI_SYSTEM_TABLE *st, const CHAR16 *options, uint32_t options_size,
             struct boot_image *img, uint16_t select, uint32_t size)
{
    systab = st;
    initrd_select = select;
    initrd_size = size;
    uint64_t pool = 0;
    if (bs_allocate_pages(AllocateAnyPages, EfiBootServicesData, POOL_PAGES, &pool) != EFI_SUCCESS)
        panic("no memory for the boot-services pool");
    pool_top = (uint8_t *)(uintptr_t)pool;
    pool_end = pool_top + POOL_PAGES * PAGE_SIZE;

    bs.Hdr = (EFI_TABLE_HEADER){ EFI_BOOT_SERVICES_SIGNATURE, EFI_REVISION_2_70, sizeof(bs), 0, 0 };
    for (int i = 0; i < BS_COUNT; i++) bs.Slot[i] = (void *)unsupported;
    bs.Slot[BS_RAISE_TPL] = (void *)raise_tpl;
    bs.Slot[BS_RESTORE_TPL] = (void *)restore_tpl;
    bs.Slot[BS_ALLOCATE_PAGES] = (void *)allocate_pages;
    bs.Slot[BS_FREE_PAGES] = (void *)free_pages;
    bs.Slot[BS_GET_MEMORY_MAP] = (void *)bs_get_memory_map;
    bs.Slot[BS_ALLOCATE_POOL] = (void *)allocate_pool;
    bs.Slot[BS_FREE_POOL] = (void *)free_pool;
    bs.Slot[BS_HANDLE_PROTOCOL] = (void *)handle_protocol;
    bs.Slot[BS_LOCATE_HANDLE] = (void *)locate_handle;
    bs.Slot[BS_LOCATE_DEVICE_PATH] = (void *)locate_device_path;
    bs.Slot[BS_INSTALL_CONFIGURATION_TABLE] = (void *)install_configuration_table;
    bs.Slot[BS_EXIT] = (void *)bs_exit;
    bs.Slot[BS_EXIT_BOOT_SERVICES] = (void *)exit_boot_services;
    bs.Slot[BS_GET_NEXT_MONOTONIC_COUNT] = (void *)get_next_monotonic_count;
    bs.Slot[BS_STALL] = (void *)stall;
    bs.Slot[BS_SET_WATCHDOG_TIMER] = (void *)set_watchdog_timer;
    bs.Slot[BS_OPEN_PROTOCOL] = (void *)open_protocol;
    bs.Slot[BS_CLOSE_PROTOCOL] = (void *)close_protocol;
    bs.Slot[BS_LOCATE_HANDLE_BUFFER] = (void *)locate_handle_buffer;
    bs.Slot[BS_LOCATE_PROTOCOL] = (void *)locate_protocol;
    bs.Slot[BS_CALCULATE_CRC32] = (void *)calculate_crc32;
    bs.Slot[BS_COPY_MEM] = (void *)copy_mem;
    bs.Slot[BS_SET_MEM] = (void *)set_mem;
    rt_table_crc(&bs.Hdr, sizeof(bs));

    con_out = (EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL){ (void *)con_reset, (void *)con_output,
        (void *)con_test, (void *)con_query_mode, (void *)con_set_mode, (void *)con_set_attr,
        (void *)con_clear, (void *)con_cursor, (void *)con_enable_cursor, &con_mode };
    con_in = (EFI_SIMPLE_TEXT_INPUT_PROTOCOL){ (void *)con_reset, (void *)con_read_key, 0 };
    initrd_lf2.LoadFile = (void *)initrd_load;

    st->ConsoleInHandle = st->ConsoleOutHandle = st->StandardErrorHandle = &console_handle_obj;
    st->ConIn = &con_in;
    st->ConOut = st->StdErr = &con_out;
    st->BootServices = &bs;

    loaded_image = (EFI_LOADED_IMAGE_PROTOCOL){ 0x1000, 0, st, 0, 0, 0, options_size,
        (void *)options, img->base, img->size, EfiLoaderCode, EfiLoaderData, 0 };
}
