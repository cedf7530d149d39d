"""Where non-volatile variables live. The service sees only `VariableStore`."""

from efird.store.base import (
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    VariableStore,
)

__all__ = [
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreIOError",
    "StoreLockedError",
    "VariableStore",
]
