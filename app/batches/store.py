"""Batches in Redis: a hash (spec, status, times), a list of inputs, a hash of result lines by input index and a
set of the failed indices, all under the tenant (a finished batch keeps no inputs: only the custom ids of those that
never ran, which its `cancelled` lines name); plus the set of batches not finished yet, and per tenant an
index of its batches (a sorted set by creation time) and a hash of its unfinished ones (the quota).

An unfinished batch lives at most OBJECT_TTL_S, a finished one the record TTL: deadlines, not Redis TTLs, so that
eviction never takes a batch (workers/contract/lifetimes.py). A line is written, and a batch finished, only while
the batch is still running (one script each), so a cancelled or deleted batch never moves.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from app.platform.errors import ApiError
from app.serving import quotas
from app.serving.usage import ObjectQuota
from workers.contract.keys import tenant_tag
from workers.contract.lifetimes import announce, expiry_key, keep_until
from workers.contract.names import as_bytes

ACTIVE = "lp:batches:active"  # members "tenant\x1fid": batches not finished yet
FINISHED = ("completed", "cancelled")
PARTS = ("", "inputs", "results", "failed", "ids")
CHUNK = 500

_RUNNING = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'completed' or s == 'cancelled' then return 0 end
"""
# KEYS: batch, results, failed, the batch's expiry set. ARGV: index, line, failed (1/0). The parts end with the batch.
# Answers 1 + the length of the line it replaced (0: not written).
_WRITE_LINE = (
    _RUNNING
    + """
local replaced = redis.call('HSTRLEN', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('SADD', KEYS[3], ARGV[1]) else redis.call('SREM', KEYS[3], ARGV[1]) end
local deadline = redis.call('ZSCORE', KEYS[4], KEYS[1])
if deadline then redis.call('ZADD', KEYS[4], deadline, KEYS[2], deadline, KEYS[3]) end
return 1 + replaced
"""
)
# KEYS: the parts (PARTS), the batch's expiry set. ARGV: status, now, ttl. (The indexes live in other
# hash slots: finish_batch updates them after, and a runner's sweep drops a finished batch it still finds in ACTIVE.)
_FINISH = (
    _RUNNING
    + """
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
local deadline = tonumber(ARGV[2]) + tonumber(ARGV[3])
for i = 1, #KEYS - 1 do redis.call('ZADD', KEYS[#KEYS], deadline, KEYS[i]) end
return 1
"""
)
# KEYS: batch. Queued or in progress: in progress.
_START = _RUNNING + "redis.call('HSET', KEYS[1], 'status', 'in_progress') return 1"


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def batch_key(tenant: str, batch_id: str, part: str = "") -> str:
    """A batch's hash and its parts share one hash slot (their scripts touch them together); batches spread."""
    return f"lp:batch:{{{tenant}:{batch_id}}}" + (f":{part}" if part else "")


def index_key(tenant: str) -> str:
    return f"lp:batch-index:{tenant_tag(tenant)}"


def unfinished_key(tenant: str) -> str:
    return f"lp:batch-unfinished:{tenant_tag(tenant)}"


def not_found(batch_id: str) -> ApiError:
    return ApiError(404, "batch_not_found", f"no batch {batch_id!r}", "batch_id")


