"""Getting a record for token ids: from the cache when it is there, else through a worker job."""

from __future__ import annotations

import numpy as np

from app.platform import metrics
from app.platform.errors import ApiError
from app.platform.limits import charge
from app.schemas.tokens import ChatMessage
from app.serving.inputs import input_ids
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.services import Services
from app.serving.text import TextCodec
from workers.protocol import ModelCard, RecordMeta, ScoreJob, record_id

SCORE_OPTIONS = {"kind": "score"}


SCORING_TRIES = 2  # a record evicted between its writing and its reading is scored once more


async def scored_record(
    services: Services, tenant: str, card: ModelCard, ids: list[int]
) -> tuple[RecordMeta, dict[str, np.ndarray], bool]:
    """The record for these tokens, scored if needed, and whether it was cached. A whole record is read or none
    (one HMGET): one that Redis evicted or expired, or that lacks a part, is scored again."""
    await charge(services.redis, tenant, "tokens", len(ids), services.settings.rate_limit_tpm)
    rid = record_id(await services.secret(), tenant, card.fingerprint, ids, SCORE_OPTIONS)
    found = await services.store.read(tenant, rid)
    metrics.CACHE.labels("miss" if found is None else "hit").inc()
    if found is not None:
        return *found, True
    for _ in range(SCORING_TRIES):
        job = ScoreJob(
            job_id=new_job_id(),
            tenant=tenant,
            model=card.name,
            fingerprint=card.fingerprint,
            record_id=rid,
            token_ids=ids,
        )
        raise_for_outcome(await services.jobs.run(job))
        metrics.TOKENS.labels("scored").inc(len(ids))
        found = await services.store.read(tenant, rid)
        if found is not None:
            return *found, False
        metrics.CACHE.labels("lost").inc()
    raise ApiError(
        503,
        "record_evicted",
        "Redis evicted the record as soon as it was written (it is short of memory); retry",
        headers={"Retry-After": "5"},
    )


async def record_for(
    services: Services,
    tenant: str,
    *,
    model: str | None,
    record_id: str | None,
    text: str | None,
    messages: list[ChatMessage] | None,
    add_generation_prompt: bool = False,
) -> tuple[RecordMeta, dict[str, np.ndarray], TextCodec, bool]:
    """The record an analysis runs on: a stored one by id, or the one for a text or chat (scored if needed)."""
    if record_id is not None:
        if text is not None or messages is not None:
            raise ApiError(422, "missing_input", "give a `record_id` or a text, not both", "record_id")
        meta, stats = await services.store.require(tenant, record_id)
        if model is not None and model != meta.model:
            raise ApiError(422, "model_mismatch", f"record {record_id!r} was made by {meta.model!r}", "model")
        card = await services.catalog.card(meta.model)
        return meta, stats, await services.catalog.codec(card), True
    if model is None:
        raise ApiError(422, "missing_input", "give a `record_id`, or a `model` with a `text` or `messages`", "model")
    card = await services.catalog.card(model)
    codec = await services.catalog.codec(card)
    ids = input_ids(codec, text, messages, add_generation_prompt, services.settings.max_positions)
    meta, stats, cached = await scored_record(services, tenant, card, ids)
    return meta, stats, codec, cached
