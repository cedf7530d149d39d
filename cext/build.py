"""cffi build script (API mode) for efird._cext.

setuptools runs it during `pip install` through `cffi_modules` in setup.py. The
extension compiles against protocols/efird.h, so the ABI header is always built with
the daemon it describes.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ffibuilder = FFI()
ffibuilder.cdef(
    """
    uint32_t efird_abi_version(void);
    size_t efird_abi_struct_size(const char *name);
    """
)
ffibuilder.set_source(
    "efird._cext",
    '#include "efird.h"\n#include "efird_core.h"\n',
    sources=[str((HERE / "abi.c").relative_to(ROOT))],
    include_dirs=[str(ROOT / "protocols"), str(HERE)],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