async def create_batch(
    redis: Redis,
    tenant: str,
    spec: dict[str, Any],
    inputs: list[dict[str, Any]],
    finished_ttl_s: int = 0,
    objects: ObjectQuota | None = None,
) -> str:
    """Store a new batch (429 `quota_exceeded` when the tenant has too many unfinished, or when its spec and
    inputs do not fit in the tenant's object bytes) and mark it active; a runner picks it up within SWEEP_S."""
    batch_id, now, ttl = new_batch_id(), int(time.time()), quotas.OBJECT_TTL_S
    spec_json, items = json.dumps(spec), [json.dumps(item) for item in inputs]
    input_bytes = sum(len(item.encode()) for item in items)
    pipe = redis.pipeline(transaction=True)
    pipe.hset(
        batch_key(tenant, batch_id),
        mapping={
            "spec": spec_json,
            "status": "queued",
            "total": len(inputs),
            "created_at": now,
            "input_bytes": input_bytes,
        },
    )
    pipe.rpush(batch_key(tenant, batch_id, "inputs"), *items)
    keep_until(pipe, now + ttl, batch_key(tenant, batch_id), batch_key(tenant, batch_id, "inputs"))
    await pipe.execute()
    await announce(redis, batch_key(tenant, batch_id))
    limit = quotas.MAX_ACTIVE_BATCHES_PER_TENANT
    try:
        await (objects or ObjectQuota(0)).record(
            redis, tenant, batch_key(tenant, batch_id), len(spec_json.encode()) + input_bytes
        )
        await quotas.claim(
            redis, unfinished_key(tenant), batch_id, {"created_at": now}, limit, "unfinished_batches",
            lambda b: batch_key(tenant, b), ttl,
        )  # fmt: skip
    except ApiError:
        await redis.delete(*(batch_key(tenant, batch_id, part) for part in PARTS))
        await ObjectQuota.release(redis, tenant, batch_key(tenant, batch_id))
        raise
    await redis.sadd(ACTIVE, f"{tenant}\x1f{batch_id}")
    pipe = redis.pipeline(transaction=True)
    pipe.zremrangebyscore(index_key(tenant), "-inf", now - ttl - finished_ttl_s)  # surely expired
    pipe.zadd(index_key(tenant), {batch_id: time.time()})  # not `now`: batches of one second keep their order
    keep_until(pipe, now + ttl + finished_ttl_s, index_key(tenant))
    await pipe.execute()
    await announce(redis, index_key(tenant))
    return batch_id


async def batch_status(redis: Redis, tenant: str, batch_id: str) -> dict[str, Any]:
    """The batch object (404 for an unknown id or another tenant's)."""
    found = await statuses(redis, tenant, [batch_id])
    if not found:
        raise not_found(batch_id)
    return found[0]


async def statuses(redis: Redis, tenant: str, batch_ids: list[str]) -> list[dict[str, Any]]:
    """The batch objects of those ids that still exist, in order."""
    pipe = redis.pipeline(transaction=False)
    for batch_id in batch_ids:
        pipe.hgetall(batch_key(tenant, batch_id))
        pipe.hlen(batch_key(tenant, batch_id, "results"))
        pipe.scard(batch_key(tenant, batch_id, "failed"))
        pipe.zscore(expiry_key(batch_key(tenant, batch_id)), batch_key(tenant, batch_id))
    replies = await pipe.execute()
    out = []
    for i, batch_id in enumerate(batch_ids):
        fields, done, failed, deadline = replies[4 * i : 4 * i + 4]
        if fields:
            out.append(_status(batch_id, fields, int(done), int(failed), deadline))
    return out


def _status(
    batch_id: str, fields: dict[bytes, bytes], done: int, failed: int, deadline: float | None
) -> dict[str, Any]:
    values = {k.decode(): v.decode() for k, v in fields.items()}
    spec, total = json.loads(values["spec"]), int(values["total"])
    return {
        "id": batch_id,
        "object": "batch",
        "status": values["status"],
        "model": spec["model"],
        "analyses": [a["family"] for a in spec["analyses"]] + (["consistency"] if spec.get("consistency") else []),
        "total": total,
        "completed": done - failed,
        "failed": failed,
        "cancelled": total - done if values["status"] == "cancelled" else 0,
        "created_at": int(values["created_at"]),
        "finished_at": int(values["finished_at"]) if "finished_at" in values else None,
        "expires_at": int(deadline) if deadline is not None else None,
    }


