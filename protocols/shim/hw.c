/*
 * The platform the shim finds at boot: the serial console, PCI configuration space,
 * QEMU's fw_cfg (DMA interface), ACPI (for power-off and the PM timer), SMBIOS, and an
 * IDT that reports CPU exceptions on the console instead of triple-faulting.
 */
#include <stdarg.h>

#include "shim.h"

/* ---- serial console (COM1) ------------------------------------------------------------ */
#define COM1 0x3f8

void serial_init(void)
{
    outb(COM1 + 1, 0x00);  /* no interrupts */
    outb(COM1 + 3, 0x80);  /* DLAB */
    outb(COM1 + 0, 0x01);  /* 115200 */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);  /* 8N1 */
    outb(COM1 + 2, 0xc7);  /* FIFO */
    outb(COM1 + 4, 0x03);
}

void putc_serial(char c)
{
    if (c == '\n') putc_serial('\r');
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) cpu_relax();
    outb(COM1, (uint8_t)c);
}

static void put_u(uint64_t v, unsigned base, int width, char pad)
{
    char buf[24];
    int n = 0;
    do {
        buf[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (n < width) buf[n++] = pad;
    while (n) putc_serial(buf[--n]);
}

static void vprintf_(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') { putc_serial(*fmt); continue; }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') { lng = 1; fmt++; }
        switch (*fmt) {
        case 's': { const char *s = va_arg(ap, const char *); while (s && *s) putc_serial(*s++); break; }
        case 'c': putc_serial((char)va_arg(ap, int)); break;
        case 'd': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            if (v < 0) { putc_serial('-'); v = -v; }
            put_u((uint64_t)v, 10, width, pad);
            break;
        }
        case 'u': put_u(lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad); break;
        case 'x': put_u(lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad); break;
        case 'p': putc_serial('0'); putc_serial('x'); put_u((uint64_t)(uintptr_t)va_arg(ap, void *), 16, 0, ' '); break;
        case '%': putc_serial('%'); break;
        default: putc_serial('?'); break;
        }
    }
}

void printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf_(fmt, ap);
    va_end(ap);
}

void panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("efird-shim: FATAL: ");
    vprintf_(fmt, ap);
    va_end(ap);
    printf("\nefird-shim: stopping (powering off)\n");
    rt_power_off();
}

/* ---- PCI configuration space (mechanism #1) -------------------------------------------- */
uint32_t pci_read32(uint32_t addr, uint8_t off)
{
    outl(0xcf8, addr | (off & 0xfc));
    return inl(0xcfc);
}

void pci_write16(uint32_t addr, uint8_t off, uint16_t v)
{
    outl(0xcf8, addr | (off & 0xfc));
    outw((uint16_t)(0xcfc + (off & 2)), v);
}

static void pci_write32(uint32_t addr, uint8_t off, uint32_t v)
{
    outl(0xcf8, addr | (off & 0xfc));
    outl(0xcfc, v);
}

static uint8_t pci_read8(uint32_t addr, uint8_t off)
{
    return (uint8_t)(pci_read32(addr, off) >> ((off & 3) * 8));
}

/* The BAR's address and size (sizing writes all-ones and restores it). */
static uint64_t bar_info(uint32_t addr, int bar, uint64_t *size)
{
    uint8_t off = (uint8_t)(0x10 + bar * 4);
    uint32_t lo = pci_read32(addr, off);
    if (lo & 1) { *size = 0; return 0; } /* I/O BAR */
    int is64 = ((lo >> 1) & 3) == 2;
    uint32_t hi = is64 ? pci_read32(addr, (uint8_t)(off + 4)) : 0;
    pci_write32(addr, off, 0xffffffffu);
    uint32_t slo = pci_read32(addr, off);
    pci_write32(addr, off, lo);
    uint64_t mask = slo & ~0xfull;
    if (is64) {
        pci_write32(addr, (uint8_t)(off + 4), 0xffffffffu);
        mask |= (uint64_t)pci_read32(addr, (uint8_t)(off + 4)) << 32;
        pci_write32(addr, (uint8_t)(off + 4), hi);
    } else {
        mask |= 0xffffffff00000000ull;
    }
    *size = ~mask + 1;
    return ((uint64_t)hi << 32) | (lo & ~0xfull);
}

/* efird's queue carrier: a modern virtio PCI device on bus 0 (vhost-user-rng-pci is
 * 1af4:1044). Any virtio-rng device would do, but only one carried by efird answers. */
