"""The one error every store reader raises, so callers can report a bad file uniformly."""

from __future__ import annotations


class FormatError(ValueError):
    """A store file that cannot be read. The message names the file and what is wrong, because
    an operator importing a store needs to know which input to fix, not just that one failed."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message
