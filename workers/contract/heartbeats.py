"""Which workers are alive: per queue, sorted sets of worker ids scored by the end of each one's last heartbeat
(alive_key, serving_key). They carry no TTL, so a flood of records under volatile-lru cannot evict them and make a
served model look unserved; a worker that stops beating drops out when its score passes."""

from __future__ import annotations

from typing import Any

from workers.contract.keys import JOBS_TAG, alive_key, serving_key
from workers.contract.names import as_bytes


def beat(pipe: Any, queue: str, worker_id: str, now: float, ttl_s: float) -> None:
    """Queue on `pipe` a heartbeat of `worker_id` for `queue`, good until `now + ttl_s`, and drop lapsed ones."""
    for key in (alive_key(queue), serving_key(queue)):
        pipe.zadd(key, {worker_id: now + ttl_s})
        pipe.zremrangebyscore(key, "-inf", now)


def retire(pipe: Any, queue: str, worker_id: str) -> None:
    """Queue the end of `worker_id`'s life in `queue` (it stays in serving_key until its last beat ends)."""
    pipe.zrem(alive_key(queue), worker_id)


def live_ids(client: Any, key: str, now: float) -> Any:
    """The worker ids of `key` (alive_key or serving_key) whose heartbeat has not ended (awaitable on asyncio)."""
    return client.zrangebyscore(key, f"({now}", "+inf")


def alive_on_host(client: Any, host: str, now: float) -> bool:
    """Whether a worker of `host` (a container's hostname) has a heartbeat that has not ended, on any queue."""
    for key in client.scan_iter(match=f"lp:{JOBS_TAG}:alive:*", count=1000):
        if any((as_bytes(w) or b"").decode().startswith(f"{host}-") for w in live_ids(client, key, now)):
            return True
    return False
