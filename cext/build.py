"""cffi build script (API mode) for efird._cext.

setuptools runs it during `pip install` through `cffi_modules` in setup.py. Every
cext/*.c is compiled into the one extension, and every cext/*.cdef declares what Python
sees of it (each engine keeps its C, header and cdef side by side). The extension
compiles against protocols/efird.h, so the ABI header is always built with the daemon it
describes.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ffibuilder = FFI()
ffibuilder.cdef("\n".join(p.read_text() for p in sorted(HERE.glob("*.cdef"))))
headers = "".join(f'#include "{p.name}"\n' for p in sorted(HERE.glob("*.h")))
ffibuilder.set_source(
    "efird._cext",
    '#include "efird.h"\n' + headers,
    sources=[str(p.relative_to(ROOT)) for p in sorted(HERE.glob("*.c"))],
    include_dirs=[str(ROOT / "protocols"), str(HERE)],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
