"""Target `virtqueue`: split-ring descriptor chains over guest memory whose every byte comes
from the fuzz input (efird.vhost.virtqueue + efird.vhost.memory), served the way
efird.vhost.backend.Connection._drain/_serve_chain serve them.

Guest memory is two memfd regions mapped with map_region, adjacent in both address spaces
(so an access straddling them must be refused):

    region 0: gpa 0x0,     64 KiB, uva 0x40000000
    region 1: gpa 0x10000,  4 KiB, uva 0x40010000

Input layout:

    u8  config   bits 0-3 log2 of the queue size (% 9: 1..256), bit 4 EVENT_IDX,
                 bit 5 INDIRECT_DESC, bit 6 a small max_request (next byte * 16)
    u16 desc, u16 avail, u16 used   ring offsets (uva = 0x40000000 + offset)
    u16 last_avail_idx, u16 used_idx
    u8  response: 0 answers each request with a same-length reversed copy, n the request
        plus n-1 bytes, 255 refuses (as a device answering None)
    [u8 max_request / 16]   with config bit 6
    rest: region 0's bytes, then region 1's

Oracles: only ChainError and GuestMemoryError may be raised (they end the drain, as in the
backend); a chain's request is exactly its readable bytes; a response is written whole and
only into its chain's writable buffers; apart from those buffers, efird writes nothing but
the used ring (flags, idx, entries, avail_event); the used entry says (head, written); no
fd or mapping is left behind.
"""

from __future__ import annotations

import os
import struct

from efird.vhost.memory import GuestMemory, GuestMemoryError, map_region
from efird.vhost.virtqueue import Chain, ChainError, Virtqueue
from fuzz.harness.common import Finding, Reader, open_fds

REGION0 = (0x0, 64 << 10, 0x40000000)
REGION1 = (0x10000, 4 << 10, 0x40010000)
_USED_ELEM = struct.Struct("<II")


