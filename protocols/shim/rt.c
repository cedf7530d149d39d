/*
 * The shim's runtime region: the virtio transport to efird and the EFI runtime services.
 *
 * Everything here, code and data, is linked into one page-aligned range that the memory
 * map reports as EfiRuntimeServicesCode. The file is compiled position-independent and
 * reaches its data RIP-relative, so when the OS moves the region with
 * SetVirtualAddressMap, code and data move together and keep working; the only absolute
 * addresses are the table pointers the OS reads (fixed up in rt_set_virtual_address_map)
 * and the guest-physical addresses in the virtqueue (computed with rt.delta).
 *
 * One request is in flight at a time (the OS serialises runtime calls); completion is
 * polled, so no interrupt is needed and the code runs with interrupts in any state.
 */
#include "shim.h"

/* ---- the region's data ----------------------------------------------------------------- */
uint8_t rt_buffer[RT_BUFFER_SIZE] __attribute__((aligned(4096)));
EFI_SYSTEM_TABLE rt_systab;
EFI_RUNTIME_SERVICES rt_runtime;
EFI_CONFIGURATION_TABLE rt_config[RT_MAX_CONFIG_TABLES];
CHAR16 rt_vendor[] = u"efird";
EFI_RT_PROPERTIES_TABLE rt_properties;

#define QMAX 8
struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vring_used_elem { uint32_t id, len; };
struct rings {
    struct vring_desc desc[QMAX];                            /* 128 bytes */
    struct { uint16_t flags, idx, ring[QMAX], event; } avail; /* 22 bytes */
    uint8_t pad[4096 - 128 - 22];
    struct { uint16_t flags, idx; struct vring_used_elem ring[QMAX]; uint16_t event; } used;
};
static struct rings ring __attribute__((aligned(4096)));

static struct {
    uint64_t delta;           /* virtual - physical for this region (0 until SVAM) */
    uint8_t *bar;             /* the device's BAR as this code sees it */
    struct rt_device dev;
    uint64_t tsc_per_ms;
    uint16_t qsize, last_used, avail_idx;
    int ready;                /* the device is configured and DRIVER_OK */
    uint16_t pm1a_cnt, slp_typ;
    uint64_t calls;
} rt;

#define VQ_DESC_F_NEXT 1
#define VQ_DESC_F_WRITE 2
#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 64
#define ST_FAILED 128
#define RUNNING (ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK)

/* virtio 1.x common configuration (virtio_pci_common_cfg) offsets */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_GFSELECT 0x08
#define CC_GF 0x0c
#define CC_MSIX 0x10
#define CC_STATUS 0x14
#define CC_Q_SELECT 0x16
#define CC_Q_SIZE 0x18
#define CC_Q_MSIX 0x1a
#define CC_Q_ENABLE 0x1c
#define CC_Q_NOFF 0x1e
#define CC_Q_DESC 0x20
#define CC_Q_AVAIL 0x28
#define CC_Q_USED 0x30

/* ---- small library (the compiler may call these; they must live in this region) ---------- */
void *memcpy(void *d, const void *s, size_t n)
{
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return d;
}
void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    if (dp <= sp || dp >= sp + n) {
        while (n--) *dp++ = *sp++;
    } else {
        while (n--) dp[n] = sp[n];
    }
    return d;
}
void *memset(void *d, int c, size_t n)
{
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}
int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x - *y;
    return 0;
}

uint32_t rt_crc32(const void *data, uint64_t len)
{
    const uint8_t *p = data;
    uint32_t crc = 0xffffffffu;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1));
    }
    return ~crc;
}

void rt_table_crc(EFI_TABLE_HEADER *hdr, uint32_t size)
{
    hdr->CRC32 = 0;
    hdr->CRC32 = rt_crc32(hdr, size);
}

