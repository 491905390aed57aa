"""A tenant's quota of record bytes (`max_record_bytes_per_tenant`): checked before a job that writes a record is
submitted, against what the workers counted (workers/contract/usage.py)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from app.platform.errors import ApiError
from workers.contract.jobs import AnyJob, BytesJob, ContrastJob, GenerateJob, ScoreJob
from workers.contract.usage import DAY_S, usage_keys

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
