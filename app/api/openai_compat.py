"""POST /v1/completions and /v1/chat/completions, shaped like the OpenAI API (and vLLM's server), with
`logprobs`/`top_logprobs`, `echo` with prompt logprobs, and streaming as server-sent events ending in [DONE].

Extensions, additive fields only: every answer carries `record_id`, the stored record of prompt and completion,
so a client can go on to /v1/analysis/*; `logprobs` / `top_logprobs` may go up to 100 (OpenAI: 5 / 20)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api.generate import stop_list, truncate_at_stop
from app.api.tokens import ChatMessage, check_length, input_ids
from app.auth import TenantDep
from app.errors import ApiError
from app.jobs import new_job_id, raise_for_outcome
from app.limits import charge
from app.scoring import scored_record
from app.services import Services, ServicesDep
from app.text import TextCodec
from workers.protocol import (
    ContrastJob,
    DecodeStep,
    DecodeView,
    JobOutcome,
    Sampling,
    as_bytes,
    steps_key,
)

router = APIRouter(tags=["openai-compatible"])
MAX_TOP = 100


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, stream_options…)
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)
    echo: bool = False


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)


async def _job(
    services: Services, tenant: str, body: _Common, codec: TextCodec, ids: list[int], max_tokens: int, topk: int
) -> ContrastJob:
    card = codec.card
    limit = min(services.settings.max_new_tokens, card.max_new_tokens)
    if max_tokens > limit:
        raise ApiError(422, "max_tokens_too_large", f"max_tokens is at most {limit}", "max_tokens")
    check_length(card, len(ids) + max_tokens, services.settings.max_positions)
    await charge(services.redis, tenant, "tokens", len(ids) + max_tokens, services.settings.rate_limit_tpm)
    sampling = Sampling(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop_list(body.stop)
    )
    view = DecodeView(model=card.name, fingerprint=card.fingerprint, prefix_ids=ids, weight=1.0)
    return ContrastJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=card.name,
        fingerprint=card.fingerprint,
        views=[view],
        sampling=sampling,
        topk=topk,
    )


async def _finished(services: Services, job: ContrastJob) -> tuple[JobOutcome, list[DecodeStep]]:
    outcome = raise_for_outcome(await services.jobs.run(job))
    raw = as_bytes(await services.redis.get(steps_key(job.job_id))) or b"[]"
    return outcome, [DecodeStep.model_validate(s) for s in json.loads(raw)]


def _text(codec: TextCodec, ids: list[int], stops: list[str]) -> str:
    return truncate_at_stop(codec.decode(ids), stops) if stops else codec.decode(ids)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_logprob(codec: TextCodec, step: DecodeStep, k: int) -> dict[str, Any]:
    pieces = codec.pieces()
    return {
        "token": pieces[step.token],
        "logprob": step.view_logprobs[0],
        "bytes": list(pieces[step.token].encode()),
        "top_logprobs": [
            {"token": pieces[i], "logprob": v, "bytes": list(pieces[i].encode())}
            for i, v in list(zip(step.top_ids, step.top_logprobs, strict=True))[:k]
        ],
    }


# ------------------------------------------------------------------ completions


@router.post("/v1/completions")
async def completions(body: CompletionRequest, services: ServicesDep, tenant: TenantDep) -> Any:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(422, "invalid_request", "one prompt per request", "prompt")
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    ids = input_ids(codec, prompts[0], None, False, services.settings.max_positions)
    k = body.logprobs or 0
    job = await _job(services, tenant, body, codec, ids, body.max_tokens or 16, k)
    created, cid = int(time.time()), f"cmpl-{job.job_id}"
    stops = job.sampling.stop
    if body.stream:
        return _sse(_completion_chunks(services, job, codec, stops, body, cid, created))
    outcome, steps = await _finished(services, job)
    completion = outcome.completion_ids or []
    text = _text(codec, completion, stops)
    logprobs = None
    if body.logprobs is not None:
        pieces = codec.pieces()
        tokens = [pieces[s.token] for s in steps]
        token_logprobs: list[float | None] = [s.view_logprobs[0] for s in steps]
        tops: list[dict[str, float] | None] = [
            dict(list(zip((pieces[i] for i in s.top_ids), s.top_logprobs, strict=True))[:k]) for s in steps
        ]
        if body.echo:
            p_tokens, p_logprobs, p_tops = await _prompt_logprobs(services, tenant, codec, ids, k)
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
        "usage": _usage(len(ids), len(completion)),
        "record_id": outcome.record_id,
    }


async def _prompt_logprobs(
    services: Services, tenant: str, codec: TextCodec, ids: list[int], k: int
) -> tuple[list[str], list[float | None], list[dict[str, float] | None]]:
    """The prompt's own tokens with their logprobs (the first has none), from its stored record."""
    _, stats, _ = await scored_record(services, tenant, codec.card, ids)
    pieces = codec.pieces()
    texts = codec.token_texts(ids)
    logprobs: list[float | None] = [None, *stats["logprob"].tolist()]
    tops: list[dict[str, float] | None] = [None] + [
        dict(zip((pieces[i] for i in row_ids[:k]), row_lp[:k], strict=True))
        for row_ids, row_lp in zip(stats["topk_ids"].tolist(), stats["topk_logprobs"].tolist(), strict=True)
    ]
    return texts, logprobs, tops


