"""One domain's services wired to one envelope dispatcher.

`efird call` and `efird serve` both build a Domain; the transports differ, the services
and their state do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from efird.bootmem.handler import BootMemoryHandler
from efird.bootmem.service import BootMemoryService
from efird.efi import guid as g
from efird.envelope import Dispatcher, FunctionHandler
from efird.store.base import VariableStore
from efird.variables.limits import Limits
from efird.variables.policy_mmi import RESULT_OFFSET, PolicyMmiHandler
from efird.variables.service import Options, VariableService
from efird.variables.smm import STATUS_OFFSET, SmmVariableHandler

# efird's own services, defined in protocols/ and implemented by later milestones: until
# then each answers every function with EFI_UNSUPPORTED in its ReturnStatus.
PLANNED_SERVICES = {
    g.EFIRD_TIME_SERVICE: "time",
    g.EFIRD_RESET_SERVICE: "reset",
    g.EFIRD_KEXEC_SERVICE: "kexec",
}


class Domain:
    def __init__(self, store: VariableStore, *, limits: Limits | None = None,
                 options: Options | None = None,
                 memory_map: Sequence[tuple[int, int, int]] | None = None) -> None:
        self.store = store
        self._closed = False
        self.variables = VariableService(store, limits, options)
        self.bootmem = BootMemoryService(self.variables, memory_map)
        self.dispatcher = Dispatcher()
        d = self.dispatcher
        d.register(g.SMM_VARIABLE_PROTOCOL, SmmVariableHandler(self.variables),
                   status_offset=STATUS_OFFSET, name="smm-variable",
                   may_block=SmmVariableHandler.may_block)
        d.register(g.VAR_CHECK_POLICY_MMI, PolicyMmiHandler(self.variables),
                   status_offset=RESULT_OFFSET, name="variable-policy")
        d.register(g.EVENT_END_OF_DXE, self._event(self.variables.end_of_dxe),
                   status_offset=None, name="end-of-dxe")
        d.register(g.EVENT_READY_TO_BOOT, self._event(self.variables.ready_to_boot),
                   status_offset=None, name="ready-to-boot")
        d.register(g.EVENT_EXIT_BOOT_SERVICES, self._event(self.variables.exit_boot_services),
                   status_offset=None, name="exit-boot-services")
        d.register(g.EFIRD_BOOTMEM_SERVICE, BootMemoryHandler(self.bootmem), status_offset=8,
                   name="boot-memory", may_block=BootMemoryHandler.may_block)
        for guid, name in PLANNED_SERVICES.items():
            planned = FunctionHandler()  # no functions yet: each answers EFI_UNSUPPORTED
            planned.header_name = "EFIRD_SERVICE_HEADER"
            d.register(guid, planned, status_offset=8, name=name)

    @staticmethod
    def _event(action: Callable[[], object]) -> Callable[[bytearray, int, int], None]:
        """Phase events carry no status: the envelope comes back unchanged."""

        def handle(buf: bytearray, start: int, length: int) -> None:
            action()

        return handle

    def close(self) -> None:
        """Make the store durable and release it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.store.sync()
        finally:
            self.store.close()
