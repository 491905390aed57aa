"""POST /v1/decode/contrastive: sampling from a weighted combination of several views' next-token
distributions (Emulated Disalignment, contrastive decoding, context-aware decoding, proxy-tuning, prompt
contrast, USCD, DoLa's contrast of a model's layers), with per-step details; `stream: true` sends the steps
as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event

from app.api.deps import ServicesDep, TenantDep
from app.platform.errors import ApiError
from app.serving.contrast import build_job, step_out, summary
from app.serving.jobs import NO_ROOM, raise_for_outcome
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.decode import DecodeRequest, DecodeResponse, ViewIn
from workers.contract.jobs import ContrastJob, DecodeStep
from workers.contract.keys import steps_key
from workers.contract.names import as_bytes

router = APIRouter(tags=["decoding"])


@router.post("/v1/decode/contrastive", response_model=DecodeResponse)
async def contrastive(body: DecodeRequest, services: ServicesDep, tenant: TenantDep) -> Any:
    job, views, codec, stops = await build_job(body, services, tenant)
    usage_prompt = len(job.views[job.record_view].prefix_ids)
    if body.stream:
        return StreamingResponse(
            stream_steps(job, views, codec, stops, services, usage_prompt), media_type="text/event-stream"
        )
    outcome = raise_for_outcome(await services.jobs.run(job), NO_ROOM)
    raw = as_bytes(await services.redis.get(steps_key(job.job_id))) or b"[]"
    steps = [step_out(DecodeStep.model_validate(s), codec, job.level) for s in json.loads(raw)]
    return {**summary(outcome, codec, stops, views, usage_prompt, job.level), "steps": steps}


async def stream_steps(
    job: ContrastJob, views: list[ViewIn], codec: TextCodec, stops: list[str], services: Services, usage_prompt: int
) -> AsyncIterator[bytes]:
    """Each step as an `event: step`, then `event: done` with the summary (or `event: error`)."""
    try:
        async for item in services.jobs.stream(job):
            if isinstance(item, DecodeStep):
                yield format_sse_event(data_str=json.dumps(step_out(item, codec, job.level)), event="step")
            elif not item.ok:
                error = item.error.model_dump() if item.error else {}
                yield format_sse_event(data_str=json.dumps({"error": error}), event="error")
            else:
                result = summary(item, codec, stops, views, usage_prompt, job.level)
                yield format_sse_event(data_str=json.dumps(result), event="done")
    except ApiError as exc:
        yield format_sse_event(
            data_str=json.dumps({"error": {"code": exc.code, "message": exc.message}}), event="error"
        )
