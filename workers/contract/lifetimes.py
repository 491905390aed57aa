"""Lifetimes that eviction cannot cut short: heads, calibrations, tables, batches, job outcomes, rate counters.

Under `maxmemory` with `volatile-lru` (compose, `logprobe serve`) Redis evicts only keys that carry a TTL, so these
keys carry none. A durable key's deadline is its score (unix seconds) in the sorted set `expiry_key(key)`, which
shares the key's hash slot (`lp:expiry:{tag}`, after the key's own hash tag): one script deletes a key and its entry
together, on a single Redis or a cluster. `EXPIRY_SETS` lists the sorted sets a sweep visits (the gateway's,
app/platform/expiry.py). Records and other caches keep real TTLs: they are what eviction may take.
"""

from __future__ import annotations

from typing import Any

EXPIRY_SETS = "lp:expiry-sets"

# KEYS[1]: an expiry set. ARGV: now, at most this many. Deletes the keys whose deadline has passed, with their
# entries; answers how many it deleted and how many entries are left.
SWEEP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, key in ipairs(due) do redis.call('DEL', key) end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return {#due, redis.call('ZCARD', KEYS[1])}
"""


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes: what lies inside its first non-empty braces."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else None


def expiry_key(key: str) -> str:
    """The sorted set that holds `key`'s deadline, in `key`'s hash slot (a durable key always has a hash tag)."""
    tag = hash_tag(key)
    if tag is None:
        raise ValueError(f"{key!r} has no hash tag: its deadline could not share its slot")
    return f"lp:expiry:{{{tag}}}"


def keep_until(pipe: Any, deadline: float, *keys: str) -> None:
    """Queue on `pipe` (sync or asyncio, transaction or not) the deadlines of `keys`, which share one slot."""
    for key in keys:
        pipe.zadd(expiry_key(key), {key: deadline})


def announce(client: Any, *keys: str) -> Any:
    """List the expiry sets of `keys` for the sweep (idempotent; an awaitable on an asyncio client or pipeline)."""
    return client.sadd(EXPIRY_SETS, *{expiry_key(key) for key in keys})
