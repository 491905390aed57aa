"""The OpenAI-compatible endpoints' work: prompts to token ids, one decoding job per choice, and logprobs in the
OpenAI API's and vLLM's shapes.

A choice with a completion is one job (a one-view decoding job on the model's worker) whose record holds prompt
and completion: echoed prompt logprobs and vLLM's `prompt_logprobs` are read from that record, so a prompt is
never run twice. `max_tokens: 0` scores the prompt alone (one scoring job, batched by the worker with others)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from app.platform.budget import check_fits
from app.platform.errors import ApiError
from app.platform.limits import charge
from app.serving.inputs import chat_token_ids, check_length, stop_list, text_token_ids, top_k, truncate_at_stop
from app.serving.jobs import NO_ROOM, generation_job, new_job_id, raise_for_outcome
from app.serving.scoring import scored_record
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.openai import MAX_PROMPTS, UNSUPPORTED, ChatCompletionRequest, CompletionRequest, OpenAICommon
from workers.contract.cards import ModelCard
from workers.contract.jobs import ContrastJob, DecodeStep, DecodeView, JobOutcome, Sampling
from workers.contract.keys import steps_key
from workers.contract.names import CAPTURE_TOPK, as_bytes

LOGPROB_FLOOR = -9999.0  # what vLLM and OpenAI send for -inf (JSON has no infinity)
T = TypeVar("T")


# ------------------------------------------------------------------ requests


def refuse_unsupported(body: OpenAICommon) -> None:
    """422 `unsupported_parameter` for a field this service does not implement, set to anything but its neutral
    value: a field is either honoured or refused, never silently ignored."""
    for name, value in (body.model_extra or {}).items():
        neutral = UNSUPPORTED.get(name)
        if neutral is not None and value not in neutral:
            raise ApiError(422, "unsupported_parameter", f"{name} is not supported by this service", name)
    if body.prompt_logprobs == -1:
        raise ApiError(
            422,
            "unsupported_parameter",
            "prompt_logprobs: -1 (whole rows) is not offered here; every choice's record_id gives whole rows "
            "through GET /v1/records/{id}/logprobs",
            "prompt_logprobs",
        )


def prompt_token_lists(codec: TextCodec, body: CompletionRequest, max_positions: int) -> list[tuple[list[int], str]]:
    """Each prompt's token ids and its text (a token prompt's text is its decoding)."""
    prompt = body.prompt
    items: list[str | list[int]]
    if isinstance(prompt, str):
        items = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [[int(p) for p in prompt]]  # type: ignore[arg-type]
    else:
        items = list(prompt)  # type: ignore[arg-type]
    if not items:
        raise ApiError(422, "empty_text", "the prompt is empty", "prompt")
    if len(items) > MAX_PROMPTS:
        raise ApiError(422, "too_many_prompts", f"at most {MAX_PROMPTS} prompts per request", "prompt")
    out = []
    for i, item in enumerate(items):
        param = "prompt" if len(items) == 1 else f"prompt.{i}"
        if isinstance(item, str):
            if not item:
                raise ApiError(422, "empty_text", "the prompt is empty", param)
            ids, text = text_token_ids(codec, item, max_positions, body.add_special_tokens, param), item
        else:
            ids = list(item)
            if any(t >= codec.card.vocab_size for t in ids):
                raise ApiError(422, "invalid_token_ids", f"token ids must lie in [0, {codec.card.vocab_size})", param)
            text = codec.tokenizer.decode(ids, skip_special_tokens=False)  # as vLLM echoes a token prompt
        if not ids:
            raise ApiError(422, "empty_text", "the prompt has no tokens", param)
        check_length(codec.card, len(ids), max_positions, param)
        out.append((ids, text))
    return out


def chat_ids(codec: TextCodec, body: ChatCompletionRequest, max_positions: int) -> list[int]:
    """The chat's token ids, rendered with vLLM's template options."""
    if body.continue_final_message and body.add_generation_prompt:
        raise ApiError(
            422,
            "invalid_request",
            "continue_final_message and add_generation_prompt cannot both be true",
            "continue_final_message",
        )
    ids = chat_token_ids(
        codec,
        [m.model_dump() for m in body.messages],
        body.add_generation_prompt,
        body.continue_final_message,
        body.chat_template_kwargs,
        body.add_special_tokens,
        max_positions=max_positions,
    )
    if not ids:
        raise ApiError(422, "empty_text", "the input has no tokens", "messages")
    check_length(codec.card, len(ids), max_positions, "messages")
    return ids


def sampling_for(body: OpenAICommon, card: ModelCard, max_tokens: int, seed: int | None) -> Sampling:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < card.vocab_size or not math.isfinite(value):
            raise ApiError(
                422, "invalid_logit_bias", f"logit_bias keys are token ids in [0, {card.vocab_size})", "logit_bias"
            )
        bias[token] = min(100.0, max(-100.0, value))
    return Sampling(
        max_tokens=max(1, max_tokens),  # 0 scores the prompt: no job samples
        temperature=body.temperature,
        top_p=body.top_p,
        seed=seed,
        stop=stop_list(body.stop),
        top_k=max(0, body.top_k or 0),
        min_p=body.min_p,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=bias,
    )


def max_new(services: Services, card: ModelCard, requested: int | None, prompts: list[list[int]]) -> int:
    """max_tokens within the limits; none asked (vLLM's `null`): as many as the limits and the longest prompt's
    room in the context allow."""
    limit = min(services.settings.max_new_tokens, card.max_new_tokens)
    if requested is None:
        room = min(card.context_length, services.settings.max_positions) - max(len(p) for p in prompts)
        return max(1, min(limit, room))
    if requested > limit:
        raise ApiError(422, "max_tokens_too_large", f"max_tokens is at most {limit}", "max_tokens")
    return requested


def seed_of(seed: int | None, index: int) -> int | None:
    """The seed of a request's index-th sample, as vLLM derives it for n > 1."""
    return None if seed is None else (seed + index) % 2**63


def check_request_cost(services: Services, prompts: list[list[int]], choices: int, max_tokens: int) -> None:
    """Before any job: 422 `request_exceeds_budget` when the request's tokens — each prompt and its max_tokens, once
    per choice (`best_of` included) — are more than a minute of the tenant's LOGPROBE_RATE_LIMIT_TPM. Its choices
    are charged one by one as they start, which would otherwise end in a 429 that no retry could pass."""
    cost = sum(len(ids) + max_tokens for ids in prompts) * choices
    check_fits("tokens", cost, services.settings.rate_limit_tpm)


# ------------------------------------------------------------------ jobs


async def admitted(services: Services, tenant: str, card: ModelCard, ids: list[int], sampling: Sampling) -> None:
    """Check a choice's length against the model and charge its tokens to the tenant."""
    check_length(card, len(ids), services.settings.max_positions, "prompt", sampling.max_tokens)
    await charge(services.redis, tenant, "tokens", len(ids) + sampling.max_tokens, services.settings.rate_limit_tpm)


async def completion_job(
    services: Services, tenant: str, codec: TextCodec, ids: list[int], sampling: Sampling, topk: int
) -> ContrastJob:
    card = codec.card
    await admitted(services, tenant, card, ids, sampling)
    view = DecodeView(model=card.name, fingerprint=card.fingerprint, prefix_ids=ids, weight=1.0)
    return ContrastJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=card.name,
        fingerprint=card.fingerprint,
        views=[view],
        sampling=sampling,
        topk=topk,
        retain=card.retain,
    )


