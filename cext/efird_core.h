/* efird C core: functions over caller-provided buffers, explicit error codes. */
#ifndef EFIRD_CORE_H
#define EFIRD_CORE_H

#include <stddef.h>
#include <stdint.h>

/* The EFIRD_ABI_VERSION this extension was compiled against. */
uint32_t efird_abi_version(void);
/* sizeof() of an ABI structure by its C name, or 0 when unknown. */
size_t efird_abi_struct_size(const char *name);

#endif
