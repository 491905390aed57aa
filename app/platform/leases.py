"""Work that outlives the gateway that started it: each item is named in a Redis set and driven by whichever gateway
holds its lease, renewed while it works. A gateway that dies lets its leases lapse, and another one's sweep takes
the items over and drives them again (drives are written to resume: they skip what is already done)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.exceptions
from redis.asyncio import Redis

from workers.contract.keys import JOBS_TAG
from workers.contract.lifetimes import CLAIM_UNTIL, expiry_key, forget
from workers.contract.names import as_bytes

log = logging.getLogger("app.platform.leases")

LEASE_S = 30
SWEEP_S = 2.0


class LeasedWork:
    """Drives the items of `active` (a Redis set) this gateway holds a lease on; `drive(name)` does one item's work
    and removes it from the set when it is done for good."""

    def __init__(
        self, redis: Redis, active: str, kind: str, drive: Callable[[str], Awaitable[None]], sweep_s: float = SWEEP_S
    ) -> None:
        self.redis = redis
        self.active = active
        self.kind = kind  # names the leases and the tasks
        self.drive = drive
        self.sweep_s = sweep_s
        self.owner = uuid.uuid4().hex
        self.running: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._claim = redis.register_script(CLAIM_UNTIL)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name=f"{self.kind}-sweeper")

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *self.running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def add(self, name: str, first: Callable[[], Awaitable[None]] | None = None) -> None:
        """Name a new item and start it here (with `first` instead of `drive`, when given: what its creator already
        knows); should this gateway die, another resumes it with `drive`."""
        await self.redis.sadd(self.active, name)
        if await self._take_lease(name):
            self._spawn(name, first or (lambda: self.drive(name)))

    def _spawn(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(self._run(name, work), name=f"{self.kind}-{name}")
        self.running[name] = task
        task.add_done_callback(lambda _: self.running.pop(name, None))

    async def _sweep(self) -> None:
        while True:
            try:
                for member in await self.redis.smembers(self.active):
                    name = (as_bytes(member) or b"").decode()
                    if name not in self.running and await self._take_lease(name):
                        self._spawn(name, lambda n=name: self.drive(n))  # type: ignore[misc]
            except Exception:  # Redis away: try again at the next sweep
                log.warning("%s sweep failed", self.kind, exc_info=True)
            await asyncio.sleep(self.sweep_s)

    def _lease(self, name: str) -> str:
        return f"lp:{JOBS_TAG}:lease:{self.kind}:{name}"  # the job plane's slot, whose deadlines are always swept

    async def _take_lease(self, name: str) -> bool:
        """Take or extend the lease unless another gateway holds it: a deadline, not a TTL, so that a flood of
        records under volatile-lru cannot evict it and let a second gateway drive the same item."""
        key = self._lease(name)
        now = time.time()
        return bool(await self._claim(keys=[key, expiry_key(key)], args=[self.owner, now + LEASE_S, now]))

    async def _renew(self, name: str) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            await self._take_lease(name)

    async def _run(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        renew = asyncio.create_task(self._renew(name))
        try:
            await work()
        except Exception:  # Redis away or a bug: the lease lapses and a sweep resumes the item
            log.exception("%s %s interrupted", self.kind, name)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            with contextlib.suppress(redis.exceptions.RedisError):
                pipe = self.redis.pipeline(transaction=False)
                forget(pipe, self._lease(name))
                await pipe.execute()