/* ---- MMIO and PCI ---------------------------------------------------------------------- */
static inline uint8_t cc_r8(uint32_t o) { return *(volatile uint8_t *)(rt.bar + rt.dev.common_off + o); }
static inline uint16_t cc_r16(uint32_t o) { return *(volatile uint16_t *)(rt.bar + rt.dev.common_off + o); }
static inline uint32_t cc_r32(uint32_t o) { return *(volatile uint32_t *)(rt.bar + rt.dev.common_off + o); }
static inline void cc_w8(uint32_t o, uint8_t v) { *(volatile uint8_t *)(rt.bar + rt.dev.common_off + o) = v; }
static inline void cc_w16(uint32_t o, uint16_t v) { *(volatile uint16_t *)(rt.bar + rt.dev.common_off + o) = v; }
static inline void cc_w32(uint32_t o, uint32_t v) { *(volatile uint32_t *)(rt.bar + rt.dev.common_off + o) = v; }
static inline void cc_w64(uint32_t o, uint64_t v) { cc_w32(o, (uint32_t)v); cc_w32(o + 4, (uint32_t)(v >> 32)); }

static uint64_t phys(const void *p) { return (uint64_t)(uintptr_t)p - rt.delta; }

/* Memory space and bus mastering on. An OS that shuts the device down (Linux clears bus
 * mastering on every PCI device before kexec) stops the queue; the next call finds the
 * device not running and configures it again from here. */
static void pci_enable(void)
{
    outl(0xcf8, rt.dev.pci_addr | 0x04);
    uint16_t cmd = inw(0xcfc);
    if ((cmd & 0x6) != 0x6) {
        outl(0xcf8, rt.dev.pci_addr | 0x04);
        outw(0xcfc, cmd | 0x6);
    }
}

static int wait_status(uint8_t want, uint8_t mask)
{
    uint64_t t0 = rdtsc();
    while ((cc_r8(CC_STATUS) & mask) != want) {
        if (rdtsc() - t0 > rt.tsc_per_ms * 1000) return -1;
        cpu_relax();
    }
    return 0;
}

enum { E_RESET = -1, E_VERSION = -2, E_FEATURES = -3, E_QUEUE = -4, E_TIMEOUT = -5,
       E_REFUSED = -6, E_NODEV = -7, E_BROKEN = -8 };

const char *rt_device_error(int reason)
{
    switch (reason) {
    case E_RESET: return "the device did not reset";
    case E_VERSION: return "the device does not offer VIRTIO_F_VERSION_1";
    case E_FEATURES: return "the device refused FEATURES_OK";
    case E_QUEUE: return "queue 0 is missing or already enabled";
    case E_TIMEOUT: return "efird did not answer in time";
    case E_REFUSED: return "efird refused the request (used length 0)";
    case E_NODEV: return "no device";
    case E_BROKEN: return "the device reports NEEDS_RESET or FAILED";
    }
    return "unknown";
}

