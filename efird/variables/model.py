"""A variable as the service keeps it."""

from __future__ import annotations

from dataclasses import dataclass

from efird.efi import time as efitime

Key = tuple[bytes, str]  # (vendor GUID in EFI byte order, name without NUL)


@dataclass(slots=True, frozen=True)
class Variable:
    guid: bytes
    name: str
    attributes: int  # as stored: never carries APPEND_WRITE
    data: bytes
    # EFI_TIME of the last authenticated write (time-based authenticated variables only).
    timestamp: bytes = efitime.ZERO
    # For private time-based variables: who may update it (pkcs7.signer_identity), as
    # identity hash || top-level certificate DER. Empty otherwise.
    signer: bytes = b""

    @property
    def key(self) -> Key:
        return (self.guid, self.name)

    @property
    def name_size(self) -> int:
        """NameSize in bytes, UCS-2 with the NUL."""
        return 2 * len(self.name) + 2
