"""Turns in the job queue, shared fairly between tenants.

Workers take a model's jobs in stream order, so a tenant that sends 500 requests at once would put 500 jobs
ahead of another tenant's one. Here each tenant holds at most `share` jobs of a model in the stream at a time
(per gateway process); its further requests wait in this process, in arrival order, and each job that ends
hands its turn to the tenant's next request. Another tenant's job therefore waits behind at most `share` jobs
of each busy tenant, not behind all of them. `share` is sized to keep the workers full for a tenant alone
(`LOGPROBE_TENANT_SHARE`, default 64: two workers' batches).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from app.platform import metrics
from app.platform.limits import parked

Lane = tuple[str, str]  # (tenant, model)


class FairShare:
    def __init__(self, share: int) -> None:
        self.share = share
        self._held: dict[Lane, int] = {}
        self._waiting: dict[Lane, deque[asyncio.Future[None]]] = {}

    def held(self, tenant: str, model: str) -> int:
        return self._held.get((tenant, model), 0)

    def waiting(self, tenant: str, model: str) -> int:
        return len(self._waiting.get((tenant, model), ()))

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str, model: str) -> AsyncIterator[None]:
        """Hold one of the tenant's turns for this model while the body runs (submit and wait for a job)."""
        lane = (tenant, model)
        if self._held.get(lane, 0) < self.share and not self._waiting.get(lane):
            self._held[lane] = self._held.get(lane, 0) + 1
        else:
            await self._wait_turn(lane)
        try:
            yield
        finally:
            self._hand_on(lane)

    async def _wait_turn(self, lane: Lane) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(lane, deque())
        queue.append(future)
        metrics.FAIR_SHARE_WAITING.inc()
        try:
            with parked():  # waiting for a turn costs this process nothing
                await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._hand_on(lane)  # the turn reached us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # a turn that ended meanwhile already skipped it
                    queue.remove(future)
                self._drop_if_idle(lane)
            raise
        finally:
            metrics.FAIR_SHARE_WAITING.dec()

    def _hand_on(self, lane: Lane) -> None:
        """A turn ends: the tenant's next waiting request takes it, or the tenant holds one turn fewer."""
        queue = self._waiting.get(lane)
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._held[lane] -= 1
        self._drop_if_idle(lane)

    def _drop_if_idle(self, lane: Lane) -> None:
        if not self._waiting.get(lane):
            self._waiting.pop(lane, None)
            if self._held.get(lane) == 0:
                self._held.pop(lane)