async def finished_steps(services: Services, job: ContrastJob) -> tuple[JobOutcome, list[DecodeStep]]:
    outcome = raise_for_outcome(await services.jobs.run(job), NO_ROOM)
    raw = as_bytes(await services.redis.get(steps_key(job.job_id))) or b"[]"
    return outcome, [DecodeStep.model_validate(s) for s in json.loads(raw)]


@dataclass
class Generated:
    """One choice: its prompt, completion, steps and record; `prompt_stats` (when asked for) are statistics whose
    rows 0..len(prompt)-2 predicted the prompt's tokens 1..len(prompt)-1."""

    prompt_ids: list[int]
    completion: list[int]
    steps: list[DecodeStep]
    finish_reason: str
    record_id: str
    prompt_stats: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def cumulative_logprob(self) -> float:
        return sum(s.view_logprobs[0] for s in self.steps)


async def generate(
    services: Services,
    tenant: str,
    codec: TextCodec,
    ids: list[int],
    sampling: Sampling,
    topk: int,
    need_prompt: bool,
    score_only: bool = False,
) -> Generated:
    """One choice, run to its end; `score_only` (`max_tokens: 0`) scores the prompt (its record is the choice's).

    A choice whose alternatives the record keeps (every choice: `top_k` holds each route to the captured top-k) is
    a plain generation, which the worker runs in its model's continuous batch; its logprobs are read from its
    record (the model's own, as vLLM reports them). Otherwise they come from a decoding job's steps."""
    if score_only:
        meta, scored, _ = await scored_record(services, tenant, codec.card, ids)
        return Generated(ids, [], [], "length", meta.record_id, scored)
    if topk <= CAPTURE_TOPK:
        pooled = await generated_from_record(services, tenant, codec, ids, sampling, need_prompt)
        if pooled is not None:
            return pooled
    job = await completion_job(services, tenant, codec, ids, sampling, topk)
    outcome, steps = await finished_steps(services, job)
    assert outcome.record_id is not None
    stats: dict[str, np.ndarray] | None = None
    if need_prompt:
        found = await services.store.read(tenant, outcome.record_id)
        # evicted already: the prompt's own record holds the same rows
        stats = found[1] if found is not None else (await scored_record(services, tenant, codec.card, ids))[1]
    return Generated(
        ids, outcome.completion_ids or [], steps, outcome.finish_reason or "stop", outcome.record_id, stats
    )