async def list_batches(
    redis: Redis, tenant: str, limit: int, after: str | None = None
) -> tuple[list[dict[str, Any]], bool] | None:
    """The tenant's batches, newest first, at most `limit` (those older than the batch `after`, when given), and
    whether there are more; None when `after` names no batch of the tenant's. Ids that expired are dropped from
    the index on the way."""
    found: list[dict[str, Any]] = []
    start = 0
    if after is not None:
        rank = await redis.zrevrank(index_key(tenant), after)
        if not isinstance(rank, int) or not await statuses(redis, tenant, [after]):
            return None
        start = rank + 1
    while len(found) <= limit:
        ids = [(as_bytes(b) or b"").decode() for b in await redis.zrevrange(index_key(tenant), start, start + limit)]
        if not ids:
            break
        page = await statuses(redis, tenant, ids)
        gone = set(ids) - {b["id"] for b in page}
        if gone:
            await redis.zrem(index_key(tenant), *gone)
        found += page
        start += len(ids) - len(gone)
    return found[:limit], len(found) > limit


async def start_batch(redis: Redis, tenant: str, batch_id: str) -> bool:
    """Mark a queued batch in progress; False when it is finished or gone."""
    return bool(await redis.register_script(_START)(keys=[batch_key(tenant, batch_id)]))


async def write_line(
    redis: Redis, tenant: str, batch_id: str, index: int, line: dict[str, Any], failed: bool, objects: ObjectQuota
) -> bool:
    """Keep an input's result line, unless the batch was cancelled or deleted meanwhile. Its bytes count against
    the tenant's object bytes: a line that does not fit is kept as the input's `quota_exceeded` error instead."""
    keys = [batch_key(tenant, batch_id, part) for part in ("", "results", "failed")]
    keys.append(expiry_key(keys[0]))
    text = json.dumps(line)
    try:
        await objects.record(redis, tenant, keys[0], len(text.encode()), "add")
    except ApiError as exc:
        error = {"code": exc.code, "message": exc.message, "param": exc.param}
        text, failed = json.dumps({**line, "record_id": None, "results": None, "error": error}), True
        await ObjectQuota.count(redis, tenant, keys[0], len(text.encode()), "add")
    args = [str(index), text, "1" if failed else "0"]
    written = int(await redis.register_script(_WRITE_LINE)(keys=keys, args=args))
    # not kept (cancelled, deleted: the entry goes with the batch), or it replaced an earlier line
    await ObjectQuota.count(redis, tenant, keys[0], -len(text.encode()) if not written else 1 - written, "add")
    return bool(written)


async def finish_batch(redis: Redis, tenant: str, batch_id: str, status: str, ttl_s: int) -> bool:
    """Mark a running batch `status` (completed or cancelled) and give its keys the finished lifetime; False
    when it had finished already or is gone."""
    keys = [batch_key(tenant, batch_id, part) for part in PARTS]
    keys.append(expiry_key(keys[0]))
    args: list[str | int] = [status, int(time.time()), ttl_s]
    if not await redis.register_script(_FINISH)(keys=keys, args=args):
        return False
    await announce(redis, keys[0])
    dropped = await drop_inputs(redis, tenant, batch_id)
    await ObjectQuota.count(redis, tenant, keys[0], -dropped, "add")
    await drop_finished(redis, tenant, batch_id)
    return True


async def drop_inputs(redis: Redis, tenant: str, batch_id: str) -> int:
    """A finished batch's inputs go (no line is written any more): the custom ids of those that never ran move to
    the `ids` part, for their `cancelled` lines. The bytes it freed (inputs less the ids kept)."""
    input_bytes = int(as_bytes(await redis.hget(batch_key(tenant, batch_id), "input_bytes")) or b"0")
    inputs, results, ids = (batch_key(tenant, batch_id, part) for part in ("inputs", "results", "ids"))
    total, never_ran = await redis.llen(inputs), dict[FieldT, EncodableT]()
    for lo in range(0, total, CHUNK):
        lines = await redis.hmget(results, [str(i) for i in range(lo, min(total, lo + CHUNK))])
        if None in lines:
            items = await redis.lrange(inputs, lo, lo + len(lines) - 1)
            for i, (line, item) in enumerate(zip(lines, items, strict=False)):
                custom_id = json.loads(item).get("custom_id") if line is None else None
                if custom_id is not None:
                    never_ran[str(lo + i)] = str(custom_id)
    pipe = redis.pipeline(transaction=True)
    if never_ran:
        pipe.hset(ids, mapping=never_ran)
    pipe.delete(inputs)
    pipe.hset(batch_key(tenant, batch_id), "input_bytes", 0)
    await pipe.execute()
    return input_bytes - sum(len(str(v).encode()) for v in never_ran.values())


