"""A tenant's quotas of bytes: of records (`max_record_bytes_per_tenant`), checked before a job that writes a record
is submitted, against what the workers counted; and of everything else it keeps (`max_object_bytes_per_tenant`),
enforced when an object is written (workers/contract/usage.py)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from app.platform.errors import ApiError
from workers.contract.jobs import AnyJob, BytesJob, ContrastJob, GenerateJob, ScoreJob
from workers.contract.names import as_bytes
from workers.contract.usage import DAY_S, RESERVE, object_usage_key, usage_keys

RECORD_WRITERS = (ScoreJob, GenerateJob, ContrastJob, BytesJob)


@dataclass(frozen=True)
class RecordQuota:
    limit: int  # bytes; 0: none
    record_ttl_s: int

    async def check(self, redis: Redis, job: AnyJob) -> None:
        """429 quota_exceeded when the job would write a record and its tenant's records hold the quota, with a
        Retry-After until the oldest day still counted ends."""
        if self.limit <= 0 or not isinstance(job, RECORD_WRITERS):
            return
        now = time.time()
        counts = [int(v) if v else 0 for v in await redis.mget(usage_keys(job.tenant, now, self.record_ttl_s))]
        used = sum(counts)
        if used < self.limit:
            return
        oldest = next(i for i, count in enumerate(counts) if count)  # the first counter that still holds bytes
        day = int((now - self.record_ttl_s) // DAY_S) + oldest
        retry = max(1, math.ceil((day + 1) * DAY_S + self.record_ttl_s - now))
        raise ApiError(
            429,
            "quota_exceeded",
            f"this key's records hold {used} bytes, its quota of {self.limit} (max_record_bytes_per_tenant); "
            "they free as they expire",
            "record_bytes",
            headers={"Retry-After": str(retry)},
        )


OBJECT_BYTES = "object_bytes"  # the `param` of a 429 for the quota below


@dataclass(frozen=True)
class ObjectQuota:
    """A tenant's one budget of bytes for everything it keeps besides records: heads (state, request, weights),
    calibrations, frequency tables and batches (spec, inputs, result lines), counted per object in the tenant's
    object-bytes hash (workers/contract/usage.py) when it is written and released when it is deleted or expires.
    One budget, not one per kind: it is one store, and a tenant spends it where its work needs it."""

    limit: int  # bytes; 0: none

    async def record(self, redis: Redis, tenant: str, key: str, nbytes: int, mode: str = "set") -> None:
        """Count `key`'s bytes (`mode` "set": it holds `nbytes`; "add": `nbytes` more), or 429 `quota_exceeded` when
        they do not fit. Entries of objects gone meanwhile are dropped first when there is no room."""
        script = redis.register_script(RESERVE)
        args: list[str | int] = [key, nbytes, self.limit, mode]
        ok, total = await script(keys=[object_usage_key(tenant)], args=args)
        if not ok:
            await self.used(redis, tenant)  # drop what was deleted or expired, then try once more
            ok, total = await script(keys=[object_usage_key(tenant)], args=args)
        if not ok:
            raise ApiError(
                429,
                "quota_exceeded",
                f"this key's heads, calibrations, tables and batches hold {int(total)} bytes; {nbytes} more would "
                f"pass its quota of {self.limit} (max_object_bytes_per_tenant): delete some and retry",
                OBJECT_BYTES,
            )

    @staticmethod
    async def count(redis: Redis, tenant: str, key: str, nbytes: int, mode: str = "set") -> None:
        """Count bytes already written that the quota cannot refuse (what replaces a refused line, a finished
        batch's dropped inputs)."""
        await redis.register_script(RESERVE)(keys=[object_usage_key(tenant)], args=[key, nbytes, 0, mode])

    async def check(self, redis: Redis, tenant: str, nbytes: int) -> None:
        """429 `quota_exceeded` now, before the work that makes an object, when `nbytes` more would not fit."""
        if self.limit > 0 and await self.used(redis, tenant) + nbytes > self.limit:
            raise ApiError(
                429,
                "quota_exceeded",
                f"this key's heads, calibrations, tables and batches are at their quota of {self.limit} bytes "
                "(max_object_bytes_per_tenant): delete some and retry",
                OBJECT_BYTES,
            )

    @staticmethod
    async def used(redis: Redis, tenant: str) -> int:
        """The bytes the tenant's live objects hold; entries of objects that are gone are dropped."""
        usage = object_usage_key(tenant)
        entries = {(as_bytes(k) or b"").decode(): int(v) for k, v in (await redis.hgetall(usage)).items()}
        if not entries:
            return 0
        pipe = redis.pipeline(transaction=False)
        for key in entries:
            pipe.exists(key)
        gone = [key for key, there in zip(entries, await pipe.execute(), strict=True) if not there]
        if gone:
            await redis.hdel(usage, *gone)
        return sum(n for key, n in entries.items() if key not in gone)

    @staticmethod
    async def release(redis: Redis, tenant: str, *keys: str) -> None:
        """Forget deleted objects' bytes (allowed when Redis is full: HDEL frees memory)."""
        await redis.hdel(object_usage_key(tenant), *keys)