async def generated_from_record(
    services: Services, tenant: str, codec: TextCodec, ids: list[int], sampling: Sampling, need_prompt: bool
) -> Generated | None:
    """A plain generation job, its steps read from its record (None if the record is already gone)."""
    card = codec.card
    await admitted(services, tenant, card, ids, sampling)
    job = generation_job(tenant, card, ids, sampling)
    outcome = raise_for_outcome(await services.jobs.run(job), NO_ROOM)
    assert outcome.record_id is not None
    found = await services.store.read(tenant, outcome.record_id)
    if found is None:
        return None
    _, stats = found
    completion = outcome.completion_ids or []
    rows = range(len(ids) - 1, len(ids) - 1 + len(completion))  # row r holds the distribution of token r + 1
    steps = [
        DecodeStep(
            token=token,
            top_ids=stats["topk_ids"][row].tolist(),
            top_logprobs=stats["topk_logprobs"][row].tolist(),
            view_logprobs=[float(stats["logprob"][row])],
            view_ranks=[int(stats["rank"][row])],
        )
        for token, row in zip(completion, rows, strict=True)
    ]
    return Generated(
        ids, completion, steps, outcome.finish_reason or "stop", outcome.record_id, stats if need_prompt else None
    )


async def gather_all(coroutines: Iterable[Any]) -> list[Any]:
    """Run concurrently; if one fails, the others are cancelled and its error is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


# ------------------------------------------------------------------ answers


def completion_text(codec: TextCodec, ids: list[int], stops: list[str]) -> str:
    return truncate_at_stop(codec.decode(ids), stops) if stops else codec.decode(ids)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def floor(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


class TokenNames:
    """How tokens are named in logprobs: their text, or vLLM's `token_id:<id>` (`return_tokens_as_token_ids`)."""

    def __init__(self, codec: TextCodec, as_ids: bool) -> None:
        self.codec, self.as_ids = codec, as_ids
        self.pieces = codec.pieces()

    def __call__(self, token: int) -> str:
        return f"token_id:{token}" if self.as_ids else self.pieces[token]

    def texts(self, ids: list[int]) -> list[str]:
        """The text each token adds (they join to the decoded text), or the ids' names."""
        return [f"token_id:{t}" for t in ids] if self.as_ids else self.codec.token_texts(ids)


