"""efird: an event-driven EFI runtime daemon for virtual machines."""

__version__ = "0.1.0"
