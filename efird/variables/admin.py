"""What an operator may do to one domain's variables (`efird vars`).

One implementation for both routes: `efird vars` runs it on a store it opened itself, and
a serving daemon runs it for `efird vars` on its control socket (efird/control/vars_ops.py),
between two guest requests. Writes go through VariableService.set_variable, so the guest's
rules decide; the only operator powers are the ones a platform's physical-presence path
has (reset-secure-boot, the store's self-signed-PK policy) and whole-store import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from efird.efi.attributes import NV, STORED_MASK
from efird.efi.status import Status
from efird.variables.model import Variable
from efird.variables.service import VariableService


class ImportRefused(ValueError):
    """A variable set that a store cannot hold; nothing was changed."""


@dataclass(frozen=True)
class ImportResult:
    imported: int
    deleted: int


class StoreAdmin:
    def __init__(self, service: VariableService) -> None:
        self.service = service

    @property
    def description(self) -> str:
        return self.service.store.description

    def variables(self) -> list[Variable]:
        return self.service.variables()

    def find(self, guid: bytes, name: str) -> Variable | None:
        return self.service.find(guid, name)

    def mode(self) -> str:
        return self.service.mode.value

    def require_self_signed_pk(self) -> bool:
        return self.service.options.require_self_signed_pk or \
            self.service.sb.require_self_signed_pk

    def set_variable(self, guid: bytes, name: str, attributes: int, data: bytes) -> Status:
        return self.service.set_variable(guid, name, attributes, data, from_host=True)

    def import_variables(self, variables: Sequence[Variable], replace: bool) -> ImportResult:
        """Put these variables as they are (one atomic batch); with replace, delete every
        non-volatile variable that is not among them."""
        for v in variables:
            if not v.attributes & NV or v.attributes & ~STORED_MASK or not v.name:
                raise ImportRefused(f"variable {v.name!r} has attributes {v.attributes:#x} "
                                   "a store cannot hold")
        keep = {v.key for v in variables}
        if len(keep) != len(variables):
            raise ImportRefused("the same variable appears twice")
        deletes = [v.key for v in self.service.variables()
                   if replace and v.attributes & NV and v.key not in keep]
        self.service.store.commit(puts=list(variables), deletes=deletes)
        self.service.reload()
        return ImportResult(len(variables), len(deletes))

    def reset_secure_boot(self, delete_keys: bool) -> Status:
        return self.service.reset_secure_boot(delete_keys=delete_keys)

    def set_require_self_signed_pk(self, required: bool) -> None:
        self.service.set_require_self_signed_pk(required)
