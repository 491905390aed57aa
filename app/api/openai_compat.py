"""POST /v1/completions and /v1/chat/completions, shaped like the OpenAI API (and vLLM's server), with
`logprobs`/`top_logprobs`, `echo` with prompt logprobs, and streaming as server-sent events ending in [DONE].

Extensions, additive fields only: every answer carries `record_id`, the stored record of prompt and completion,
so a client can go on to /v1/analysis/*; `logprobs` / `top_logprobs` may go up to 100 (OpenAI: 5 / 20), within the
export policy (`top_k`: 5 on a deployment without export)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.deps import ServicesDep, TenantDep
from app.platform.errors import ApiError
from app.schemas.openai import MAX_TOP, ChatCompletionRequest, CompletionRequest
from app.serving.completions import (
    Detokenizer,
    chat_logprob,
    completion_job,
    completion_text,
    finished_steps,
    prompt_logprobs,
    usage,
)
from app.serving.inputs import input_ids, top_k
from app.serving.services import Services
from app.serving.text import TextCodec
from workers.protocol import ContrastJob, DecodeStep

router = APIRouter(tags=["openai-compatible"])


# ------------------------------------------------------------------ completions


@router.post("/v1/completions")
async def completions(body: CompletionRequest, services: ServicesDep, tenant: TenantDep) -> Any:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(422, "invalid_request", "one prompt per request", "prompt")
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    ids = input_ids(codec, prompts[0], None, False, services.settings.max_positions)
    k = top_k(body.logprobs, services.settings, MAX_TOP, default=0, param="logprobs")
    job = await completion_job(services, tenant, body, codec, ids, body.max_tokens or 16, k)
    created, cid = int(time.time()), f"cmpl-{job.job_id}"
    stops = job.sampling.stop
    if body.stream:
        return _sse(_completion_chunks(services, job, codec, stops, body, cid, created))
    outcome, steps = await finished_steps(services, job)
    completion = outcome.completion_ids or []
    text = completion_text(codec, completion, stops)
    logprobs = None
    if body.logprobs is not None:
        pieces = codec.pieces()
        tokens = [pieces[s.token] for s in steps]
        token_logprobs: list[float | None] = [s.view_logprobs[0] for s in steps]
        tops: list[dict[str, float] | None] = [
            dict(list(zip((pieces[i] for i in s.top_ids), s.top_logprobs, strict=True))[:k]) for s in steps
        ]
        if body.echo:
            p_tokens, p_logprobs, p_tops = await prompt_logprobs(services, tenant, codec, ids, k)
            tokens, token_logprobs, tops = p_tokens + tokens, p_logprobs + token_logprobs, p_tops + tops
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token)
        logprobs = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": card.name,
        "choices": [
            {
                "index": 0,
                "text": (prompts[0] if body.echo else "") + text,
                "logprobs": logprobs,
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": usage(len(ids), len(completion)),
        "record_id": outcome.record_id,
    }


# ------------------------------------------------------------------ chat completions


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, services: ServicesDep, tenant: TenantDep) -> Any:
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(422, "logprobs_required", "top_logprobs needs logprobs: true", "top_logprobs")
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    ids = input_ids(codec, None, body.messages, True, services.settings.max_positions)
    k = top_k(body.top_logprobs, services.settings, MAX_TOP, default=0) if body.logprobs else 0
    job = await completion_job(
        services, tenant, body, codec, ids, body.max_completion_tokens or body.max_tokens or 256, k
    )
    created, cid = int(time.time()), f"chatcmpl-{job.job_id}"
    if body.stream:
        return _sse(_chat_chunks(services, job, codec, body, cid, created, k))
    outcome, steps = await finished_steps(services, job)
    completion = outcome.completion_ids or []
    logprobs = {"content": [chat_logprob(codec, s, k) for s in steps]} if body.logprobs else None
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": card.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion_text(codec, completion, job.sampling.stop)},
                "logprobs": logprobs,
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": usage(len(ids), len(completion)),
        "record_id": outcome.record_id,
    }


# ------------------------------------------------------------------ streaming


def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _chat_chunks(
    services: Services, job: ContrastJob, codec: TextCodec, body: ChatCompletionRequest, cid: str, created: int, k: int
) -> AsyncIterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }

    yield chunk({"role": "assistant", "content": ""})
    detokenizer = Detokenizer(codec, job.sampling.stop)
    async for item in services.jobs.stream(job):
        if isinstance(item, DecodeStep):
            logprobs = {"content": [chat_logprob(codec, item, k)]} if body.logprobs else None
            yield chunk({"content": detokenizer.push(item.token)}, logprobs=logprobs)
        elif not item.ok:
            yield {"error": item.error.model_dump() if item.error else {"code": "job_failed"}}
        else:
            yield {
                **chunk({}, finish=item.finish_reason),
                "record_id": item.record_id,
                "usage": usage(len(job.views[0].prefix_ids), len(item.completion_ids or [])),
            }


async def _completion_chunks(
    services: Services,
    job: ContrastJob,
    codec: TextCodec,
    stops: list[str],
    body: CompletionRequest,
    cid: str,
    created: int,
) -> AsyncIterator[dict[str, Any]]:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    detokenizer = Detokenizer(codec, stops)
    async for item in services.jobs.stream(job):
        if isinstance(item, DecodeStep):
            yield chunk(detokenizer.push(item.token))
        elif not item.ok:
            yield {"error": item.error.model_dump() if item.error else {"code": "job_failed"}}
        else:
            yield {**chunk("", finish=item.finish_reason), "record_id": item.record_id}
