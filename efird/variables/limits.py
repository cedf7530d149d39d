"""Storage quotas and size limits, reported honestly by QueryVariableInfo."""

from __future__ import annotations

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
