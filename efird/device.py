"""The efird virtio device: each descriptor chain carries one request envelope.

Device logic only; it sees bytes in and bytes out and knows nothing about rings. Requests
are served one at a time (as one SMM handler would), so the service needs no locking.
Requests that may block (a durable write, signature checks) run in a worker thread,
the rest inline on the event loop, so a read costs no thread hand-off.
"""

from __future__ import annotations

import structlog
import trio

from efird.domain import Domain
from efird.envelope import Refusal

log = structlog.get_logger("efird.device")


class EnvelopeDevice:
    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self.requests = 0
        self.refused = 0

    async def handle(self, request: bytes) -> bytes | None:
        async with self.lock:
            self.requests += 1
            if self.domain.dispatcher.may_block(request):
                return await trio.to_thread.run_sync(self._serve, request,
                                                     limiter=self._limiter)
            return self._serve(request)

    def _serve(self, request: bytes) -> bytes | None:
        try:
            response = self.domain.dispatcher.dispatch(request)
        except Refusal as refusal:
            self.refused += 1
            log.info("request refused", status=refusal.status.name, reason=refusal.reason)
            return None
        return bytes(response)

    async def quiesce(self) -> None:
        """Wait for the request in flight, if any, then hold off new ones."""
        await self.lock.acquire()
