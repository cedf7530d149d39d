/* The ABI as the C compiler sees it: lets the daemon check at start-up that the
 * header it was built with matches its Python schemas (see efird/abi/check.py). */
#include <string.h>

#include "efird.h"
#include "efird_core.h"

uint32_t efird_abi_version(void)
{
    return EFIRD_ABI_VERSION;
}

#define ENTRY(t) { #t, sizeof(t) }
static const struct {
    const char *name;
    size_t size;
} sizes[] = {
    ENTRY(EFI_MM_COMMUNICATE_HEADER),
    ENTRY(SMM_VARIABLE_COMMUNICATE_HEADER),
    ENTRY(SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE),
    ENTRY(SMM_VARIABLE_COMMUNICATE_GET_NEXT_VARIABLE_NAME),
    ENTRY(SMM_VARIABLE_COMMUNICATE_QUERY_VARIABLE_INFO),
    ENTRY(SMM_VARIABLE_COMMUNICATE_GET_PAYLOAD_SIZE),
    ENTRY(VAR_CHECK_POLICY_COMM_HEADER),
    ENTRY(VARIABLE_POLICY_ENTRY),
    ENTRY(EFIRD_SERVICE_HEADER),
    ENTRY(EFI_MEMORY_DESCRIPTOR),
};

size_t efird_abi_struct_size(const char *name)
{
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        if (strcmp(sizes[i].name, name) == 0)
            return sizes[i].size;
    return 0;
}
