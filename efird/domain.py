"""One domain's services wired to one envelope dispatcher.

`efird call` and `efird serve` both build a Domain; the transports differ, the services
and their state do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from efird.bootmem.handler import BootMemoryHandler, KexecHandler
from efird.bootmem.service import BootMemoryService
from efird.efi import guid as g
from efird.efi.guid import guid_str
from efird.efi.status import Status
from efird.envelope import Dispatcher
from efird.log import get_logger
from efird.platform.handlers import RESET_NAMES, RESET_SHUTDOWN, ResetHandler, TimeHandler
from efird.platform.time_service import TimeService
from efird.store.base import VariableStore
from efird.variables.limits import Limits
from efird.variables.policy_mmi import RESULT_OFFSET, PolicyMmiHandler
from efird.variables.service import Options, VariableService
from efird.variables.smm import STATUS_OFFSET, SmmVariableHandler

Listener = Callable[[str, dict[str, object]], object]
log = get_logger("efird.domain")


class Domain:
    def __init__(self, store: VariableStore, *, limits: Limits | None = None,
                 options: Options | None = None,
                 memory_map: Sequence[tuple[int, int, int]] | None = None) -> None:
        self.store = store
        self._closed = False
        self.variables = VariableService(store, limits, options)
        self.bootmem = BootMemoryService(self.variables, memory_map)
        self.time = TimeService(store)
        self.listeners: list[Listener] = []  # events for the toolstack (control socket)
        self.variables.on_security_violation = lambda guid, name: self.emit(
            "secure-boot-violation", name=name, guid=guid_str(guid))
        self.bootmem.on_image_exit = lambda status, text: self.emit(
            "boot-failed", status=f"{status:#x}", data=text)
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
        d.register(g.EFIRD_TIME_SERVICE, TimeHandler(self.time), status_offset=8, name="time",
                   may_block=TimeHandler.may_block)
        d.register(g.EFIRD_RESET_SERVICE, ResetHandler(self._reset_system), status_offset=8,
                   name="reset", may_block=ResetHandler.may_block)
        d.register(g.EFIRD_KEXEC_SERVICE, KexecHandler(self.bootmem, self.soft_reset),
                   status_offset=8, name="kexec")

    @staticmethod
    def _event(action: Callable[[], object]) -> Callable[[bytearray, int, int], None]:
        """Phase events carry no status: the envelope comes back unchanged."""

        def handle(buf: bytearray, start: int, length: int) -> None:
            action()

        return handle

    def emit(self, kind: str, **data: object) -> None:
        """An event for the toolstack: a log line, and every listener."""
        log.info("event", kind=kind, **data)
        for listener in list(self.listeners):
            listener(kind, data)

    def platform_reset(self) -> None:
        """Cold or warm reset: volatile variables, boot phase, policies and the boot
        memory map start afresh; non-volatile variables and the clock stay."""
        self.variables.platform_reset()
        self.bootmem.reset()

    def soft_reset(self, requested_by: str = "toolstack") -> Status:
        """kexec (Xen's soft reset): variables, the runtime phase and the virtual map stay;
        the next kernel gets a fresh boot path through the boot-memory service."""
        status = self.bootmem.soft_reset()
        if status is Status.SUCCESS:
            self.emit("kexec", requested_by=requested_by)
        return status

    def _reset_system(self, kind: int, status: int, text: str, guid: bytes) -> None:
        name = RESET_NAMES[kind]
        if kind == RESET_SHUTDOWN:
            self.store.sync()  # everything durable before the VM goes away
        else:
            self.platform_reset()
        details: dict[str, object] = {"type": name, "status": f"{status:#x}"}
        if text:
            details["data"] = text
        if guid:
            details["guid"] = guid_str(guid)
        self.emit("shutdown" if kind == RESET_SHUTDOWN else "reset", **details)

    def close(self) -> None:
        """Make the store durable and release it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.store.sync()
        finally:
            self.store.close()
