"""The efird virtio device: each descriptor chain carries one request envelope.

Device logic only; it sees bytes in and bytes out and knows nothing about rings. Requests
are served one at a time (as one SMM handler would), so the service needs no locking.
Requests that may block (a durable write, signature checks) run in a worker thread,
the rest inline on the event loop, so a read costs no thread hand-off.
"""

from __future__ import annotations

import logging
import time

import trio

from efird.domain import Domain
from efird.envelope import Refusal, describe
from efird.log import Throttle, get_logger
from efird.vhost.backend import FastLock
from efird.vhost.memory import GuestMemory
from efird.vhost.virtqueue import DEFAULT_MAX_REQUEST

log = get_logger("efird.device")


class EnvelopeDevice:
    def __init__(self, domain: Domain, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        self.domain = domain
        self.max_request = max_request
        self.lock = FastLock()
        self._limiter = trio.CapacityLimiter(1)
        self.requests = 0
        self.refused = 0
        self._throttle = Throttle()
        self._debug = log.is_enabled_for(logging.DEBUG) if hasattr(log, "is_enabled_for") \
            else True

    async def handle(self, request: bytes) -> bytes | None:
        await self.lock.acquire()  # does not yield at all when nothing is in flight
        try:
            self.requests += 1
            if self.domain.dispatcher.may_block(request):
                return await trio.to_thread.run_sync(self._serve, request,
                                                     limiter=self._limiter)
            return self._serve(request)
        finally:
            self.lock.release()

    def _serve(self, request: bytes) -> bytes | None:
        start = time.perf_counter_ns()
        try:
            response = self.domain.dispatcher.dispatch(request)
        except Refusal as refusal:
            self.refused += 1
            held = self._throttle.admit(refusal.status)
            if held is not None:  # a hostile guest can send nothing but these
                log.info("request refused", status=refusal.status.name, reason=refusal.reason,
                         suppressed_since_last=held)
            return None
        if self._debug:
            log.debug("request", **describe(request, response),
                      us=round((time.perf_counter_ns() - start) / 1000, 1))
        return bytes(response)

    def attach_memory(self, memory: GuestMemory | None) -> None:
        """The frontend's guest memory (None when it goes): BuildPageTables writes there."""
        self.domain.bootmem.attach_memory(memory)

    async def quiesce(self) -> None:
        """Wait for the request in flight, if any, then hold off new ones."""
        await self.lock.acquire()
