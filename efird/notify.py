"""The systemd notify protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET.

Hand-written because it is a single sendto; a library would add nothing.
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") if a service manager is listening; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True