async def drop_finished(redis: Redis, tenant: str, batch_id: str) -> None:
    """A finished batch leaves the active set and the tenant's unfinished ones (its quota)."""
    pipe = redis.pipeline(transaction=False)
    pipe.srem(ACTIVE, f"{tenant}\x1f{batch_id}")
    pipe.hdel(unfinished_key(tenant), batch_id)
    await pipe.execute()


async def forget_batch(redis: Redis, tenant: str, batch_id: str) -> None:
    """Drop a batch that expired or was deleted from the indexes (each on its own: they lie in other slots)."""
    pipe = redis.pipeline(transaction=False)
    pipe.srem(ACTIVE, f"{tenant}\x1f{batch_id}")
    pipe.hdel(unfinished_key(tenant), batch_id)
    pipe.zrem(index_key(tenant), batch_id)
    await pipe.execute()


async def cancel_batch(redis: Redis, tenant: str, batch_id: str, ttl_s: int) -> None:
    status = await batch_status(redis, tenant, batch_id)
    if status["status"] in FINISHED or not await finish_batch(redis, tenant, batch_id, "cancelled", ttl_s):
        status = await batch_status(redis, tenant, batch_id)
        raise ApiError(409, "batch_finished", f"batch {batch_id!r} is already {status['status']}", "batch_id")


async def delete_batch(redis: Redis, tenant: str, batch_id: str) -> None:
    """Stop the batch if it runs (no line is written after this) and remove it with its inputs and results."""
    removed = await redis.delete(*(batch_key(tenant, batch_id, part) for part in PARTS))
    await ObjectQuota.release(redis, tenant, batch_key(tenant, batch_id))
    await forget_batch(redis, tenant, batch_id)
    if not removed:
        raise not_found(batch_id)


async def result_lines(
    redis: Redis, tenant: str, batch_id: str, total: int, chunk: int = CHUNK
) -> AsyncIterator[bytes]:
    """The result lines in input order, read a chunk at a time; in a cancelled batch an input that never ran
    gets a line with the error `cancelled` (its custom id from the `ids` part, or from the inputs while a finishing
    gateway has not dropped them yet)."""
    key = batch_key(tenant, batch_id, "results")
    for lo in range(0, total, chunk):
        hi = min(total, lo + chunk)
        lines = await redis.hmget(key, [str(i) for i in range(lo, hi)])
        ids: list[Any] = []
        inputs: list[Any] = []
        if None in lines:
            ids = await redis.hmget(batch_key(tenant, batch_id, "ids"), [str(i) for i in range(lo, hi)])
            inputs = await redis.lrange(batch_key(tenant, batch_id, "inputs"), lo, hi - 1)
        for i, line in enumerate(lines):
            if line is None:
                item = json.loads(inputs[i]) if i < len(inputs) else {}
                custom_id = (as_bytes(ids[i]) or b"").decode() if ids[i] is not None else item.get("custom_id")
                line = json.dumps(cancelled_line(lo + i, custom_id))
            yield (as_bytes(line) or b"") + b"\n"


def cancelled_line(index: int, custom_id: str | None) -> dict[str, Any]:
    error = {"code": "cancelled", "message": "the batch was cancelled before this input ran"}
    return {"index": index, "custom_id": custom_id, "record_id": None, "results": None, "error": error}
