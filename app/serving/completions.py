"""The OpenAI-compatible endpoints' work: a one-view decoding job, its steps, and logprobs in OpenAI's shapes."""

from __future__ import annotations

import json
from typing import Any

from app.platform.errors import ApiError
from app.platform.limits import charge
from app.schemas.openai import OpenAICommon
from app.serving.inputs import check_length, stop_list, truncate_at_stop
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.scoring import scored_record
from app.serving.services import Services
from app.serving.text import TextCodec
from workers.protocol import ContrastJob, DecodeStep, DecodeView, JobOutcome, Sampling, as_bytes, steps_key


async def completion_job(
    services: Services, tenant: str, body: OpenAICommon, codec: TextCodec, ids: list[int], max_tokens: int, topk: int
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


async def finished_steps(services: Services, job: ContrastJob) -> tuple[JobOutcome, list[DecodeStep]]:
    outcome = raise_for_outcome(await services.jobs.run(job))
    raw = as_bytes(await services.redis.get(steps_key(job.job_id))) or b"[]"
    return outcome, [DecodeStep.model_validate(s) for s in json.loads(raw)]


def completion_text(codec: TextCodec, ids: list[int], stops: list[str]) -> str:
    return truncate_at_stop(codec.decode(ids), stops) if stops else codec.decode(ids)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprob(codec: TextCodec, step: DecodeStep, k: int) -> dict[str, Any]:
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


async def prompt_logprobs(
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