int virtio_find(struct rt_device *dev)
{
    for (uint32_t slot = 0; slot < 32; slot++) {
        for (uint32_t fn = 0; fn < 8; fn++) {
            uint32_t addr = 0x80000000u | (slot << 11) | (fn << 8);
            uint32_t id = pci_read32(addr, 0);
            if ((id & 0xffff) == 0xffff) { if (fn == 0) break; continue; }
            if (id != 0x10441af4u) continue;
            if (!(pci_read32(addr, 0x04) & (1u << 20))) continue; /* no capability list */
            int bar = -1, have = 0;
            uint32_t common = 0, notify = 0, mult = 0;
            for (uint8_t cap = pci_read8(addr, 0x34) & 0xfc; cap; cap = pci_read8(addr, (uint8_t)(cap + 1)) & 0xfc) {
                if (pci_read8(addr, cap) != 0x09) continue; /* vendor-specific */
                uint8_t type = pci_read8(addr, (uint8_t)(cap + 3));
                uint8_t b = pci_read8(addr, (uint8_t)(cap + 4));
                uint32_t off = pci_read32(addr, (uint8_t)(cap + 8));
                if (type == 1 && !(have & 1)) { common = off; bar = b; have |= 1; }
                if (type == 2 && !(have & 2)) {
                    notify = off; mult = pci_read32(addr, (uint8_t)(cap + 16));
                    if (bar >= 0 && b != bar) return -2;
                    bar = b; have |= 2;
                }
            }
            if (have != 3 || bar > 5) return -2;
            uint64_t size;
            uint64_t base = bar_info(addr, bar, &size);
            if (!base || !size) return -3;
            pci_write16(addr, 0x04, (uint16_t)(pci_read32(addr, 0x04) | 0x6)); /* mem + master */
            *dev = (struct rt_device){ addr, base, size, common, notify, mult };
            return 0;
        }
    }
    return -1;
}

/* ---- QEMU fw_cfg ------------------------------------------------------------------------ */
#define FW_CFG_CTL 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_DMA 0x514

static uint32_t be32(uint32_t v) { return __builtin_bswap32(v); }

struct fw_dma { uint32_t control, length; uint64_t address; };
static volatile struct fw_dma dma __attribute__((aligned(16)));

static int fwcfg_dma(uint32_t control, void *buf, uint32_t len)
{
    dma.control = be32(control);
    dma.length = be32(len);
    dma.address = __builtin_bswap64((uint64_t)(uintptr_t)buf);
    mb();
    uint64_t a = (uint64_t)(uintptr_t)&dma;
    outl(FW_CFG_DMA, be32((uint32_t)(a >> 32)));
    outl(FW_CFG_DMA + 4, be32((uint32_t)a));
    while (be32(dma.control) & ~1u) cpu_relax();
    return (be32(dma.control) & 1) ? -1 : 0;
}

static int fwcfg_has_dma(void)
{
    static int known = -1;
    if (known >= 0) return known;
    outw(FW_CFG_CTL, 0);
    char sig[4];
    for (int i = 0; i < 4; i++) sig[i] = (char)inb(FW_CFG_DATA);
    if (memcmp(sig, "QEMU", 4)) return known = 0;
    outw(FW_CFG_CTL, 1);
    uint32_t features = 0;
    for (int i = 0; i < 4; i++) features |= (uint32_t)inb(FW_CFG_DATA) << (8 * i);
    return known = (features & 2) ? 1 : 0;
}

int fwcfg_read(uint16_t select, void *buf, uint32_t size)
{
    if (!fwcfg_has_dma()) return -1;
    return fwcfg_dma(((uint32_t)select << 16) | 0x08 | 0x02, buf, size);
}

int fwcfg_find(const char *name, uint16_t *select, uint32_t *size)
{
    if (!fwcfg_has_dma()) return -1;
    uint32_t count;
    if (fwcfg_read(0x19, &count, 4)) return -1;
    count = be32(count);
    for (uint32_t i = 0; i < count; i++) {
        struct { uint32_t size; uint16_t select, reserved; char name[56]; } f;
        if (fwcfg_dma(0x02, &f, sizeof(f))) return -1; /* continues where the last read stopped */
        size_t n = 0;
        while (name[n] && name[n] == f.name[n]) n++;
        if (!name[n] && !f.name[n]) {
            *select = __builtin_bswap16(f.select);
            *size = be32(f.size);
            return 0;
        }
    }
    return -1;
}

/* ---- ACPI: the tables to protect, the PM timer and S5 ------------------------------------ */
static void add_range(struct acpi_info *a, uint64_t start, uint64_t len)
{
    if (a->nranges >= 64 || !len) return;
    a->ranges[a->nranges][0] = start & ~(PAGE_SIZE - 1);
    a->ranges[a->nranges][1] = ALIGN_UP(start + len, PAGE_SIZE);
    a->nranges++;
}

static void scan_s5(const uint8_t *dsdt, uint32_t len, struct acpi_info *a)
{
    for (uint32_t i = 36; i + 8 < len; i++) {
        if (memcmp(dsdt + i, "_S5_", 4) || dsdt[i + 4] != 0x12) continue;
        const uint8_t *p = dsdt + i + 5;
        p += ((*p >> 6) & 3) + 1; /* PkgLength */
        p++;                      /* NumElements */
        if (*p == 0x0a) p++;      /* BytePrefix */
        else if (*p == 0x00 || *p == 0x01) { a->slp_typ_s5 = *p; return; }
        a->slp_typ_s5 = *p & 7;
        return;
    }
}

