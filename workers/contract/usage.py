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
