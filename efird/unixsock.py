"""Listening unix sockets for the daemon (the vhost-user socket and the control socket):
a stale socket left by a dead process is replaced, a live one or a non-socket refused,
and the socket never exists with wider permissions than asked for."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import trio

from efird.log import get_logger

log = get_logger("efird.unixsock")


class SocketInUseError(Exception):
    """Another process listens on the path, or something other than a socket is there."""


def prepare_path(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUseError(f"{what} {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket", socket=str(path))
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketInUseError(f"{what} {path} is in use by another process")


async def listen(path: Path, *, mode: int = 0o600, backlog: int = 1,
                 what: str = "socket") -> trio.socket.SocketType:
    prepare_path(path, what)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)  # never visible with wider permissions
    try:
        await listener.bind(str(path))
        os.chmod(path, mode)
    except BaseException:
        listener.close()
        raise
    finally:
        os.umask(old_umask)
    listener.listen(backlog)
    return listener
