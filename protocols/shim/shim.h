/*
 * efird's PVH shim: shared declarations. The shim has two parts:
 *   boot  (boot.c, bs.c, hw.c, pe.c) — runs before ExitBootServices, identity-mapped,
 *         in EfiBootServicesCode/Data;
 *   rt    (rt.c) — the virtio transport and the runtime services, linked into one
 *         EfiRuntimeServicesCode region with all the data it touches, compiled
 *         position-independent so that it keeps working after SetVirtualAddressMap moves
 *         the region.
 */
#ifndef SHIM_H
#define SHIM_H

#include "efi.h"

/* ---- port I/O and CPU helpers --------------------------------------------------------- */
static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(uint16_t p, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(uint16_t p, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint16_t inw(uint16_t p) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint32_t inl(uint16_t p) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

#define PAGE_SIZE 4096ull
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((uint64_t)(a) - 1))

/* ---- rt.c: the runtime region ----------------------------------------------------------- */
struct rt_device {
    uint32_t pci_addr;      /* 0x80000000 | bus << 16 | dev << 11 | fn << 8 */
    uint64_t bar_phys;      /* the BAR holding the virtio structures */
    uint64_t bar_size;
    uint32_t common_off;    /* VIRTIO_PCI_CAP_COMMON_CFG offset in the BAR */
    uint32_t notify_off;    /* VIRTIO_PCI_CAP_NOTIFY_CFG offset in the BAR */
    uint32_t notify_mult;   /* notify_off_multiplier */
};

#define RT_BUFFER_SIZE 65536u
#define RT_MAX_CONFIG_TABLES 16

extern uint8_t rt_buffer[RT_BUFFER_SIZE];
extern EFI_SYSTEM_TABLE rt_systab;
extern EFI_RUNTIME_SERVICES rt_runtime;
extern EFI_CONFIGURATION_TABLE rt_config[RT_MAX_CONFIG_TABLES];
extern CHAR16 rt_vendor[];
extern EFI_RT_PROPERTIES_TABLE rt_properties;
extern char __rt_start[], __rt_end[], __image_start[], __image_end[];

/* Configure the device (reset, features, queue 0, DRIVER_OK); 0 or a negative reason. */
int rt_device_init(const struct rt_device *dev, uint64_t tsc_per_ms);
const char *rt_device_error(int reason);
/* One request: the envelope for `guid`/`function` with `data_len` bytes of function data
 * already at rt_buffer + 40. Returns the handler's ReturnStatus, or EFI_DEVICE_ERROR /
 * EFI_TIMEOUT when the transport failed (the reason in *transport when not NULL). */
EFI_STATUS rt_service(const EFI_GUID *guid, uint64_t function, uint64_t data_len,
                      int *transport);
/* rt_service with a fixed-size function struct: copied in, and back out afterwards. */
EFI_STATUS rt_call(const EFI_GUID *guid, uint64_t function, void *data, uint64_t size);
int rt_send_raw(uint64_t addr, uint32_t len, uint16_t skip, uint32_t ms, uint32_t *used_len);
void rt_set_power(uint16_t pm1a_cnt, uint16_t slp_typ_s5);
void rt_power_off(void) __attribute__((noreturn));
void rt_table_crc(EFI_TABLE_HEADER *hdr, uint32_t size);
uint32_t rt_crc32(const void *data, uint64_t len);
void rt_setup_tables(void);
uint64_t rt_call_count(void);

void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

#define DATA_AT 40u /* function data offset: 24 (envelope header) + 16 (service header) */

/* ---- hw.c ---------------------------------------------------------------------------- */
void serial_init(void);
void putc_serial(char c);
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
uint32_t pci_read32(uint32_t addr, uint8_t off);
void pci_write16(uint32_t addr, uint8_t off, uint16_t v);
int virtio_find(struct rt_device *dev);
int fwcfg_find(const char *name, uint16_t *select, uint32_t *size);
int fwcfg_read(uint16_t select, void *buf, uint32_t size);
struct acpi_info {
    uint64_t rsdp;
    uint16_t pm1a_cnt, pm_tmr;
    uint16_t slp_typ_s5;
    uint64_t ranges[64][2]; /* page-rounded ranges of every ACPI table found */
    int nranges;
};
void acpi_scan(uint64_t rsdp, struct acpi_info *out);
uint64_t tsc_calibrate(uint16_t pm_tmr);
uint64_t smbios_find(int *v3, uint64_t table[2]);
void idt_install(void);
extern uint64_t g_tsc_per_ms;

/* ---- bs.c ---------------------------------------------------------------------------- */
struct boot_image {
    void *base;          /* the PE image as loaded (sections at their RVAs) */
    uint64_t size;
    uint64_t entry;      /* PE entry point (absolute) */
    uint64_t handover64; /* 64-bit EFI handover entry, 0 if none */
    const uint8_t *file; /* the file as read (for the setup header), freed after entry */
    uint64_t file_size;
};
void bs_init(EFI_SYSTEM_TABLE *st, const CHAR16 *options, uint32_t options_size,
             struct boot_image *img, uint16_t initrd_select, uint32_t initrd_size);
EFI_STATUS bs_allocate_pages(uint32_t type, uint32_t mtype, uint64_t pages, uint64_t *addr);
EFI_STATUS bs_free_pages(uint64_t addr, uint64_t pages);
EFIAPI EFI_STATUS bs_get_memory_map(uint64_t *size, void *map, uint64_t *key,
                                    uint64_t *desc_size, uint32_t *version);
extern EFI_HANDLE g_image_handle;
extern uint64_t g_ebs_tsc;

/* ---- pe.c ---------------------------------------------------------------------------- */
/* Lay out a PE32+ image from `file`; NULL on success, else a message for the console. */
const char *pe_load(const uint8_t *file, uint64_t size, struct boot_image *img);

#endif
