"""The sweep that ends durable keys' lifetimes (workers/contract/lifetimes.py): every `every_s` each gateway deletes
the keys whose deadline has passed. Gateways sweeping at once delete each key once (one script per expiry set);
until a sweep comes by, an object past its deadline is still found (at most `every_s` longer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis

from workers.contract.keys import job_outcome_key
from workers.contract.lifetimes import EXPIRY_SETS, SWEEP, expiry_key
from workers.contract.names import as_bytes

log = logging.getLogger("app.platform.expiry")

# Always swept: the job plane's set, which workers write without announcing it (one set, on the jobs' slot).
FIXED = (expiry_key(job_outcome_key("-")),)
CHUNK = 500


async def sweep(redis: Redis, now: float | None = None) -> int:
    """Delete every durable key whose deadline is at or before `now` (default: now); how many were deleted. An
    expiry set left empty leaves EXPIRY_SETS (and is listed again should a writer have just added to it)."""
    now = time.time() if now is None else now
    script = redis.register_script(SWEEP)
    listed = {(as_bytes(m) or b"").decode() async for m in redis.sscan_iter(EXPIRY_SETS, count=CHUNK)}
    deleted = 0
    for name in [*FIXED, *sorted(listed - set(FIXED))]:
        while True:
            gone, left = await script(keys=[name], args=[now, CHUNK])
            deleted += int(gone)
            if int(gone) < CHUNK:
                break
        if int(left) == 0 and name not in FIXED:
            await redis.srem(EXPIRY_SETS, name)
            if await redis.zcard(name):  # a writer added and announced it meanwhile: keep it listed
                await redis.sadd(EXPIRY_SETS, name)
    return deleted


class ExpirySweeper:
    """Runs `sweep` every `every_s` seconds until stopped; a failed sweep (Redis away) is logged and tried again."""

    def __init__(self, redis: Redis, every_s: float) -> None:
        self.redis = redis
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="expiry-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                deleted = await sweep(self.redis)
                if deleted:
                    log.info("expiry sweep deleted %d keys past their lifetime", deleted)
            except Exception:
                log.warning("expiry sweep failed", exc_info=True)
            await asyncio.sleep(self.every_s)
