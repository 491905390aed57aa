"""What each tenant's records take in Redis: the workers that write records count their bytes per tenant and day,
and the gateway refuses new records once the days whose records may still live hold a tenant's quota
(`max_record_bytes_per_tenant`, app/serving/usage.py). The count is conservative: a record evicted or overwritten
early still counts until its day's counter ends. Counters carry deadlines, not TTLs (workers/contract/lifetimes.py):
eviction cannot reset them."""

from __future__ import annotations

from typing import Any

from workers.contract.keys import tenant_tag
from workers.contract.lifetimes import announce, keep_until

DAY_S = 86400


def usage_key(tenant: str, day: int) -> str:
    """The bytes of records `tenant` wrote on `day` (days since the epoch)."""
    return f"lp:usage:{tenant_tag(tenant)}:record-bytes:{day}"


def usage_keys(tenant: str, now: float, record_ttl_s: int) -> list[str]:
    """The counters of the days whose records may still be alive (one slot: the tenant's)."""
    return [usage_key(tenant, day) for day in range(int((now - record_ttl_s) // DAY_S), int(now // DAY_S) + 1)]


def count_record_bytes(pipe: Any, tenant: str, nbytes: int, now: float, record_ttl_s: int) -> None:
    """Queue on a non-transactional pipeline the count of `nbytes` written for `tenant` now; the day's counter ends
    when the last record written that day has."""
    day = int(now // DAY_S)
    key = usage_key(tenant, day)
    pipe.incrby(key, nbytes)
    keep_until(pipe, (day + 1) * DAY_S + record_ttl_s, key)
    announce(pipe, key)


# ---------------------------------------------------------------- what a tenant keeps: heads, calibrations, tables,
# batches (`max_object_bytes_per_tenant`, app/serving/usage.py). One hash per tenant, in the tenant's slot, from each
# object's main key to the bytes it holds (the lengths of its stored values: a table's counts, a calibration's JSON,
# a head's state, request and weights, a batch's spec, inputs and result lines). An entry whose object is gone
# (deleted, expired) is dropped when the gateway next needs room; the hash has no deadline (one small hash per key).


def object_usage_key(tenant: str) -> str:
    return f"lp:usage:{tenant_tag(tenant)}:object-bytes"


# KEYS[1]: a tenant's object-bytes hash. ARGV: object key, bytes, limit (0: none), mode ("set": the object now holds
# `bytes`; "add": it holds `bytes` more, or fewer when negative). Refused when it adds bytes and the tenant's objects
# would then hold more than the limit. Answers {1 or 0, the tenant's total after (refused: as it is)}.
RESERVE = """
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local n = tonumber(ARGV[2])
local new = n
if ARGV[4] == 'add' then new = old + n end
local limit = tonumber(ARGV[3])
if new > old and limit > 0 and total - old + new > limit then return {0, total} end
if new <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], new) end
return {1, total - old + new}
"""

# KEYS[1]: a tenant's object-bytes hash, KEYS[2]: one of its objects that is a hash (a head: same slot). Sets the
# object's entry to the lengths of its fields' values, when both the object and its entry exist (never refused: what
# a worker writes into an object the gateway admitted, as a head's weights).
RECOUNT_HASH = """
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('HEXISTS', KEYS[1], KEYS[2]) == 0 then return 0 end
local n = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do n = n + redis.call('HSTRLEN', KEYS[2], field) end
redis.call('HSET', KEYS[1], KEYS[2], n)
return n
"""
