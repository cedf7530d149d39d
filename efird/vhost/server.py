"""The vhost-user socket: listen (QEMU connects) or connect (efird is the client).

One frontend at a time, as vhost-user is one-to-one. What happens when it goes away is
the caller's choice: wait for the next one, or return.
"""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from efird import unixsock
from efird.log import get_logger
from efird.vhost.backend import Connection, Device

log = get_logger("efird.vhost")


SocketInUseError = unixsock.SocketInUseError


async def _serve_one(sock: trio.socket.SocketType, device: Device, queues: int) -> None:
    async with trio.open_nursery() as nursery:
        conn = Connection(sock, device, queues, nursery)
        await conn.run()
        nursery.cancel_scope.cancel()


async def listen(path: Path, *, mode: int = 0o600) -> trio.socket.SocketType:
    return await unixsock.listen(path, mode=mode, what="vhost-user socket")


async def serve_listening(listener: trio.socket.SocketType, device: Device, *, queues: int,
                          once: bool) -> None:
    """Accept frontends one after another; with `once`, return after the first leaves."""
    while True:
        sock, _ = await listener.accept()
        log.info("frontend connected")
        await _serve_one(sock, device, queues)
        if once:
            return


async def serve_connecting(path: Path, device: Device, *, queues: int, once: bool,
                           retry_for: float = 30.0) -> None:
    """Connect to a listening frontend (retrying while it comes up) and serve it."""
    while True:
        with trio.move_on_after(retry_for) as scope:
            while True:
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    await sock.connect(str(path))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    sock.close()
                    await trio.sleep(0.05)
        if scope.cancelled_caught:
            raise ConnectionError(f"no vhost-user frontend listening on {path} "
                                  f"after {retry_for:.0f} s")
        log.info("connected to frontend", socket=str(path))
        await _serve_one(sock, device, queues)
        if once:
            return
