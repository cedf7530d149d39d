"""The minimal boot services a PVH guest needs (the seed's GetMemoryMap,
AllocatePages/FreePages, ExitBootServices, Exit), plus the runtime virtual map and the
page tables, over the C core."""
