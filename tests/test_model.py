"""A hypothesis state machine: efird against a small reference model of UEFI 2.10 §8.2
variable semantics (create, update, append, delete, phase, restart), through envelopes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from efird.efi.status import Status

from .conftest import VENDOR, Guest, open_domain

NV, BS, RT, AP = 1, 2, 4, 0x40
NAMES = st.sampled_from(["A", "B", "Boot0001", "Größe", "Z" * 40])
ATTRS = st.sampled_from([7, 6, 3, 2, 0, 7 | AP, 6 | AP, 3 | AP])
DATA = st.binary(max_size=12)


class Model:
    """What UEFI (and EDK2's UpdateVariable) says should happen, nothing more."""

    def __init__(self) -> None:
        self.vars: dict[str, tuple[int, bytes]] = {}
        self.runtime = False

    def visible(self, name: str) -> tuple[int, bytes] | None:
        v = self.vars.get(name)
        if v is None or (self.runtime and not v[0] & RT):
            return None
        return v

    def set(self, name: str, attrs: int, data: bytes) -> Status:
        existing = self.vars.get(name)
        append = bool(attrs & AP)
        if existing is not None:
            if self.runtime and not existing[0] & RT:
                return Status.WRITE_PROTECTED
            if attrs and attrs & ~AP != existing[0]:
                return Status.INVALID_PARAMETER
            if self.runtime and not existing[0] & NV:
                return Status.WRITE_PROTECTED
            if (not append and not data) or not attrs & (BS | RT):
                del self.vars[name]
                return Status.SUCCESS
            if append:
                self.vars[name] = (existing[0], existing[1] + data)
            else:
                self.vars[name] = (existing[0], data)
            return Status.SUCCESS
        if not data and append:
            return Status.SUCCESS
        if not data or not attrs & (BS | RT):
            return Status.NOT_FOUND
        if self.runtime and attrs & (RT | NV) != RT | NV:
            return Status.INVALID_PARAMETER
        self.vars[name] = (attrs & ~AP, data)
        return Status.SUCCESS

    def restart(self) -> None:
        self.vars = {k: v for k, v in self.vars.items() if v[0] & NV}
        self.runtime = False


class VariableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.path = self.dir / "vm.efivars"
        self.domain = open_domain(self.path)
        self.guest = Guest(self.domain)
        self.model = Model()

    @rule(name=NAMES, attrs=ATTRS, data=DATA)
    def set_variable(self, name: str, attrs: int, data: bytes) -> None:
        assert self.guest.set(name, data, attrs) is self.model.set(name, attrs, data)

    @rule(name=NAMES)
    def get_variable(self, name: str) -> None:
        r = self.guest.get(name)
        expected = self.model.visible(name)
        if expected is None:
            assert r.status is Status.NOT_FOUND
        else:
            assert (r.status, r.attributes, r.data) == (Status.SUCCESS, *expected)

    @rule()
    def exit_boot_services(self) -> None:
        self.guest.exit_boot_services()
        self.model.runtime = True

    @rule()
    def restart(self) -> None:
        self.domain.close()
        self.domain = open_domain(self.path)
        self.guest = Guest(self.domain)
        self.model.restart()

    @invariant()
    def enumeration_matches(self) -> None:
        names = [n for gu, n in self.guest.names() if gu == VENDOR]
        assert len(names) == len(set(names))
        assert set(names) == {n for n in self.model.vars if self.model.visible(n)}

    def teardown(self) -> None:
        self.domain.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestVariableModel = VariableMachine.TestCase
TestVariableModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