static void scan_table(uint64_t addr, struct acpi_info *a)
{
    const uint8_t *t = (const uint8_t *)(uintptr_t)addr;
    uint32_t len;
    memcpy(&len, t + 4, 4);
    add_range(a, addr, len);
    if (!memcmp(t, "FACP", 4)) {
        uint32_t facs, dsdt, pm1a, tmr;
        memcpy(&facs, t + 36, 4);
        memcpy(&dsdt, t + 40, 4);
        memcpy(&pm1a, t + 64, 4);
        memcpy(&tmr, t + 76, 4);
        a->pm1a_cnt = (uint16_t)pm1a;
        a->pm_tmr = (uint16_t)tmr;
        if (facs) add_range(a, facs, 64);
        if (dsdt) {
            uint32_t dlen;
            memcpy(&dlen, (const uint8_t *)(uintptr_t)dsdt + 4, 4);
            add_range(a, dsdt, dlen);
            scan_s5((const uint8_t *)(uintptr_t)dsdt, dlen, a);
        }
    }
}

void acpi_scan(uint64_t rsdp, struct acpi_info *a)
{
    memset(a, 0, sizeof(*a));
    a->rsdp = rsdp;
    if (!rsdp) return;
    const uint8_t *r = (const uint8_t *)(uintptr_t)rsdp;
    if (memcmp(r, "RSD PTR ", 8)) { a->rsdp = 0; return; }
    add_range(a, rsdp, r[15] >= 2 ? 36 : 20);
    uint64_t xsdt = 0;
    uint32_t rsdt;
    memcpy(&rsdt, r + 16, 4);
    if (r[15] >= 2) memcpy(&xsdt, r + 24, 8);
    uint64_t root = xsdt ? xsdt : rsdt;
    unsigned step = xsdt ? 8 : 4;
    if (!root) return;
    const uint8_t *t = (const uint8_t *)(uintptr_t)root;
    uint32_t len;
    memcpy(&len, t + 4, 4);
    add_range(a, root, len);
    for (uint32_t off = 36; off + step <= len; off += step) {
        uint64_t e = 0;
        memcpy(&e, t + off, step);
        if (e) scan_table(e, a);
    }
}

/* The TSC rate against the ACPI PM timer (3.579545 MHz), over ~10 ms. */
uint64_t g_tsc_per_ms;

uint64_t tsc_calibrate(uint16_t pm_tmr)
{
    if (!pm_tmr) return 1000000; /* assume 1 GHz; only timeouts depend on it */
    uint32_t t0 = inl(pm_tmr) & 0xffffff;
    uint64_t c0 = rdtsc();
    uint32_t elapsed;
    do {
        elapsed = ((inl(pm_tmr) & 0xffffff) - t0) & 0xffffff;
    } while (elapsed < 35795);
    uint64_t c1 = rdtsc();
    return (c1 - c0) * 3579545ull / ((uint64_t)elapsed * 1000ull);
}

/* The SMBIOS entry point in the BIOS area (SeaBIOS puts it at 0xf0000-0xfffff), 0 if
 * none; *table gets the structure table's address and length. */
uint64_t smbios_find(int *v3, uint64_t table[2])
{
    table[0] = table[1] = 0;
    for (uint64_t a = 0xf0000; a < 0x100000; a += 16) {
        const uint8_t *p = (const uint8_t *)(uintptr_t)a;
        *v3 = !memcmp(p, "_SM3_", 5);
        if (*v3) { /* 3.0: u32 maximum size at 12, u64 address at 16 */
            memcpy(&table[1], p + 12, 4);
            memcpy(&table[0], p + 16, 8);
            return a;
        }
        if (!memcmp(p, "_SM_", 4)) { /* 2.x: u16 length at 0x16, u32 address at 0x18 */
            memcpy(&table[1], p + 0x16, 2);
            memcpy(&table[0], p + 0x18, 4);
            return a;
        }
    }
    return 0;
}

/* ---- exceptions --------------------------------------------------------------------------- */
struct idt_entry { uint16_t off0, sel; uint8_t ist, type; uint16_t off1; uint32_t off2, zero; };
static struct idt_entry idt[32] __attribute__((aligned(16)));
extern const uint64_t exception_stubs[32];

void exception_report(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cs, uint64_t rsp);
void exception_report(uint64_t vector, uint64_t error, uint64_t rip, uint64_t cs, uint64_t rsp)
{
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    panic("CPU exception %lu (error 0x%lx) at rip=0x%lx cs=0x%lx rsp=0x%lx cr2=0x%lx",
          vector, error, rip, cs, rsp, cr2);
}

void idt_install(void)
{
    for (int i = 0; i < 32; i++) {
        uint64_t h = exception_stubs[i];
        idt[i] = (struct idt_entry){ (uint16_t)h, 0x10, 0, 0x8e, (uint16_t)(h >> 16),
                                     (uint32_t)(h >> 32), 0 };
    }
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) d = {
        sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" ::"m"(d));
}
