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


# Short-lived state (leases, inflight marks, cancel marks, job results) is durable too: under volatile-lru another
# tenant's records could otherwise evict it. Where its end matters at once (a lease lapses, a mark stops counting)
# readers compare its deadline with now; the sweep deletes it later.

# KEYS: a key, its expiry set. ARGV: value, deadline, now. Sets the key to `value` until `deadline`, unless it holds
# another value whose deadline is still ahead; answers 1 when it set it.
CLAIM_UNTIL = """
local held = redis.call('GET', KEYS[1])
local due = redis.call('ZSCORE', KEYS[2], KEYS[1])
if held and held ~= ARGV[1] and (not due or tonumber(due) > tonumber(ARGV[3])) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1
"""

# KEYS: a key, its expiry set. ARGV: now. The key's value while its deadline is ahead (or it has none), else nil.
READ_LIVE = """
local due = redis.call('ZSCORE', KEYS[2], KEYS[1])
if due and tonumber(due) <= tonumber(ARGV[1]) then return false end
return redis.call('GET', KEYS[1])
"""


def set_until(pipe: Any, key: str, value: bytes | str | int, deadline: float) -> None:
    """Queue on `pipe` a SET of `key` with no TTL, and its deadline (the key's slot must be swept: announce it, or
    use the job plane's slot, which is always swept)."""
    pipe.set(key, value)
    keep_until(pipe, deadline, key)


def forget(pipe: Any, *keys: str) -> None:
    """Queue the deletion of durable `keys` (one slot) with their deadlines; allowed when Redis is full (DEL, ZREM
    free memory), in a plain pipeline."""
    pipe.delete(*keys)
    pipe.zrem(expiry_key(keys[0]), *keys)


def put_until(client: Any, key: str, value: bytes | str, deadline: float) -> Any:
    """SET `key` to `value` with no TTL and its deadline, in one transaction (the key's slot must be swept: the job
    plane's always is); an awaitable on an asyncio client."""
    pipe = client.pipeline(transaction=True)
    set_until(pipe, key, value, deadline)
    return pipe.execute()
