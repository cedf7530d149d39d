"""Storage quotas and size limits, reported honestly by QueryVariableInfo."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Every variable is charged what EDK2's authenticated variable header costs, so the
# figures a guest sees match what it would see on EDK2 with the same quotas.
VARIABLE_HEADER_SIZE = 60


@dataclass(frozen=True)
class Limits:
    nv_storage: int = 0x100000  # common non-volatile variables
    hr_storage: int = 0x8000  # hardware error records
    volatile_storage: int = 0x40000
    max_variable_size: int = 0x8400  # header + name + data, as PcdMaxVariableSize
    max_auth_variable_size: int = 0x8400
    max_volatile_variable_size: int = 0x8400
    max_hr_variable_size: int = 0x8000
    # Durable writes a guest may make: a sustained rate and a burst on top of it (token
    # bucket). A write beyond them gets EFI_OUT_OF_RESOURCES at once, never a wait, so a
    # guest cannot wear out or saturate the host's disk. 0 turns the limit off. A firmware
    # boot makes a few dozen writes; the burst covers a full Secure Boot enrolment and an
    # installer's boot-entry churn many times over.
    nv_write_rate: float = 100.0
    nv_write_burst: int = 1000

    @property
    def payload_size(self) -> int:
        """What GetPayloadSize reports: the largest SMM variable payload efird accepts.

        As EDK2 computes it: the largest variable without its header, plus the access
        structure in front of the name.
        """
        from efird.abi import layouts as L  # construct: only the guest-facing paths need it

        largest = max(self.max_variable_size, self.max_auth_variable_size,
                      self.max_volatile_variable_size, self.max_hr_variable_size)
        return largest + L.SMM_VARIABLE_COMMUNICATE_ACCESS_VARIABLE.size - VARIABLE_HEADER_SIZE


def footprint(name_size: int, data_size: int) -> int:
    """Bytes of quota one variable uses."""
    return VARIABLE_HEADER_SIZE + name_size + data_size


class WriteBudget:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("the write rate must be >= 0 and the burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one write if there is one to spend (always, when the rate is 0)."""
        if self.rate == 0:
            return True
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
