"""Lifetimes and per-tenant quotas of what tenants create (frequency tables, calibrations, heads, batches).

Their keys carry no Redis TTL, so that eviction never takes them: a deadline, swept by the gateways
(workers/contract/lifetimes.py, app/platform/expiry.py).

Each kind keeps a per-tenant index: a Redis hash from the object's id to a small JSON summary, so listing and
counting never SCAN. An index holds at most its quota of entries; entries whose object is gone (expired, evicted,
deleted) are dropped when the index is read. The limits are read from the environment at import; they move into
`Settings` later.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from app.platform.errors import ApiError
from workers.contract.lifetimes import announce, expiry_key, keep_until
from workers.contract.names import as_bytes


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


MAX_TABLES_PER_TENANT = _env_int("LOGPROBE_MAX_TABLES_PER_TENANT", 100)
MAX_CALIBRATIONS_PER_TENANT = _env_int("LOGPROBE_MAX_CALIBRATIONS_PER_TENANT", 100)
MAX_ACTIVE_BATCHES_PER_TENANT = _env_int("LOGPROBE_MAX_ACTIVE_BATCHES_PER_TENANT", 100)
OBJECT_TTL_S = _env_int("LOGPROBE_OBJECT_TTL_S", 30 * 24 * 3600)  # tables, calibrations, unfinished batches
BATCH_MAX_ATTEMPTS = _env_int("LOGPROBE_BATCH_MAX_ATTEMPTS", 8)  # per input, on retryable errors
BATCH_RETRY_MAX_DELAY_S = _env_float("LOGPROBE_BATCH_RETRY_MAX_DELAY_S", 30.0)  # the longest wait between tries

# KEYS: the index, its expiry set. Add `field` to the index unless it is full (replacing an existing entry is
# always allowed); the index lives as long as its newest entry (a deadline, never a TTL: workers/contract/lifetimes).
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'GT', ARGV[4], KEYS[1])
return 1
"""


def quota_error(what: str, limit: int) -> ApiError:
    return ApiError(
        429, "quota_exceeded", f"this key already holds {limit} {what}, its quota; delete some and retry", what
    )


async def live_entries(redis: Redis, index: str, key_of: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    """The index's entries whose object still exists; the others are dropped from the index."""
    entries = {(as_bytes(k) or b"").decode(): json.loads(v) for k, v in (await redis.hgetall(index)).items()}
    if not entries:
        return {}
    pipe = redis.pipeline(transaction=False)
    for name in entries:
        pipe.exists(key_of(name))
    found = await pipe.execute()
    gone = [name for name, there in zip(entries, found, strict=True) if not there]
    if gone:
        await redis.hdel(index, *gone)
    return {name: entry for name, entry in entries.items() if name not in gone}


async def claim(
    redis: Redis,
    index: str,
    name: str,
    entry: dict[str, Any],
    limit: int,
    what: str,
    key_of: Callable[[str], str],
    ttl_s: int = OBJECT_TTL_S,
) -> None:
    """Put `name` in the tenant's index, or 429 `quota_exceeded` when the index is full of live objects."""
    script = redis.register_script(_CLAIM)
    args: list[str | int] = [name, json.dumps(entry), limit, expires_at(ttl_s)]
    keys = [index, expiry_key(index)]
    if not await script(keys=keys, args=args):
        await live_entries(redis, index, key_of)  # drop what expired, then try once more
        if not await script(keys=keys, args=args):
            raise quota_error(what, limit)
    await announce(redis, index)


async def check_room(redis: Redis, index: str, limit: int, what: str, key_of: Callable[[str], str]) -> None:
    """429 `quota_exceeded` now, before costly work, when the index is already full of live objects."""
    if await redis.hlen(index) >= limit and len(await live_entries(redis, index, key_of)) >= limit:
        raise quota_error(what, limit)


def expires_at(ttl_s: int = OBJECT_TTL_S) -> int:
    return int(time.time()) + ttl_s


async def store_durable(redis: Redis, key: str, value: bytes | str, deadline: int) -> None:
    """SET `key` with no TTL (eviction never takes it) and its deadline (workers/contract/lifetimes.py)."""
    pipe = redis.pipeline(transaction=True)
    pipe.set(key, value)
    keep_until(pipe, deadline, key)
    await pipe.execute()
    await announce(redis, key)
