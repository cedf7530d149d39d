"""The guest ABI as Python schemas.

Every layout in protocols/efird.h has a twin here, written once with construct. From
each schema a precompiled `struct.Struct` is derived for the hot path, so parsing a
request costs one `unpack_from`. tests/test_abi_header.py compiles efird.h with cffi
and checks every size and offset against these schemas.
"""

from efird.abi.layout import Layout
from efird.abi.layouts import ALL_LAYOUTS

__all__ = ["ALL_LAYOUTS", "Layout"]
