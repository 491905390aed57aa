"""POST /v1/completions and /v1/chat/completions, shaped like the OpenAI API and vLLM's server, so that clients
written for either (the `openai` package, lm-evaluation-harness) work unchanged.

- prompts: a text, a list of texts, a list of token ids or a list of token-id lists; choices are indexed
  prompt-major (prompt i's j-th choice is index i * n + j), as the OpenAI API does;
- `n`, `best_of` (the n candidates of highest cumulative logprob), `echo` (also with `max_tokens: 0`, scoring
  only), `logprobs` / `top_logprobs`, `stop`, `seed` (sample j of a request draws with seed + j, as vLLM does),
  streaming as server-sent events ending in [DONE], with logprobs and the echoed prompt;
- sampling: `temperature`, `top_p`, `logit_bias`, `frequency_penalty`, `presence_penalty`, and vLLM's `top_k`,
  `min_p`, `repetition_penalty`, applied as vLLM's sampler applies them (workers/sampling.py);
- vLLM's extensions: `prompt_logprobs`, `return_tokens_as_token_ids`, `return_token_ids`, `add_special_tokens`,
  and for chats `echo`, `add_generation_prompt`, `continue_final_message`, `chat_template_kwargs`.

Fields neither implemented nor neutral are refused (422 `unsupported_parameter`). Extensions, additive: every
choice carries `record_id`, the stored record of its prompt and completion (so every scored prompt can be
analysed afterwards), and the answer's `record_id` is its first choice's; `logprobs` / `top_logprobs` may go up
to 100 (OpenAI: 5 / 20), within the export policy (5 on a deployment without export)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.deps import ServicesDep, TenantDep
from app.platform.errors import ApiError, error_type
from app.serving.completions import (
    Detokenizer,
    Generated,
    TokenNames,
    best,
    chat_ids,
    chat_logprob,
    check_request_cost,
    completion_job,
    completion_logprobs,
    completion_text,
    gather_all,
    generate,
    max_new,
    merged,
    prompt_k,
    prompt_token_lists,
    refuse_unsupported,
    sampling_for,
    seed_of,
    usage,
    vllm_prompt_logprobs,
)
from app.serving.inputs import top_k
from app.serving.jobs import new_job_id
from app.serving.scoring import scored_record
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.openai import ChatCompletionRequest, CompletionRequest
from workers.contract.jobs import DecodeStep, Sampling

router = APIRouter(tags=["openai-compatible"])
CHAT_MAX_TOKENS = 256  # a chat that names no max_tokens


# ------------------------------------------------------------------ completions


@router.post("/v1/completions")
async def completions(body: CompletionRequest, services: ServicesDep, tenant: TenantDep) -> Any:
    refuse_unsupported(body)
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    prompts = await asyncio.to_thread(prompt_token_lists, codec, body, services.settings.max_positions)
    k = top_k(body.logprobs, services.settings, services.settings.max_top_logprobs, default=0, param="logprobs")
    pk = prompt_k(services, body.prompt_logprobs) if body.prompt_logprobs is not None else None
    tries = body.best_of or body.n
    if tries < body.n:
        raise ApiError(422, "invalid_best_of", "best_of must be at least n", "best_of")
    if body.stream and tries > body.n:
        raise ApiError(
            422, "invalid_best_of", "best_of cannot be streamed (it picks among finished samples)", "best_of"
        )
    max_tokens = max_new(services, card, body.max_tokens, [ids for ids, _ in prompts])
    if max_tokens == 0 and tries > 1:
        raise ApiError(422, "invalid_request", "max_tokens 0 scores the prompt: n and best_of must be 1", "n")
    check_request_cost(services, [ids for ids, _ in prompts], tries, max_tokens)
    samplings = [sampling_for(body, card, max_tokens, seed_of(body.seed, j)) for j in range(tries)]
    echo_logprobs = body.echo and body.logprobs is not None
    need_prompt = echo_logprobs or pk is not None
    names = TokenNames(codec, body.return_tokens_as_token_ids)
    created, cid = int(time.time()), f"cmpl-{new_job_id()}"
    if body.stream:
        return _sse(
            _completion_chunks(services, tenant, body, codec, prompts, samplings, k, names, cid, created, max_tokens)
        )
    runs = await gather_all(
        generate(services, tenant, codec, ids, sampling, k, need_prompt, score_only=max_tokens == 0)
        for ids, _ in prompts
        for sampling in samplings
    )
    choices: list[dict[str, Any]] = []
    for i, (_, text) in enumerate(prompts):
        for gen in best(runs[i * tries : (i + 1) * tries], body.n):
            stops = samplings[0].stop
            choice: dict[str, Any] = {
                "index": len(choices),
                "text": (text if body.echo else "") + completion_text(codec, gen.completion, stops),
                "logprobs": None if body.logprobs is None else completion_logprobs(gen, names, k, body.echo),
                "finish_reason": gen.finish_reason,
                "stop_reason": None,
                "record_id": gen.record_id,
            }
            if pk is not None:
                choice["prompt_logprobs"] = vllm_prompt_logprobs(gen, names, pk)
            if body.return_token_ids:
                choice |= {"prompt_token_ids": gen.prompt_ids, "token_ids": gen.completion}
            choices.append(choice)
    n_completion = sum(len(r.completion) for r in runs)
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": card.name,
        "choices": choices,
        "usage": usage(sum(len(ids) for ids, _ in prompts), n_completion),
        "record_id": choices[0]["record_id"],
    }


# ------------------------------------------------------------------ chat completions


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, services: ServicesDep, tenant: TenantDep) -> Any:
    refuse_unsupported(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(422, "logprobs_required", "top_logprobs needs logprobs: true", "top_logprobs")
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    ids = await asyncio.to_thread(chat_ids, codec, body, services.settings.max_positions)
    cap = services.settings.max_top_logprobs
    k = top_k(body.top_logprobs, services.settings, cap, default=0) if body.logprobs else 0
    pk = prompt_k(services, body.prompt_logprobs) if body.prompt_logprobs is not None else None
    max_tokens = max_new(services, card, body.max_completion_tokens or body.max_tokens or CHAT_MAX_TOKENS, [ids])
    check_request_cost(services, [ids], body.n, max_tokens)
    samplings = [sampling_for(body, card, max_tokens, seed_of(body.seed, j)) for j in range(body.n)]
    last = body.messages[-1]
    echoed = last.content if body.echo and last.role == "assistant" else ""
    names = TokenNames(codec, body.return_tokens_as_token_ids)
    created, cid = int(time.time()), f"chatcmpl-{new_job_id()}"
    if body.stream:
        return _sse(_chat_chunks(services, tenant, body, codec, ids, samplings, k, names, echoed, cid, created))
    runs: list[Generated] = await gather_all(
        generate(services, tenant, codec, ids, sampling, k, need_prompt=pk is not None and j == 0)
        for j, sampling in enumerate(samplings)
    )
    choices = []
    for j, gen in enumerate(runs):
        content = echoed + completion_text(codec, gen.completion, samplings[0].stop)
        choices.append(
            {
                "index": j,
                "message": {"role": "assistant", "content": content},
                "logprobs": {"content": [chat_logprob(names, s, k) for s in gen.steps]} if body.logprobs else None,
                "finish_reason": gen.finish_reason,
                "stop_reason": None,
                "record_id": gen.record_id,
            }
        )
        if body.return_token_ids:
            choices[-1]["token_ids"] = gen.completion
    answer: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": card.name,
        "choices": choices,
        "usage": usage(len(ids), sum(len(r.completion) for r in runs)),
        "record_id": runs[0].record_id,
    }
    if pk is not None:
        answer["prompt_logprobs"] = vllm_prompt_logprobs(runs[0], names, pk)
    if body.return_token_ids:
        answer["prompt_token_ids"] = ids
    return answer


# ------------------------------------------------------------------ streaming


async def _choices_stream(
    streams: list[AsyncIterator[dict[str, Any]]],
    body: CompletionRequest | ChatCompletionRequest,
    usage_chunk: Callable[[], dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """The choices' chunks as they come, then (when asked for) the usage chunk; a failure ends the stream with an
    error chunk."""
    try:
        async for item in merged(streams):
            yield item
    except ApiError as exc:
        yield {"error": {"message": exc.message, "type": error_type(exc.status), "param": exc.param, "code": exc.code}}
        return
    if body.stream_options is not None and body.stream_options.include_usage:
        yield usage_chunk()


def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _steps(
    services: Services, tenant: str, codec: TextCodec, ids: list[int], sampling: Sampling, k: int
) -> AsyncIterator[DecodeStep | Any]:
    """A choice's steps as the worker takes them, then its outcome."""
    job = await completion_job(services, tenant, codec, ids, sampling, k)
    async for item in services.jobs.stream(job):
        yield item


