"""Batches: many texts, each scored by the workers and then analysed, with progress and JSONL results.

A batch lives in Redis under its tenant: a hash (spec, status, times), a list of inputs, a hash of result
lines by input index and a set of the failed indices. Every gateway runs a BatchRunner; a batch is driven by
whichever runner holds its lease, which it renews while working. If that gateway dies, the lease lapses and
another runner resumes the batch from the inputs without a result line, so every input gets exactly one line.
Scoring goes through the same job streams as any request, so backpressure (queue_full, rate limits, timeouts)
makes a batch wait and retry, with a growing delay that honours Retry-After, up to BATCH_MAX_ATTEMPTS tries per
input; then the input's line carries the last error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import redis.exceptions
from redis.asyncio import Redis

from app.batches.store import ACTIVE, batch_key, drop_finished, finish_batch, forget_batch, start_batch, write_line
from app.platform.errors import ApiError
from app.platform.leases import LeasedWork
from app.serving import quotas
from app.serving.analyses import analyse
from app.serving.consistency import consistency
from app.serving.jobs import BULK
from app.serving.scoring import record_for
from app.serving.services import Services
from logprobe.schemas.analysis import AnalysisRequest
from logprobe.schemas.consistency import ConsistencyRequest
from workers.contract.names import as_bytes

log = logging.getLogger("app.batches.runner")

# The codes the service raises when it pushes back or is briefly away: worth another try.
RETRY_CODES = frozenset(
    {
        "queue_full",
        "overloaded",
        "requests_rate_limited",
        "tokens_rate_limited",
        "redis_unavailable",
        "job_timeout",
        "model_unavailable",
        "record_evicted",
        "cross_expired",
    }
)
FIRST_DELAY_S = 1.0  # doubled after every try, at most BATCH_RETRY_MAX_DELAY_S


def retry_delay(attempt: int, hint_s: float | None, max_delay_s: float) -> float:
    """Seconds to wait after the `attempt`-th failed try: doubling, at least the service's Retry-After, capped."""
    return min(max_delay_s, max(hint_s or 0.0, FIRST_DELAY_S * 2.0 ** (attempt - 1)))


def retry_after(exc: ApiError) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def error_line(line: dict[str, Any], code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {**line, "record_id": None, "results": None, "error": {"code": code, "message": message, **extra}}


class BatchRunner:
    """Drives the active batches this gateway holds a lease on (app.platform.leases), a few inputs at a time."""

    def __init__(
        self,
        services: Services,
        concurrency: int,
        ttl_s: int,
        max_attempts: int = quotas.BATCH_MAX_ATTEMPTS,
        max_delay_s: float = quotas.BATCH_RETRY_MAX_DELAY_S,
    ) -> None:
        self.services = services
        self.redis: Redis = services.redis
        self.concurrency = concurrency
        self.ttl_s = ttl_s
        self.max_attempts = max(1, max_attempts)
        self.max_delay_s = max_delay_s
        self.leases = LeasedWork(self.redis, ACTIVE, "batch", self._drive_inputs)

    async def start(self) -> None:
        await self.leases.start()

    async def stop(self) -> None:
        await self.leases.stop()

    async def _drive_inputs(self, name: str) -> None:
        BULK.set(True)  # this task's jobs (and its input tasks') take the bulk lane
        tenant, batch_id = name.split("\x1f", 1)
        fields = await self.redis.hgetall(batch_key(tenant, batch_id))
        if not fields:  # expired or deleted
            await forget_batch(self.redis, tenant, batch_id)
            return
        if not await start_batch(self.redis, tenant, batch_id):  # finished meanwhile, maybe by a gateway that
            await drop_finished(self.redis, tenant, batch_id)  # stopped before it cleared the indexes
            return
        spec = json.loads(fields[b"spec"])
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
                if not await write_line(self.redis, tenant, batch_id, index, line, failed, self.services.objects):
                    return  # cancelled or deleted while this input ran: its line is not kept

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, max(1, len(todo))))))
        if await finish_batch(self.redis, tenant, batch_id, "completed", self.ttl_s):
            log.info("batch %s completed (%d inputs)", batch_id, len(inputs))

    async def _cancelled(self, tenant: str, batch_id: str) -> bool:
        status = await self.redis.hget(batch_key(tenant, batch_id), "status")
        return status is None or as_bytes(status) == b"cancelled"

    async def _run_one(
        self, tenant: str, spec: dict[str, Any], index: int, item: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """One input's result line, and whether it failed; retried while the service pushes back, at most
        `max_attempts` tries."""
        line: dict[str, Any] = {"index": index, "custom_id": item.get("custom_id")}
        for attempt in range(1, self.max_attempts + 1):
            try:
                return {**line, **await self._answer(tenant, spec, item), "error": None}, False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                code, message, hint = "redis_unavailable", str(exc), None
            except ApiError as exc:
                if exc.code not in RETRY_CODES:
                    return error_line(line, exc.code, exc.message), True
                code, message, hint = exc.code, exc.message, retry_after(exc)
            except Exception as exc:  # a bad input must not stop the batch
                log.exception("batch input %d failed", index)
                return error_line(line, "internal", str(exc)), True
            if attempt < self.max_attempts:
                await asyncio.sleep(retry_delay(attempt, hint, self.max_delay_s))
        return error_line(line, code, f"gave up after {self.max_attempts} tries: {message}", attempts=attempt), True

    async def _answer(self, tenant: str, spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        """The record and the analyses of one input (of a consistency batch: the judged answer's record and the
        consistency answer)."""
        if spec.get("consistency") is not None:
            return await self._consistency(tenant, spec, item)
        source = {k: item[k] for k in ("text", "messages") if item.get(k) is not None}
        source["retain"] = spec.get("retain")  # batches made before `retain` existed: the model's default
        results: dict[str, Any] = {}
        record_id = None
        if not spec["analyses"]:  # scoring only
            body = AnalysisRequest.model_validate({"model": spec["model"], **source})
            meta, *_ = await record_for(
                self.services,
                tenant,
                model=body.model,
                record_id=None,
                text=body.text,
                messages=body.messages,
                retain=body.retain,
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
        return {"record_id": record_id, "results": results}

    async def _consistency(self, tenant: str, spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        """/v1/analysis/consistency on one input: its text is the prompt."""
        source = {"prompt": item.get("text"), "messages": item.get("messages"), "answer": item.get("answer")}
        body = ConsistencyRequest.model_validate({"model": spec["model"], **source, **spec["consistency"]})
        answer = await consistency(body, self.services, tenant)
        return {"record_id": answer["answer"]["record_id"], "results": {"consistency": answer}}
