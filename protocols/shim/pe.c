/*
 * Loading the kernel image: a PE32+ EFI application (a Linux bzImage with its EFI stub
 * is one). Sections go to their RVAs in pages allocated as EfiLoaderCode; DIR64 base
 * relocations are applied when the image is not at its preferred base. Every field that
 * decides where bytes go is checked against the file and the image, and a bad image gets
 * a message that says what is wrong with it.
 */
#include "shim.h"

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

const char *pe_load(const uint8_t *f, uint64_t size, struct boot_image *img)
{
    if (size < 0x40 || f[0] != 'M' || f[1] != 'Z')
        return "the kernel image is not a PE/COFF file (no 'MZ' signature)";
    uint32_t pe = rd32(f + 0x3c);
    if (pe > size - 24 || memcmp(f + pe, "PE\0\0", 4))
        return "the kernel image has no PE header (not an EFI application or bzImage with an EFI stub)";
    const uint8_t *coff = f + pe + 4;
    if (rd16(coff) != 0x8664) return "the kernel image is not for x86-64 (COFF machine is not 0x8664)";
    uint16_t nsec = rd16(coff + 2), optsz = rd16(coff + 16);
    const uint8_t *opt = coff + 20;
    if ((uint64_t)(opt - f) + optsz > size || optsz < 112 || rd16(opt) != 0x20b)
        return "the kernel image has no PE32+ optional header";
    if (rd16(opt + 68) != 10) return "the kernel image is not an EFI application (subsystem is not 10)";
    uint32_t entry = rd32(opt + 16);
    uint64_t base_pref = rd64(opt + 24);
    uint32_t image_size = rd32(opt + 56), headers = rd32(opt + 60);
    uint32_t ndirs = rd32(opt + 108);
    if (!image_size || image_size > (1u << 30) || headers > image_size || headers > size)
        return "the kernel image's SizeOfImage/SizeOfHeaders are out of range";
    if (entry == 0 || entry >= image_size) return "the kernel image's entry point is outside the image";
    const uint8_t *sec = opt + optsz;
    if ((uint64_t)(sec - f) + (uint64_t)nsec * 40 > size) return "the kernel image's section table is truncated";

    uint64_t pages = ALIGN_UP(image_size, PAGE_SIZE) / PAGE_SIZE, addr = 0xffffffffull;
    if (bs_allocate_pages(AllocateMaxAddress, EfiLoaderCode, pages, &addr) != EFI_SUCCESS)
        return "no memory for the kernel image";
    uint8_t *image = (uint8_t *)(uintptr_t)addr;
    memset(image, 0, pages * PAGE_SIZE);
    memcpy(image, f, headers);
    for (uint16_t i = 0; i < nsec; i++) {
        const uint8_t *s = sec + i * 40;
        uint32_t vsize = rd32(s + 8), va = rd32(s + 12), raw = rd32(s + 16), ptr = rd32(s + 20);
        uint32_t n = raw < vsize || !vsize ? raw : vsize;
        if ((uint64_t)va + (vsize > raw ? vsize : raw) > image_size)
            return "a section of the kernel image lies outside SizeOfImage";
        if (n && ((uint64_t)ptr + n > size)) return "a section of the kernel image lies outside the file";
        if (n) memcpy(image + va, f + ptr, n);
    }
    /* Base relocations (data directory 5), if the image did not land at its base. */
    int64_t diff = (int64_t)(addr - base_pref);
    if (diff && ndirs > 5) {
        uint32_t rva = rd32(opt + 112 + 5 * 8), rsize = rd32(opt + 112 + 5 * 8 + 4);
        if ((uint64_t)rva + rsize > image_size) return "the kernel image's relocation table is outside the image";
        for (uint32_t off = 0; off + 8 <= rsize;) {
            uint32_t page = rd32(image + rva + off), block = rd32(image + rva + off + 4);
            if (block < 8 || off + block > rsize) return "the kernel image's relocation table is malformed";
            for (uint32_t k = 8; k + 2 <= block; k += 2) {
                uint16_t e = rd16(image + rva + off + k);
                uint32_t type = e >> 12, at = page + (e & 0xfff);
                if (type == 0) continue;
                if (type != 10 || (uint64_t)at + 8 > image_size)
                    return "the kernel image has a relocation the shim cannot apply";
                uint64_t v = rd64(image + at) + (uint64_t)diff;
                memcpy(image + at, &v, 8);
            }
            off += block;
        }
    }
    img->base = image;
    img->size = pages * PAGE_SIZE;
    img->entry = addr + entry;
    img->handover64 = 0;
    img->file = f;
    img->file_size = size;
    /* A Linux bzImage: the 64-bit EFI handover entry, when the kernel offers one. */
    if (size > 0x270 && !memcmp(f + 0x202, "HdrS", 4) && rd16(f + 0x206) >= 0x20b &&
        (rd16(f + 0x236) & (1u << 3))) {       /* XLF_EFI_HANDOVER_64 */
        uint32_t setup = (f[0x1f1] ? f[0x1f1] : 4) + 1;
        uint32_t handover = rd32(f + 0x264);
        if ((uint64_t)setup * 512 + handover + 0x200 < image_size)
            img->handover64 = addr + setup * 512 + handover + 0x200;
    }
    return 0;
}
