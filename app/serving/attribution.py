"""Attribution requests as worker jobs (workers/attribution.py): inputs checked, ReAGent's replacements taken
from the record, the answer shaped for clients and the page."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.platform.errors import ApiError
from app.platform.limits import charge, charge_after
from app.platform.settings import Settings
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.scoring import record_for, scored_record
from app.serving.services import Services
from app.serving.text import share_tokenizer
from logprobe.schemas.attribution import AttributionRequest
from workers.contract.cards import ModelCard
from workers.contract.jobs import AttributionJob, AttributionResult, ReagentParams, occlusion_passes, reagent_min_passes
from workers.contract.keys import attribution_key
from workers.contract.names import as_bytes

TOP = 10  # most important context tokens listed per target


def replacement_ids(token_ids: list[int], topk_ids: np.ndarray) -> list[int]:
    """ReAGent's stand-in for each token: the model's most likely token at its place, or the second most likely
    where that is the token itself; -1 for token 0, which nothing predicted."""
    out = [-1]
    for i in range(1, len(token_ids)):
        first, second = int(topk_ids[i - 1, 0]), int(topk_ids[i - 1, 1])
        out.append(second if first == token_ids[i] else first)
    return out


def _check(body: AttributionRequest, n_tokens: int, settings: Settings) -> int:
    """The fewest forward passes the request needs (a 422 where the request cannot be run as given). Its work is
    bounded twice: in passes, and in tokens read (passes x context tokens)."""
    positions = body.positions
    if len(set(positions)) != len(positions) or not all(2 <= t < n_tokens for t in positions):
        raise ApiError(
            422, "invalid_positions", f"positions must be distinct and lie in [2, {n_tokens - 1}]", "positions"
        )
    context = max(positions) + 1
    limit = min(settings.max_attribution_passes, max(1, settings.max_attribution_tokens // context))
    if body.max_passes > limit:
        raise ApiError(
            422,
            "max_passes_too_large",
            f"max_passes is at most {limit} for a context of {context} tokens ({settings.max_attribution_passes} "
            f"passes, {settings.max_attribution_tokens} tokens read in all)",
            "max_passes",
        )
    reagent = ReagentParams(**body.reagent.model_dump())
    needed = occlusion_passes(positions) if body.method == "occlusion" else reagent_min_passes(positions, reagent)
    if needed > body.max_passes:
        raise ApiError(
            422,
            "max_passes_too_small",
            f"{body.method} needs at least {needed} forward passes for these targets; raise max_passes (at most "
            f"{limit}) or name fewer targets",
            "max_passes",
        )
    return needed


async def _replacements(
    services: Services,
    tenant: str,
    body: AttributionRequest,
    card: ModelCard,
    context: list[int],
    stats: dict[str, np.ndarray],
) -> list[int]:
    """ReAGent's stand-ins: from the attributed model's own record, or from the record of the same tokens under
    `replacement_model` (same tokenizer, else 422 `tokenizer_mismatch`)."""
    if body.replacement_model is None or body.replacement_model == card.name:
        return replacement_ids(context, stats["topk_ids"])
    other = await services.catalog.card(body.replacement_model, "replacement_model")
    codecs = [await services.catalog.codec(c) for c in (card, other)]
    if not share_tokenizer(codecs):
        raise ApiError(
            422,
            "tokenizer_mismatch",
            f"{other.name!r} does not share {card.name!r}'s tokenizer, so its tokens cannot stand in",
            "replacement_model",
        )
    _, other_stats, _ = await scored_record(services, tenant, other, context)
    return replacement_ids(context, other_stats["topk_ids"])


async def attribute(body: AttributionRequest, services: Services, tenant: str) -> dict[str, Any]:
    meta, stats, codec, cached = await record_for(
        services, tenant, model=body.model, record_id=body.record_id, text=body.text, messages=body.messages
    )
    needed = _check(body, len(meta.token_ids), services.settings)
    context = meta.token_ids[: max(body.positions) + 1]
    tpm = services.settings.rate_limit_tpm
    await charge(services.redis, tenant, "tokens", needed * len(context), tpm)  # every pass reads the context
    card = await services.catalog.card(meta.model)
    swaps = await _replacements(services, tenant, body, card, context, stats) if body.method == "reagent" else []
    job = AttributionJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=meta.model,
        fingerprint=card.fingerprint,
        token_ids=context,
        positions=body.positions,
        method=body.method,
        replacements=swaps,
        seed=body.seed,
        max_passes=body.max_passes,
        reagent=ReagentParams(**body.reagent.model_dump()),
    )
    raise_for_outcome(await services.jobs.run(job))
    raw = as_bytes(await services.redis.get(attribution_key(job.job_id)))
    if raw is None:
        raise ApiError(504, "attribution_expired", "the attribution expired before it was read; retry")
    result = AttributionResult.model_validate_json(raw)
    await charge_after(services.redis, tenant, "tokens", (result.passes - needed) * len(context), tpm)
    texts = codec.token_texts(context)
    pieces = codec.pieces()
    return {
        "record_id": meta.record_id,
        "model": meta.model,
        "cached": cached,
        "method": body.method,
        "seed": body.seed,
        "max_passes": body.max_passes,
        "passes": result.passes,
        "tokens": [{"position": i, "id": t, "text": texts[i]} for i, t in enumerate(context)],
        "replacements": [None if s < 0 else {"position": i, "id": s, "text": pieces[s]} for i, s in enumerate(swaps)]
        if swaps
        else None,
        "targets": [
            {
                "position": target.position,
                "id": context[target.position],
                "text": texts[target.position],
                "logprob": target.logprob,
                "importance": target.importance,
                "top": np.argsort(-np.asarray(target.importance), kind="stable")[:TOP].tolist(),
                "passes": target.passes,
                "converged": target.converged,
            }
            for target in result.targets
        ],
    }