# ------------------------------------------------------------------ chat completions


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, services: ServicesDep, tenant: TenantDep) -> Any:
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    ids = input_ids(codec, None, body.messages, True, services.settings.max_positions)
    k = body.top_logprobs or 0
    job = await _job(services, tenant, body, codec, ids, body.max_completion_tokens or body.max_tokens or 256, k)
    created, cid = int(time.time()), f"chatcmpl-{job.job_id}"
    if body.stream:
        return _sse(_chat_chunks(services, job, codec, body, cid, created))
    outcome, steps = await _finished(services, job)
    completion = outcome.completion_ids or []
    logprobs = {"content": [_chat_logprob(codec, s, k) for s in steps]} if body.logprobs else None
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": card.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _text(codec, completion, job.sampling.stop)},
                "logprobs": logprobs,
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": _usage(len(ids), len(completion)),
        "record_id": outcome.record_id,
    }


# ------------------------------------------------------------------ streaming


def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


class _Detokenizer:
    """Text deltas from growing token ids, holding back incomplete characters and anything past a stop."""

    def __init__(self, codec: TextCodec, stops: list[str]) -> None:
        self.codec, self.stops, self.ids, self.sent = codec, stops, list[int](), ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = _text(self.codec, self.ids, self.stops)
        if text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


async def _chat_chunks(
    services: Services, job: ContrastJob, codec: TextCodec, body: ChatCompletionRequest, cid: str, created: int
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
    detokenizer = _Detokenizer(codec, job.sampling.stop)
    async for item in services.jobs.stream(job):
        if isinstance(item, DecodeStep):
            logprobs = {"content": [_chat_logprob(codec, item, body.top_logprobs or 0)]} if body.logprobs else None
            yield chunk({"content": detokenizer.push(item.token)}, logprobs=logprobs)
        elif not item.ok:
            yield {"error": item.error.model_dump() if item.error else {"code": "job_failed"}}
        else:
            yield {
                **chunk({}, finish=item.finish_reason),
                "record_id": item.record_id,
                "usage": _usage(len(job.views[0].prefix_ids), len(item.completion_ids or [])),
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

    detokenizer = _Detokenizer(codec, stops)
    async for item in services.jobs.stream(job):
        if isinstance(item, DecodeStep):
            yield chunk(detokenizer.push(item.token))
        elif not item.ok:
            yield {"error": item.error.model_dump() if item.error else {"code": "job_failed"}}
        else:
            yield {**chunk("", finish=item.finish_reason), "record_id": item.record_id}
