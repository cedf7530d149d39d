"""protocols/efird.h and efird/abi/layouts.py describe the same ABI.

The header is compiled by the C compiler through cffi (API mode); cffi asks the
compiler for every field's offset and every structure's size, and this test compares
them with the Python schemas. Neither side is generated from the other, so a change to
one without the other fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cffi import FFI

from efird.abi import ALL_LAYOUTS, Layout
from efird.abi import layouts as L

ROOT = Path(__file__).resolve().parent.parent
HEADER_DIR = ROOT / "protocols"

GUID_FIELDS = {"Guid", "HeaderGuid", "Namespace", "InputVendorGuid"}
CHAR16_TAILS = {"Name", "InputVariableName"}
TAIL_TYPES = {"Entries": "EFIRD_HVM_MEMMAP_ENTRY"}


def _c_field(layout: Layout, name: str) -> str:
    size = layout.construct.subcons[[s.name for s in layout.construct.subcons].index(name)]
    n = size.sizeof()
    if name in GUID_FIELDS:
        return f"EFIRD_GUID {name};"
    if name == "Time":
        return f"EFIRD_TIME {name};"
    fmt = getattr(size.subcon if hasattr(size, "subcon") else size, "fmtstr", None)
    if fmt:
        signed = fmt[-1].islower()
        return f"{'int' if signed else 'uint'}{n * 8}_t {name};"
    return f"uint8_t {name}[{n}];"


def _cdef() -> str:
    parts = [
        "typedef struct { ...; } EFIRD_GUID;",
        "typedef struct { ...; } EFIRD_TIME;",
        "#define EFIRD_ABI_VERSION ...",
        "#define VAR_CHECK_POLICY_COMM_SIG ...",
    ]
    for layout in ALL_LAYOUTS:
        fields = [_c_field(layout, n) for n in layout.field_names]
        if layout.tail:
            elem = TAIL_TYPES.get(layout.tail,
                                  "uint16_t" if layout.tail in CHAR16_TAILS else "uint8_t")
            fields.append(f"{elem} {layout.tail}[];")
        parts.append("typedef struct { " + " ".join(fields) + " ...; } " + layout.c_name + ";")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    ffi = FFI()
    ffi.cdef(_cdef())
    ffi.set_source("_efird_abi_check", '#include "efird.h"', include_dirs=[str(HEADER_DIR)],
                   extra_compile_args=["-Wall", "-Werror"])
    out = tmp_path_factory.mktemp("abi")
    lib_path = ffi.compile(tmpdir=str(out))
    import importlib.util

    spec = importlib.util.spec_from_file_location("_efird_abi_check", lib_path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layout", ALL_LAYOUTS, ids=lambda lay: lay.c_name)
def test_layout_matches_header(compiled, layout: Layout) -> None:  # type: ignore[no-untyped-def]
    ffi = compiled.ffi
    assert ffi.sizeof(layout.c_name) == layout.c_sizeof, "sizeof differs"
    for name, offset in layout.offsets.items():
        assert ffi.offsetof(layout.c_name, name) == offset, f"offsetof({name}) differs"


def test_every_header_struct_has_a_schema(compiled) -> None:  # type: ignore[no-untyped-def]
    text = (HEADER_DIR / "efird.h").read_text()
    import re

    declared = set(re.findall(r"^\}\s*(\w+);", text, flags=re.M))
    declared -= {"EFIRD_GUID", "EFIRD_TIME"}
    declared.discard("SMM_VARIABLE_COMMUNICATE_LOCK_VARIABLE")  # a typedef of GetNext's layout
    assert declared == {lay.c_name for lay in ALL_LAYOUTS}


def test_constants_match(compiled) -> None:  # type: ignore[no-untyped-def]
    assert compiled.lib.VAR_CHECK_POLICY_COMM_SIG == L.VAR_CHECK_POLICY_COMM_SIG
    from efird import _cext

    assert _cext.lib.efird_abi_version() == compiled.lib.EFIRD_ABI_VERSION


def test_extension_built_with_same_header() -> None:
    from efird import _cext

    for name in ("EFI_MM_COMMUNICATE_HEADER", "SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE",
                 "VAR_CHECK_POLICY_COMM_HEADER", "EFI_MEMORY_DESCRIPTOR"):
        layout = next(lay for lay in ALL_LAYOUTS if lay.c_name == name)
        assert _cext.lib.efird_abi_struct_size(name.encode()) == layout.c_sizeof