def prompt_rows(gen: Generated, k: int) -> list[tuple[float, int, list[int], list[float]]]:
    """For prompt tokens 1..n-1: (logprob, rank, top ids, top logprobs) from the choice's record."""
    stats = gen.prompt_stats
    assert stats is not None
    n = len(gen.prompt_ids) - 1
    logprob, rank = stats["logprob"][:n].tolist(), stats["rank"][:n].tolist()
    top_ids, top_lp = stats["topk_ids"][:n, :k].tolist(), stats["topk_logprobs"][:n, :k].tolist()
    return list(zip(logprob, rank, top_ids, top_lp, strict=True))


def _top(name: TokenNames, chosen: int, logprob: float, ids: list[int], lps: list[float]) -> dict[str, float]:
    """The chosen token and the top alternatives, as OpenAI's completions give them (up to k + 1 entries)."""
    top = {name(chosen): floor(logprob)}
    for i, v in zip(ids, lps, strict=True):
        top.setdefault(name(i), floor(v))
    return top


def completion_logprobs(
    gen: Generated, names: TokenNames, k: int, echo: bool, offset: int = 0, steps: list[DecodeStep] | None = None
) -> dict[str, Any]:
    """The OpenAI completions `logprobs` object of a choice (its prompt first when echoed)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if echo:
        tokens = names.texts(gen.prompt_ids)
        token_logprobs, tops = [None], [None]
        for (lp, _, ids, lps), token in zip(prompt_rows(gen, k), gen.prompt_ids[1:], strict=True):
            token_logprobs.append(floor(lp))
            tops.append(_top(names, token, lp, ids, lps))
    for step in gen.steps if steps is None else steps:
        tokens.append(names(step.token))
        token_logprobs.append(floor(step.view_logprobs[0]))
        tops.append(_top(names, step.token, step.view_logprobs[0], step.top_ids[:k], step.top_logprobs[:k]))
    offsets, at = [], offset
    for piece in tokens:
        offsets.append(at)
        at += len(piece)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def vllm_prompt_logprobs(gen: Generated, names: TokenNames, k: int) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: None for the first token, then per token its own entry and the top-k, by id."""
    out: list[dict[str, dict[str, Any]] | None] = [None]
    for (lp, rank, ids, lps), token in zip(prompt_rows(gen, k), gen.prompt_ids[1:], strict=True):
        entry = {str(token): {"logprob": floor(lp), "rank": int(rank), "decoded_token": names(token)}}
        for r, (i, v) in enumerate(zip(ids, lps, strict=True), start=1):
            entry.setdefault(str(i), {"logprob": floor(v), "rank": r, "decoded_token": names(i)})
        out.append(entry)
    return out


def chat_logprob(names: TokenNames, step: DecodeStep, k: int) -> dict[str, Any]:
    def item(token: int, logprob: float) -> dict[str, Any]:
        text = names(token)
        return {"token": text, "logprob": floor(logprob), "bytes": list(text.encode())}

    return {
        **item(step.token, step.view_logprobs[0]),
        "top_logprobs": [item(i, v) for i, v in list(zip(step.top_ids, step.top_logprobs, strict=True))[:k]],
    }


def best(candidates: list[Generated], n: int) -> list[Generated]:
    """`best_of`: the n candidates of highest cumulative logprob (vLLM's rule before it dropped best_of)."""
    if len(candidates) == n:
        return candidates
    return sorted(candidates, key=lambda g: g.cumulative_logprob, reverse=True)[:n]


def prompt_k(services: Services, requested: int | None) -> int:
    """Alternatives per prompt token for vLLM's `prompt_logprobs` (the records keep CAPTURE_TOPK)."""
    return top_k(requested, services.settings, CAPTURE_TOPK, default=0, param="prompt_logprobs")


class Detokenizer:
    """Text deltas from growing token ids, holding back incomplete characters and anything past a stop."""

    def __init__(self, codec: TextCodec, stops: list[str]) -> None:
        self.codec, self.stops, self.ids, self.sent = codec, stops, list[int](), ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = completion_text(self.codec, self.ids, self.stops)
        if text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


async def merged(streams: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    """The items of several async iterators as they come; an error in one ends all."""
    queue: asyncio.Queue[tuple[int, T | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item, None))
            await queue.put((i, None, None))
        except Exception as exc:  # handed to the consumer
            await queue.put((i, None, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(tasks)
        while open_streams:
            _, item, error = await queue.get()
            if error is not None:
                raise error
            if item is None:
                open_streams -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