async def _completion_chunks(
    services: Services,
    tenant: str,
    body: CompletionRequest,
    codec: TextCodec,
    prompts: list[tuple[list[int], str]],
    samplings: list[Sampling],
    k: int,
    names: TokenNames,
    cid: str,
    created: int,
    max_tokens: int,
) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, text: str, logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        }

    n_completion = 0

    async def one(index: int, ids: list[int], text: str, sampling: Sampling) -> AsyncIterator[dict[str, Any]]:
        nonlocal n_completion
        offset = 0
        if body.echo:  # the prompt first, with its logprobs from its record
            logprobs = None
            if body.logprobs is not None:
                meta, stats, _ = await scored_record(services, tenant, codec.card, ids)
                scored = Generated(ids, [], [], "length", meta.record_id, stats)
                logprobs = completion_logprobs(scored, names, k, echo=True)
            offset = len(text)
            yield chunk(index, text, logprobs)
        if max_tokens == 0:
            meta, _, _ = await scored_record(services, tenant, codec.card, ids)
            yield {**chunk(index, "", finish="length"), "record_id": meta.record_id}
            return
        detokenizer = Detokenizer(codec, sampling.stop)
        async for item in _steps(services, tenant, codec, ids, sampling, k):
            if isinstance(item, DecodeStep):
                logprobs = None
                if body.logprobs is not None:
                    step_gen = Generated(ids, [], [item], "", "")
                    logprobs = completion_logprobs(step_gen, names, k, echo=False, offset=offset)
                    offset += len(logprobs["tokens"][0])
                yield chunk(index, detokenizer.push(item.token), logprobs)
            elif not item.ok:
                raise ApiError(
                    item.error.status if item.error else 500,
                    item.error.code if item.error else "job_failed",
                    item.error.message if item.error else "the job failed",
                )
            else:
                n_completion += len(item.completion_ids or [])
                yield {**chunk(index, "", finish=item.finish_reason), "record_id": item.record_id}

    streams = [
        one(i * len(samplings) + j, ids, text, sampling)
        for i, (ids, text) in enumerate(prompts)
        for j, sampling in enumerate(samplings)
    ]

    def usage_chunk() -> dict[str, Any]:
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [],
            "usage": usage(sum(len(ids) for ids, _ in prompts), n_completion),
        }

    async for item in _choices_stream(streams, body, usage_chunk):
        yield item