def _memfd(content: bytes, size: int) -> int:
    fd = os.memfd_create("efird-fuzz-ring", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    if content:
        os.pwrite(fd, content[:size], 0)
    return fd


class Memory:
    """GuestMemory over two fresh memfd regions; a context manager that unmaps them."""

    def __init__(self, image0: bytes, image1: bytes) -> None:
        self.memory = GuestMemory()
        regions = []
        for (gpa, size, uva), image in ((REGION0, image0), (REGION1, image1)):
            fd = _memfd(image, size)
            try:
                regions.append(map_region(fd, gpa, size, uva, 0))
            finally:
                os.close(fd)
        self.memory.replace(regions)

    def snapshot(self) -> bytes:
        return b"".join(bytes(r.view) for r in self.memory.regions)

    def close(self) -> None:
        self.memory.clear()


def _gpa_of_uva(uva: int) -> int:
    for gpa, size, base in (REGION0, REGION1):
        if base <= uva < base + size:
            return gpa + uva - base
    return -1


def _response(request: bytes, mode: int) -> bytes | None:
    if mode == 255:
        return None
    body = bytes(reversed(request))
    return body if mode == 0 else body + bytes(mode - 1)


class Harness:
    def __call__(self, data: bytes) -> None:
        before = open_fds()
        self.serve(data)
        leaked = open_fds() - before
        if leaked:
            for fd in leaked:
                os.close(fd)
            raise Finding(f"{len(leaked)} fds (mappings) left open")

    def serve(self, data: bytes) -> None:
        r = Reader(data)
        config = r.u8()
        desc, avail, used = r.u16(), r.u16(), r.u16()
        last_avail, used_idx, mode = r.u16(), r.u16(), r.u8()
        max_request = r.u8() * 16 if config & 0x40 else None
        image = r.rest()
        mem = Memory(image[: REGION0[1]], image[REGION0[1] :])
        try:
            vq = Virtqueue(0, mem.memory)
            vq.set_num(1 << (config & 0xF) % 9)
            base = REGION0[2]
            vq.set_addresses(base + desc, base + used, base + avail)
            vq.event_idx = bool(config & 0x10)
            vq.indirect = bool(config & 0x20)
            vq.last_avail_idx, vq.used_idx = last_avail, used_idx
            if max_request is not None:
                vq.max_request = max_request
            try:
                drain(vq, mem, mode)
            finally:
                vq.drop_views()
        finally:
            mem.close()


def drain(vq: Virtqueue, mem: Memory, mode: int) -> None:
    """Backend._drain for one kick, with the oracles around each step."""
    original = mem.snapshot()
    allowed: list[tuple[int, int]] = []  # gpa ranges efird may have written
    used_gpa = _gpa_of_uva(vq.used_uva)
    if used_gpa >= 0:
        allowed.append((used_gpa, used_gpa + 6 + 8 * vq.num))
    first_used = vq.used_idx
    try:
        for _ in range(vq.num + 2):
            head = vq.pop_head()
            if head is None:
                vq.should_notify(first_used)
                vq.set_avail_event()
                if vq.pending():
                    continue
                break
            serve_chain(vq, mem, head, mode, allowed)
    except (ChainError, GuestMemoryError):
        pass
    check_writes(original, mem.snapshot(), allowed)


def serve_chain(vq: Virtqueue, mem: Memory, head: int, mode: int,
                allowed: list[tuple[int, int]]) -> None:
    try:
        chain = vq.walk(head)
        request = vq.read_request(chain)
    except (ChainError, GuestMemoryError):
        if head >= vq.num:
            raise ChainError(f"head {head} out of range") from None
        vq.push_used(head, 0)
        return
    check_chain(mem.memory, chain, request, vq.max_request)
    response = _response(request, mode)
    written = 0
    if response is not None and len(response) <= chain.writable_len:
        written = vq.write_response(chain, response)
        if written != len(response):
            raise Finding(f"wrote {written} of a {len(response)}-byte response")
        check_response(mem.memory, chain, response)
        allowed.extend((a, a + n) for a, n in chain.writable)
    index = vq.used_idx % vq.num
    vq.push_used(head, written)
    entry = _USED_ELEM.unpack(mem.memory.uva_view(vq.used_uva + 4 + 8 * index, 8))
    if entry != (head, written):
        raise Finding(f"used entry {entry} after pushing ({head}, {written})")


def check_chain(memory: GuestMemory, chain: Chain, request: bytes, max_request: int) -> None:
    if len(request) != chain.readable_len:
        raise Finding(f"request of {len(request)} bytes from {chain.readable_len} readable")
    if chain.readable_len + chain.writable_len > max_request:
        raise Finding("a chain longer than max_request was accepted")
    for addr, length in (*chain.readable, *chain.writable):
        memory.view(addr, length).release()  # raises if walk let an invalid range through


def check_response(memory: GuestMemory, chain: Chain, response: bytes) -> None:
    """What the writable buffers hold now (when they do not overlap, so later pieces
    cannot have overwritten earlier ones)."""
    spans = sorted((a, a + n) for a, n in chain.writable if n)
    if any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)):
        return
    got = bytearray()
    for addr, length in chain.writable:
        got += memory.read(addr, length)
    if bytes(got[: len(response)]) != response:
        raise Finding("the writable buffers do not hold the response")


def check_writes(before: bytes, after: bytes, allowed: list[tuple[int, int]]) -> None:
    if before == after:
        return
    step = 512
    for chunk in range(0, len(before), step):
        if before[chunk : chunk + step] == after[chunk : chunk + step]:
            continue
        for offset in range(chunk, min(chunk + step, len(before))):
            if before[offset] != after[offset] and not any(a <= offset < b for a, b in allowed):
                raise Finding(f"guest memory at gpa {offset:#x} changed outside the used "
                              "ring and the chains' writable buffers")