static int device_start(void)
{
    rt.ready = 0;
    pci_enable();
    cc_w8(CC_STATUS, 0);
    if (wait_status(0, 0xff)) return E_RESET;
    cc_w8(CC_STATUS, ST_ACK);
    cc_w8(CC_STATUS, ST_ACK | ST_DRIVER);
    cc_w32(CC_DFSELECT, 1);
    if (!(cc_r32(CC_DF) & 1)) return E_VERSION; /* VIRTIO_F_VERSION_1 is bit 32 */
    cc_w32(CC_GFSELECT, 0);
    cc_w32(CC_GF, 0);
    cc_w32(CC_GFSELECT, 1);
    cc_w32(CC_GF, 1);
    cc_w8(CC_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
    if (!(cc_r8(CC_STATUS) & ST_FEATURES_OK)) return E_FEATURES;
    cc_w16(CC_MSIX, 0xffff);
    cc_w16(CC_Q_SELECT, 0);
    uint16_t size = cc_r16(CC_Q_SIZE);
    if (size == 0 || cc_r16(CC_Q_ENABLE)) return E_QUEUE;
    if (size > QMAX) size = QMAX;
    cc_w16(CC_Q_SIZE, size);
    rt.qsize = size;
    memset(&ring, 0, sizeof(ring));
    rt.last_used = rt.avail_idx = 0;
    cc_w16(CC_Q_MSIX, 0xffff);
    cc_w64(CC_Q_DESC, phys(ring.desc));
    cc_w64(CC_Q_AVAIL, phys(&ring.avail));
    cc_w64(CC_Q_USED, phys(&ring.used));
    cc_w16(CC_Q_ENABLE, 1);
    cc_w8(CC_STATUS, RUNNING);
    rt.ready = 1;
    return 0;
}

int rt_device_init(const struct rt_device *dev, uint64_t tsc_per_ms)
{
    rt.dev = *dev;
    rt.bar = (uint8_t *)(uintptr_t)dev->bar_phys;
    rt.tsc_per_ms = tsc_per_ms;
    return device_start();
}

static int ensure_running(void)
{
    if (rt.ready && cc_r8(CC_STATUS) == RUNNING) return 0;
    return device_start();
}

/* One chain: `addr`/`len` readable, then the same range writable; avail->idx moves by
 * 1 + skip (skip is only ever non-zero in the torture test). */
static void publish(uint64_t addr, uint32_t len, uint16_t skip)
{
    uint16_t head = (uint16_t)((rt.avail_idx * 2) % rt.qsize);
    uint16_t second = (uint16_t)((head + 1) % rt.qsize);
    ring.desc[head] = (struct vring_desc){ addr, len, VQ_DESC_F_NEXT, second };
    ring.desc[second] = (struct vring_desc){ addr, len, VQ_DESC_F_WRITE, 0 };
    ring.avail.ring[rt.avail_idx % rt.qsize] = head;
    mb();
    rt.avail_idx = (uint16_t)(rt.avail_idx + 1 + skip);
    ring.avail.idx = rt.avail_idx;
    mb();
    cc_w16(CC_Q_SELECT, 0);
    *(volatile uint16_t *)(rt.bar + rt.dev.notify_off +
                           (uint32_t)cc_r16(CC_Q_NOFF) * rt.dev.notify_mult) = 0;
}

static int wait_used(uint64_t ms, uint32_t *used_len)
{
    uint64_t t0 = rdtsc(), limit = rt.tsc_per_ms * ms;
    while (*(volatile uint16_t *)&ring.used.idx == rt.last_used) {
        if (rdtsc() - t0 > limit) {
            rt.ready = 0; /* the request may still land: reset before the next one */
            return E_TIMEOUT;
        }
        cpu_relax();
    }
    mb();
    *used_len = ring.used.ring[rt.last_used % rt.qsize].len;
    rt.last_used++;
    if (cc_r8(CC_STATUS) & (ST_NEEDS_RESET | ST_FAILED)) rt.ready = 0;
    return 0;
}

static int transact(uint32_t len, uint32_t *used_len)
{
    int r = ensure_running();
    if (r) return r;
    publish(phys(rt_buffer), len, 0);
    return wait_used(10000, used_len);
}

/* For the shim's torture test only: publish one chain the way a buggy or hostile guest
 * might — any buffer address and length, and avail->idx advanced by 1 + `skip`. Waits up
 * to `ms` for the used ring; then the device counts as needing a reset (the next request
 * configures it again). Returns 0 and the used length, or a negative reason. */
int rt_send_raw(uint64_t addr, uint32_t len, uint16_t skip, uint32_t ms, uint32_t *used_len)
{
    int r = ensure_running();
    if (r) return r;
    publish(addr, len, skip);
    r = wait_used(ms, used_len);
    if (skip) rt.ready = 0; /* the ring indices no longer agree: start afresh */
    return r;
}

EFI_STATUS rt_service(const EFI_GUID *guid, uint64_t function, uint64_t data_len,
                      int *transport)
{
    uint64_t msg = 16 + data_len, total = 24 + msg;
    if (total > RT_BUFFER_SIZE) return EFI_BAD_BUFFER_SIZE;
    memcpy(rt_buffer, guid, 16);
    memcpy(rt_buffer + 16, &msg, 8);
    memcpy(rt_buffer + 24, &function, 8);
    memset(rt_buffer + 32, 0xff, 8); /* ReturnStatus: efird always writes it */
    uint32_t used = 0;
    int r = transact((uint32_t)total, &used);
    rt.calls++;
    if (transport) *transport = r ? r : (used ? 0 : E_REFUSED);
    if (r) return r == E_TIMEOUT ? EFI_TIMEOUT : EFI_DEVICE_ERROR;
    if (used == 0) return EFI_DEVICE_ERROR;
    uint64_t status;
    memcpy(&status, rt_buffer + 32, 8);
    return status;
}

uint64_t rt_call_count(void) { return rt.calls; }

EFI_STATUS rt_call(const EFI_GUID *guid, uint64_t function, void *data, uint64_t size)
{
    memcpy(rt_buffer + DATA_AT, data, size);
    EFI_STATUS s = rt_service(guid, function, size, 0);
    memcpy(data, rt_buffer + DATA_AT, size);
    return s;
}

/* ---- power ----------------------------------------------------------------------------- */
void rt_set_power(uint16_t pm1a_cnt, uint16_t slp_typ_s5)
{
    rt.pm1a_cnt = pm1a_cnt;
    rt.slp_typ = slp_typ_s5;
}

void rt_power_off(void)
{
    if (rt.pm1a_cnt) outw(rt.pm1a_cnt, (uint16_t)((rt.slp_typ << 10) | (1u << 13)));
    for (;;) __asm__ volatile("cli; hlt");
}

static void hard_reset(void)
{
    outb(0xcf9, 0x02);
    outb(0xcf9, 0x06);
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("cli; hlt");
}

/* ---- runtime services ------------------------------------------------------------------- */
static const EFI_GUID g_var = EFIRD_SMM_VARIABLE_PROTOCOL_GUID;
static const EFI_GUID g_time = EFIRD_TIME_SERVICE_GUID;
static const EFI_GUID g_reset = EFIRD_RESET_SERVICE_GUID;
static const EFI_GUID g_mem = EFIRD_BOOTMEM_SERVICE_GUID;

static uint64_t name_size(const CHAR16 *name, uint64_t limit)
{
    uint64_t n = 0;
    while (n * 2 + 2 <= limit && name[n]) n++;
    return n * 2 + 2 <= limit ? n * 2 + 2 : 0;
}

#define VAR_ROOM (RT_BUFFER_SIZE - DATA_AT - 36)

static EFIAPI EFI_STATUS get_variable(CHAR16 *name, EFI_GUID *guid, uint32_t *attributes,
                                      uint64_t *data_size, void *data)
{
    if (!name || !guid || !data_size || (*data_size && !data)) return EFI_INVALID_PARAMETER;
    uint64_t ns = name_size(name, VAR_ROOM);
    if (ns == 0 || ns == 2) return ns ? EFI_NOT_FOUND : EFI_INVALID_PARAMETER;
    uint64_t ds = *data_size;
    if (ds > VAR_ROOM - ns) ds = VAR_ROOM - ns;
    uint8_t *p = rt_buffer + DATA_AT;
    SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE hdr = { *guid, ds, ns, 0 };
    memcpy(p, &hdr, 36);
    memcpy(p + 36, name, ns);
    EFI_STATUS s = rt_service(&g_var, SMM_VARIABLE_FUNCTION_GET_VARIABLE, 36 + ns + ds, 0);
    if (s == EFI_SUCCESS || s == EFI_BUFFER_TOO_SMALL) {
        memcpy(&hdr, p, 36);
        if (s == EFI_SUCCESS) {
            if (hdr.DataSize > *data_size) return EFI_DEVICE_ERROR;
            memcpy(data, p + 36 + ns, hdr.DataSize);
        }
        *data_size = hdr.DataSize;
        if (attributes) *attributes = hdr.Attributes;
    }
    return s;
}

static EFIAPI EFI_STATUS get_next_variable_name(uint64_t *name_size_io, CHAR16 *name,
                                                EFI_GUID *guid)
{
    if (!name_size_io || !name || !guid) return EFI_INVALID_PARAMETER;
    uint64_t in = name_size(name, *name_size_io);
    if (in == 0) return EFI_INVALID_PARAMETER; /* no NUL within *VariableNameSize */
    uint64_t room = RT_BUFFER_SIZE - DATA_AT - 24;
    uint64_t out = *name_size_io < in ? in : *name_size_io;
    if (out > room) out = room;
    if (out & 1) out--;
    uint8_t *p = rt_buffer + DATA_AT;
    memcpy(p, guid, 16);
    memcpy(p + 16, &out, 8);
    memset(p + 24, 0, out);
    memcpy(p + 24, name, in);
    EFI_STATUS s = rt_service(&g_var, SMM_VARIABLE_FUNCTION_GET_NEXT_VARIABLE_NAME, 24 + out, 0);
    if (s == EFI_SUCCESS || s == EFI_BUFFER_TOO_SMALL) {
        uint64_t got;
        memcpy(&got, p + 16, 8);
        if (s == EFI_SUCCESS) {
            if (got > *name_size_io || got > out) return EFI_DEVICE_ERROR;
            memcpy(guid, p, 16);
            memcpy(name, p + 24, got);
        }
        *name_size_io = got;
    }
    return s;
}

static EFIAPI EFI_STATUS set_variable(CHAR16 *name, EFI_GUID *guid, uint32_t attributes,
                                      uint64_t data_size, void *data)
{
    if (!name || !guid || (data_size && !data)) return EFI_INVALID_PARAMETER;
    uint64_t ns = name_size(name, VAR_ROOM);
    if (ns <= 2) return EFI_INVALID_PARAMETER;
    if (data_size > VAR_ROOM - ns) return EFI_INVALID_PARAMETER;
    uint8_t *p = rt_buffer + DATA_AT;
    SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE hdr = { *guid, data_size, ns, attributes };
    memcpy(p, &hdr, 36);
    memcpy(p + 36, name, ns);
    memcpy(p + 36 + ns, data, data_size);
    return rt_service(&g_var, SMM_VARIABLE_FUNCTION_SET_VARIABLE, 36 + ns + data_size, 0);
}

static EFIAPI EFI_STATUS query_variable_info(uint32_t attributes, uint64_t *max_storage,
                                             uint64_t *remaining, uint64_t *max_size)
{
    if (!max_storage || !remaining || !max_size) return EFI_INVALID_PARAMETER;
    SMM_VARIABLE_COMMUNICATE_QUERY_VARIABLE_INFO q = { 0, 0, 0, attributes };
    EFI_STATUS s = rt_call(&g_var, SMM_VARIABLE_FUNCTION_QUERY_VARIABLE_INFO, &q, sizeof(q));
    if (s == EFI_SUCCESS) {
        *max_storage = q.MaximumVariableStorageSize;
        *remaining = q.RemainingVariableStorageSize;
        *max_size = q.MaximumVariableSize;
    }
    return s;
}

static EFIAPI EFI_STATUS get_time(EFI_TIME *time, void *caps)
{
    if (!time) return EFI_INVALID_PARAMETER;
    EFIRD_TIME_ACCESS a;
    memset(&a, 0, sizeof(a));
    EFI_STATUS s = rt_call(&g_time, EFIRD_TIME_GET_TIME, &a, sizeof(a));
    if (s == EFI_SUCCESS) {
        *time = a.Time;
        if (caps) memcpy(caps, &a.Resolution, 9); /* EFI_TIME_CAPABILITIES */
    }
    return s;
}

static EFIAPI EFI_STATUS set_time(EFI_TIME *time)
{
    if (!time) return EFI_INVALID_PARAMETER;
    EFIRD_TIME_ACCESS a;
    memset(&a, 0, sizeof(a));
    a.Time = *time;
    return rt_call(&g_time, EFIRD_TIME_SET_TIME, &a, sizeof(a));
}

static EFIAPI EFI_STATUS get_wakeup_time(uint8_t *enabled, uint8_t *pending, EFI_TIME *time)
{
    if (!enabled || !pending || !time) return EFI_INVALID_PARAMETER;
    EFIRD_WAKEUP_ACCESS w;
    memset(&w, 0, sizeof(w));
    EFI_STATUS s = rt_call(&g_time, EFIRD_TIME_GET_WAKEUP_TIME, &w, sizeof(w));
    if (s == EFI_SUCCESS) {
        *enabled = w.Enabled;
        *pending = w.Pending;
        *time = w.Time;
    }
    return s;
}

static EFIAPI EFI_STATUS set_wakeup_time(uint8_t enable, EFI_TIME *time)
{
    if (enable && !time) return EFI_INVALID_PARAMETER;
    EFIRD_WAKEUP_ACCESS w;
    memset(&w, 0, sizeof(w));
    w.Enabled = enable;
    if (time) w.Time = *time;
    return rt_call(&g_time, EFIRD_TIME_SET_WAKEUP_TIME, &w, sizeof(w));
}

static EFIAPI EFI_STATUS get_next_high_monotonic_count(uint32_t *high)
{
    if (!high) return EFI_INVALID_PARAMETER;
    EFIRD_MONOTONIC_COUNT c = { 0, 0 };
    EFI_STATUS s = rt_call(&g_time, EFIRD_TIME_GET_NEXT_HIGH_MONOTONIC_COUNT, &c, sizeof(c));
    if (s == EFI_SUCCESS) {
        *high = c.HighCount;
    }
    return s;
}

static EFIAPI void reset_system(uint32_t type, EFI_STATUS status, uint64_t size, void *data)
{
    EFIRD_RESET_SYSTEM r = { type, 0, status, data ? size : 0 };
    if (r.DataSize > RT_BUFFER_SIZE - DATA_AT - sizeof(r)) r.DataSize = 0;
    memcpy(rt_buffer + DATA_AT, &r, sizeof(r));
    if (r.DataSize) memcpy(rt_buffer + DATA_AT + sizeof(r), data, r.DataSize);
    rt_service(&g_reset, EFIRD_RESET_RESET_SYSTEM, sizeof(r) + r.DataSize, 0);
    /* efird has recorded it and told the toolstack; the shim performs it. */
    if (type == 2) rt_power_off();
    hard_reset();
}

static EFIAPI EFI_STATUS update_capsule(void *a, uint64_t b, uint64_t c)
{
    (void)a, (void)b, (void)c;
    return EFI_UNSUPPORTED;
}

static EFIAPI EFI_STATUS query_capsule_capabilities(void *a, uint64_t b, uint64_t *c, uint32_t *d)
{
    (void)a, (void)b, (void)c, (void)d;
    return EFI_UNSUPPORTED;
}

static EFIAPI EFI_STATUS convert_pointer(uint64_t disposition, void **address)
{
    if (!address) return EFI_INVALID_PARAMETER;
    EFIRD_CONVERT_POINTER c = { disposition, (uint64_t)(uintptr_t)*address };
    EFI_STATUS s = rt_call(&g_mem, EFIRD_BOOTMEM_CONVERT_POINTER, &c, sizeof(c));
    if (s == EFI_SUCCESS) {
        *address = (void *)(uintptr_t)c.Address;
    }
    return s;
}

/* Runs in physical mode (the OS calls it through the identity mapping), once. efird
 * checks the map against its own; then the region's pointers move to their new home. */
static EFIAPI EFI_STATUS set_virtual_address_map(uint64_t map_size, uint64_t desc_size,
                                                 uint32_t version, EFI_MEMORY_DESCRIPTOR_T *map)
{
    if (!map || desc_size < sizeof(EFI_MEMORY_DESCRIPTOR_T) || map_size % desc_size)
        return EFI_INVALID_PARAMETER;
    EFIRD_SET_VIRTUAL_ADDRESS_MAP h = { map_size, desc_size, version, 0 };
    if (map_size > RT_BUFFER_SIZE - DATA_AT - sizeof(h)) return EFI_OUT_OF_RESOURCES;
    memcpy(rt_buffer + DATA_AT, &h, sizeof(h));
    memcpy(rt_buffer + DATA_AT + sizeof(h), map, map_size);
    EFI_STATUS s = rt_service(&g_mem, EFIRD_BOOTMEM_SET_VIRTUAL_ADDRESS_MAP, sizeof(h) + map_size, 0);
    if (s != EFI_SUCCESS) return s;

    uint64_t region = (uint64_t)(uintptr_t)__rt_start - rt.delta;
    uint64_t new_delta = rt.delta, bar_virt = (uint64_t)(uintptr_t)rt.bar;
    for (uint64_t off = 0; off < map_size; off += desc_size) {
        EFI_MEMORY_DESCRIPTOR_T *d = (EFI_MEMORY_DESCRIPTOR_T *)((uint8_t *)map + off);
        uint64_t end = d->PhysicalStart + d->NumberOfPages * PAGE_SIZE;
        if (region >= d->PhysicalStart && region < end)
            new_delta = d->VirtualStart - d->PhysicalStart;
        if (rt.dev.bar_phys >= d->PhysicalStart && rt.dev.bar_phys < end)
            bar_virt = d->VirtualStart + (rt.dev.bar_phys - d->PhysicalStart);
    }
    uint64_t move = new_delta - rt.delta;
    for (int i = 0; i < RT_COUNT; i++)
        rt_runtime.Slot[i] = (uint8_t *)rt_runtime.Slot[i] + move;
    uint64_t lo = (uint64_t)(uintptr_t)__rt_start, hi = (uint64_t)(uintptr_t)__rt_end;
#define MOVE(p) do { uint64_t v_ = (uint64_t)(uintptr_t)(p); \
        if (v_ >= lo && v_ < hi) (p) = (void *)(uintptr_t)(v_ + move); } while (0)
    /* The configuration tables' VendorTable pointers stay physical: an OS reads them as
     * physical addresses, and a kexec'd kernel reads them again after this call. */
    MOVE(rt_systab.FirmwareVendor);
    MOVE(rt_systab.RuntimeServices);
    MOVE(rt_systab.ConfigurationTable);
#undef MOVE
    rt_table_crc(&rt_runtime.Hdr, sizeof(rt_runtime));
    rt_table_crc(&rt_systab.Hdr, sizeof(rt_systab));
    rt.bar = (uint8_t *)(uintptr_t)bar_virt;
    rt.delta = new_delta; /* last: from here on phys() uses the new layout */
    return EFI_SUCCESS;
}