async def _chat_chunks(
    services: Services,
    tenant: str,
    body: ChatCompletionRequest,
    codec: TextCodec,
    ids: list[int],
    samplings: list[Sampling],
    k: int,
    names: TokenNames,
    echoed: str,
    cid: str,
    created: int,
) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }

    n_completion = 0

    async def one(index: int, sampling: Sampling) -> AsyncIterator[dict[str, Any]]:
        nonlocal n_completion
        yield chunk(index, {"role": "assistant", "content": ""})
        if echoed:
            yield chunk(index, {"content": echoed})
        detokenizer = Detokenizer(codec, sampling.stop)
        async for item in _steps(services, tenant, codec, ids, sampling, k):
            if isinstance(item, DecodeStep):
                logprobs = {"content": [chat_logprob(names, item, k)]} if body.logprobs else None
                yield chunk(index, {"content": detokenizer.push(item.token)}, logprobs=logprobs)
            elif not item.ok:
                raise ApiError(
                    item.error.status if item.error else 500,
                    item.error.code if item.error else "job_failed",
                    item.error.message if item.error else "the job failed",
                )
            else:
                n_completion += len(item.completion_ids or [])
                yield {
                    **chunk(index, {}, finish=item.finish_reason),
                    "record_id": item.record_id,
                    "usage": usage(len(ids), len(item.completion_ids or [])),
                }

    def usage_chunk() -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [],
            "usage": usage(len(ids), n_completion),
        }

    async for item in _choices_stream([one(j, sampling) for j, sampling in enumerate(samplings)], body, usage_chunk):
        yield item
