"""Batches: many texts, each scored by the workers and then analysed, with progress and JSONL results.

A batch lives in Redis under its tenant: a hash (spec, status, times), a list of inputs, a hash of result
lines by input index and a set of the failed indices. Every gateway runs a BatchRunner; a batch is driven by
whichever runner holds its lease, which it renews while working. If that gateway dies, the lease lapses and
another runner resumes the batch from the inputs without a result line, so every input gets exactly one line.
Scoring goes through the same job streams as any request, so backpressure (queue_full, rate limits) makes a
batch wait and retry rather than fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from typing import Any

import redis.exceptions
from redis.asyncio import Redis

from app.errors import ApiError
from workers.protocol import as_bytes

log = logging.getLogger("app.batches")

ACTIVE = "lp:batches:active"  # members "tenant\x1fid": batches not finished yet
LEASE_S = 30
SWEEP_S = 2.0
RETRY_CODES = {"queue_full", "rate_limited", "overloaded", "redis_unavailable", "job_timeout"}
RETRY_AFTER_S = 2.0
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
    await _finish(redis, tenant, batch_id, "cancelled", ttl_s)


async def result_lines(redis: Redis, tenant: str, batch_id: str, total: int, chunk: int = 500) -> Any:
    """The result lines in input order, read a chunk at a time."""
    key = batch_key(tenant, batch_id, "results")
    for lo in range(0, total, chunk):
        fields = [str(i) for i in range(lo, min(total, lo + chunk))]
        for line in await redis.hmget(key, fields):
            if line is not None:
                yield (as_bytes(line) or b"") + b"\n"


async def _finish(redis: Redis, tenant: str, batch_id: str, status: str, ttl_s: int) -> None:
    pipe = redis.pipeline(transaction=True)
    pipe.hset(batch_key(tenant, batch_id), mapping={"status": status, "finished_at": int(time.time())})
    for part in ("", "inputs", "results", "failed"):
        pipe.expire(batch_key(tenant, batch_id, part), ttl_s)
    pipe.srem(ACTIVE, f"{tenant}\x1f{batch_id}")
    await pipe.execute()


class BatchRunner:
    """Drives the active batches this gateway holds a lease on, a few inputs at a time."""

    def __init__(self, services: Any, concurrency: int, ttl_s: int) -> None:
        self.services = services
        self.redis: Redis = services.redis
        self.concurrency = concurrency
        self.ttl_s = ttl_s
        self.owner = uuid.uuid4().hex
        self._running: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="batch-sweeper")

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sweep(self) -> None:
        while True:
            try:
                for member in await self.redis.smembers(ACTIVE):
                    name = (as_bytes(member) or b"").decode()
                    if name not in self._running and await self._take_lease(name):
                        task = asyncio.create_task(self._drive(name), name=f"batch-{name}")
                        self._running[name] = task
                        task.add_done_callback(lambda _, n=name: self._running.pop(n, None))  # type: ignore[misc]
            except Exception:  # Redis away: try again at the next sweep
                log.warning("batch sweep failed", exc_info=True)
            await asyncio.sleep(SWEEP_S)

    async def _take_lease(self, name: str) -> bool:
        lease = f"lp:batch-lease:{name}"
        taken = await self.redis.set(lease, self.owner, nx=True, ex=LEASE_S)
        return bool(taken) or (await self.redis.get(lease)) == self.owner.encode()

    async def _renew(self, name: str) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            await self.redis.set(f"lp:batch-lease:{name}", self.owner, xx=True, ex=LEASE_S)

    async def _drive(self, name: str) -> None:
        renew = asyncio.create_task(self._renew(name))
        try:
            await self._drive_inputs(name)
        except Exception:  # Redis away or a bug: the lease lapses and a sweep resumes the batch
            log.exception("batch %s interrupted", name)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            with contextlib.suppress(redis.exceptions.RedisError):
                await self.redis.delete(f"lp:batch-lease:{name}")

    async def _drive_inputs(self, name: str) -> None:
        tenant, batch_id = name.split("\x1f", 1)
        fields = await self.redis.hgetall(batch_key(tenant, batch_id))
        if not fields:  # expired or removed
            await self.redis.srem(ACTIVE, name)
            return
        if (as_bytes(fields[b"status"]) or b"").decode() in FINISHED:
            await self.redis.srem(ACTIVE, name)
            return
        spec = json.loads(fields[b"spec"])
        await self.redis.hset(batch_key(tenant, batch_id), "status", "in_progress")
        done = {int(i) for i in await self.redis.hkeys(batch_key(tenant, batch_id, "results"))}
        inputs = await self.redis.lrange(batch_key(tenant, batch_id, "inputs"), 0, -1)
        todo = [i for i in range(len(inputs)) if i not in done]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in todo:
            queue.put_nowait(index)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                if await self._cancelled(tenant, batch_id):
                    return
                line, failed = await self._run_one(tenant, spec, index, json.loads(inputs[index]))
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(batch_key(tenant, batch_id, "results"), str(index), json.dumps(line))
                if failed:
                    pipe.sadd(batch_key(tenant, batch_id, "failed"), str(index))
                await pipe.execute()

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, max(1, len(todo))))))
        if not await self._cancelled(tenant, batch_id):
            await _finish(self.redis, tenant, batch_id, "completed", self.ttl_s)
            log.info("batch %s completed (%d inputs)", batch_id, len(inputs))

    async def _cancelled(self, tenant: str, batch_id: str) -> bool:
        status = await self.redis.hget(batch_key(tenant, batch_id), "status")
        return status is None or as_bytes(status) == b"cancelled"

    async def _run_one(
        self, tenant: str, spec: dict[str, Any], index: int, item: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """One input's result line, and whether it failed; retried while the service pushes back."""
        from app.api.analysis import AnalysisRequest, analyse  # the routes' own analysis path
        from app.scoring import record_for

        line: dict[str, Any] = {"index": index, "custom_id": item.get("custom_id")}
        source = {k: item[k] for k in ("text", "messages") if item.get(k) is not None}
        while True:
            try:
                results: dict[str, Any] = {}
                record_id = None
                if not spec["analyses"]:  # scoring only
                    body = AnalysisRequest.model_validate({"model": spec["model"], **source})
                    meta, *_ = await record_for(
                        self.services, tenant, model=body.model, record_id=None, text=body.text, messages=body.messages
                    )
                    record_id = meta.record_id
                for analysis in spec["analyses"]:
                    options = {k: v for k, v in analysis.items() if k != "family"}
                    body = AnalysisRequest.model_validate({"model": spec["model"], **source, **options})
                    answer = await analyse(analysis["family"], body, self.services, tenant)
                    record_id = record_id or answer["record_id"]
                    if not spec.get("include_tokens"):
                        answer.pop("tokens")
                    results[analysis["family"]] = answer
                return {**line, "record_id": record_id, "results": results, "error": None}, False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                await asyncio.sleep(RETRY_AFTER_S)
            except ApiError as exc:
                if exc.code in RETRY_CODES:
                    await asyncio.sleep(RETRY_AFTER_S)
                    continue
                return {
                    **line,
                    "record_id": None,
                    "results": None,
                    "error": {"code": exc.code, "message": exc.message},
                }, True
            except Exception as exc:  # a bad input must not stop the batch
                log.exception("batch input %d failed", index)
                return {
                    **line,
                    "record_id": None,
                    "results": None,
                    "error": {"code": "internal", "message": str(exc)},
                }, True