void rt_setup_tables(void)
{
    rt_runtime.Hdr = (EFI_TABLE_HEADER){ EFI_RUNTIME_SERVICES_SIGNATURE, EFI_REVISION_2_70,
                                         sizeof(EFI_RUNTIME_SERVICES), 0, 0 };
    rt_runtime.Slot[RT_GET_TIME] = (void *)get_time;
    rt_runtime.Slot[RT_SET_TIME] = (void *)set_time;
    rt_runtime.Slot[RT_GET_WAKEUP_TIME] = (void *)get_wakeup_time;
    rt_runtime.Slot[RT_SET_WAKEUP_TIME] = (void *)set_wakeup_time;
    rt_runtime.Slot[RT_SET_VIRTUAL_ADDRESS_MAP] = (void *)set_virtual_address_map;
    rt_runtime.Slot[RT_CONVERT_POINTER] = (void *)convert_pointer;
    rt_runtime.Slot[RT_GET_VARIABLE] = (void *)get_variable;
    rt_runtime.Slot[RT_GET_NEXT_VARIABLE_NAME] = (void *)get_next_variable_name;
    rt_runtime.Slot[RT_SET_VARIABLE] = (void *)set_variable;
    rt_runtime.Slot[RT_GET_NEXT_HIGH_MONOTONIC_COUNT] = (void *)get_next_high_monotonic_count;
    rt_runtime.Slot[RT_RESET_SYSTEM] = (void *)reset_system;
    rt_runtime.Slot[RT_UPDATE_CAPSULE] = (void *)update_capsule;
    rt_runtime.Slot[RT_QUERY_CAPSULE_CAPABILITIES] = (void *)query_capsule_capabilities;
    rt_runtime.Slot[RT_QUERY_VARIABLE_INFO] = (void *)query_variable_info;
    rt_table_crc(&rt_runtime.Hdr, sizeof(rt_runtime));
    /* Honest: everything but the capsule services, which efird does not serve. */
    rt_properties = (EFI_RT_PROPERTIES_TABLE){ 1, sizeof(EFI_RT_PROPERTIES_TABLE),
        EFI_RT_SUPPORTED_GET_TIME | EFI_RT_SUPPORTED_SET_TIME |
        EFI_RT_SUPPORTED_GET_WAKEUP_TIME | EFI_RT_SUPPORTED_SET_WAKEUP_TIME |
        EFI_RT_SUPPORTED_GET_VARIABLE | EFI_RT_SUPPORTED_GET_NEXT_VARIABLE_NAME |
        EFI_RT_SUPPORTED_SET_VARIABLE | EFI_RT_SUPPORTED_SET_VIRTUAL_ADDRESS_MAP |
        EFI_RT_SUPPORTED_CONVERT_POINTER | EFI_RT_SUPPORTED_GET_NEXT_HIGH_MONOTONIC_COUNT |
        EFI_RT_SUPPORTED_RESET_SYSTEM | EFI_RT_SUPPORTED_QUERY_VARIABLE_INFO };
}
