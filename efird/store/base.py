"""The store interface: what the variable service needs from persistence, and no more.

A store holds the non-volatile variables of one domain plus a few metadata records
(Secure Boot mode, counters). `commit` is the only write: one atomic, durable batch.
When it returns, the batch survives a crash or power loss; when it raises, nothing of
the batch was applied. A fleet backend on a distributed engine implements the same
interface, so the variable service never changes for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence

from efird.variables.model import Key, Variable


class StoreError(Exception):
    """Persistence failed. The message names the store."""


class StoreCorruptError(StoreError):
    """The store exists but its content is damaged: never served as an empty store."""


class StoreLockedError(StoreError):
    """Another process owns the store. `owner` is its pid as recorded (text) and `control`
    the control socket it advertised for operators (efird vars), when it has one."""

    def __init__(self, message: str, owner: str = "unknown", control: str | None = None
                 ) -> None:
        super().__init__(message)
        self.owner = owner
        self.control = control


class StoreFullError(StoreError):
    """The medium is full (ENOSPC); the batch was not applied."""


class StoreIOError(StoreError):
    """The medium failed (EIO, read-only, ...); the batch was not applied."""


class StoreFencedError(StoreError):
    """This process may not write the store (now): another process owns it, or this one
    lost or handed over its ownership (the fleet store's fencing). Nothing was applied."""


class VariableStore(ABC):
    """Durable storage of non-volatile variables for one domain."""

    description: str

    @abstractmethod
    def load(self) -> Iterable[Variable]:
        """Every stored variable, verified (raises StoreCorruptError when damaged)."""

    @abstractmethod
    def commit(
        self,
        puts: Sequence[Variable] = (),
        deletes: Sequence[Key] = (),
        meta: Mapping[str, bytes] | None = None,
    ) -> None:
        """Apply the batch atomically and durably, or raise StoreError and apply nothing."""

    @abstractmethod
    def get_meta(self, key: str) -> bytes | None:
        """A metadata record, or None."""

    def advertise(self, control: str | None) -> None:  # noqa: B027 (optional hook)
        """Tell operators' tools which control socket reaches the process serving this
        store (efird vars routes its changes through it); a no-op where nothing locks."""

    def changed_since_load(self) -> bool:
        """True when another process committed since this one last loaded or committed."""
        return False

    @abstractmethod
    def sync(self) -> None:
        """Make everything durable now (every commit already is; this is for shutdown)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store."""
