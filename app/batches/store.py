"""Batches in Redis: a hash (spec, status, times), a list of inputs, a hash of result lines by input index and a
set of the failed indices, all under the tenant; plus the set of batches not finished yet."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from app.platform.errors import ApiError
from workers.protocol import as_bytes

ACTIVE = "lp:batches:active"  # members "tenant\x1fid": batches not finished yet
FINISHED = ("completed", "cancelled")


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def batch_key(tenant: str, batch_id: str, part: str = "") -> str:
    return f"lp:batch:{tenant}:{batch_id}" + (f":{part}" if part else "")


async def create_batch(redis: Redis, tenant: str, spec: dict[str, Any], inputs: list[dict[str, Any]]) -> str:
    """Store a new batch and mark it active; a runner picks it up within SWEEP_S."""
    batch_id = new_batch_id()
    pipe = redis.pipeline(transaction=True)
    pipe.hset(
        batch_key(tenant, batch_id),
        mapping={"spec": json.dumps(spec), "status": "queued", "total": len(inputs), "created_at": int(time.time())},
    )
    pipe.rpush(batch_key(tenant, batch_id, "inputs"), *(json.dumps(item) for item in inputs))
    pipe.sadd(ACTIVE, f"{tenant}\x1f{batch_id}")
    await pipe.execute()
    return batch_id


async def batch_status(redis: Redis, tenant: str, batch_id: str) -> dict[str, Any]:
    """The batch object (404 for an unknown id or another tenant's)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(batch_key(tenant, batch_id))
    pipe.hlen(batch_key(tenant, batch_id, "results"))
    pipe.scard(batch_key(tenant, batch_id, "failed"))
    fields, done, failed = await pipe.execute()
    if not fields:
        raise ApiError(404, "batch_not_found", f"no batch {batch_id!r}", "batch_id")
    values = {k.decode(): v.decode() for k, v in fields.items()}
    spec = json.loads(values["spec"])
    return {
        "id": batch_id,
        "object": "batch",
        "status": values["status"],
        "model": spec["model"],
        "analyses": [a["family"] for a in spec["analyses"]],
        "total": int(values["total"]),
        "completed": int(done) - int(failed),
        "failed": int(failed),
        "created_at": int(values["created_at"]),
        "finished_at": int(values["finished_at"]) if "finished_at" in values else None,
    }


async def cancel_batch(redis: Redis, tenant: str, batch_id: str, ttl_s: int) -> None:
    status = await batch_status(redis, tenant, batch_id)
    if status["status"] in FINISHED:
        raise ApiError(409, "batch_finished", f"batch {batch_id!r} is already {status['status']}", "batch_id")
    await finish_batch(redis, tenant, batch_id, "cancelled", ttl_s)


async def result_lines(redis: Redis, tenant: str, batch_id: str, total: int, chunk: int = 500) -> AsyncIterator[bytes]:
    """The result lines in input order, read a chunk at a time."""
    key = batch_key(tenant, batch_id, "results")
    for lo in range(0, total, chunk):
        fields = [str(i) for i in range(lo, min(total, lo + chunk))]
        for line in await redis.hmget(key, fields):
            if line is not None:
                yield (as_bytes(line) or b"") + b"\n"


async def finish_batch(redis: Redis, tenant: str, batch_id: str, status: str, ttl_s: int) -> None:
    pipe = redis.pipeline(transaction=True)
    pipe.hset(batch_key(tenant, batch_id), mapping={"status": status, "finished_at": int(time.time())})
    for part in ("", "inputs", "results", "failed"):
        pipe.expire(batch_key(tenant, batch_id, part), ttl_s)
    pipe.srem(ACTIVE, f"{tenant}\x1f{batch_id}")
    await pipe.execute()
