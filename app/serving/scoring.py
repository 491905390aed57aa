"""Getting a record for token ids: from the cache when it is there, else through a worker job."""

from __future__ import annotations

import numpy as np

from app.platform import metrics
from app.platform.errors import ApiError
from app.platform.limits import charge
from app.serving.inputs import check_length, input_ids
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.tokens import ChatMessage
from workers.contract.cards import ModelCard
from workers.contract.jobs import ScoreJob
from workers.contract.names import Retain, record_id
from workers.contract.records import RecordMeta

SCORE_OPTIONS = {"kind": "score"}


SCORING_TRIES = 2  # a record evicted between its writing and its reading is scored once more


def keeps(meta: RecordMeta, retain: Retain) -> bool:
    """Whether a record keeps what `retain` asks for (a full record serves a "stats" request too)."""
    return retain == "stats" or meta.retain == "full"


async def scored_record(
    services: Services,
    tenant: str,
    card: ModelCard,
    ids: list[int],
    retain: Retain | None = None,
    charged: bool = False,
    layers: list[int] | None = None,
) -> tuple[RecordMeta, dict[str, np.ndarray], bool]:
    """The record for these tokens, scored if needed, and whether it was cached. A whole record is read or none
    (one HMGET): one that Redis evicted or expired, or that lacks a part, is scored again. `retain` (default: the
    model's) says what a new record keeps; "full" re-scores a stored stats record so that it keeps full rows.
    `charged`: the tokens were counted against the tenant's budget already (a head's examples, when it was asked).
    `layers` (checked by app.serving.layers.scoring_layers): hidden_states indices the record keeps too; a record
    with layers is a record of its own (its id covers them)."""
    if not charged:
        await charge(services.redis, tenant, "tokens", len(ids), services.settings.rate_limit_tpm)
    options = {**SCORE_OPTIONS, "layers": layers} if layers else SCORE_OPTIONS
    rid = record_id(await services.secret(), tenant, card.fingerprint, ids, options)
    wanted = retain or card.retain
    found = await services.store.read(tenant, rid)
    hit = found is not None and keeps(found[0], wanted)
    metrics.CACHE.labels("hit" if hit else "miss").inc()
    if found is not None and hit:
        return *found, True
    return *await _score(services, tenant, card, rid, ids, wanted, layers=layers or []), False


async def card_of(services: Services, meta: RecordMeta) -> ModelCard:
    """The card of the model that made a record, as it is served now; 409 model_changed if it was reloaded with
    other weights since (the record's rows then come from another model)."""
    card = await services.catalog.card(meta.model)
    if card.fingerprint != meta.fingerprint:
        raise ApiError(
            409,
            "model_changed",
            f"{meta.model!r} was reloaded with other weights since record {meta.record_id} was made; score it anew",
            "record_id",
        )
    return card


async def upgraded(
    services: Services, tenant: str, meta: RecordMeta, stats: dict[str, np.ndarray]
) -> tuple[RecordMeta, dict[str, np.ndarray]]:
    """The record with full rows: a stats record is re-scored by its model, which adds the rows (its statistics and
    metadata stay as they were); a full one is returned as it is."""
    if meta.retain == "full":
        return meta, stats
    card = await card_of(services, meta)
    await charge(services.redis, tenant, "tokens", len(meta.token_ids), services.settings.rate_limit_tpm)
    return await _score(services, tenant, card, meta.record_id, meta.token_ids, "full", meta.n_prompt)


async def with_last_state(services: Services, tenant: str, meta: RecordMeta) -> RecordMeta:
    """A record whose hidden states include the last token's own (the state that predicts what follows it, which a
    record does not keep: its states are those that predicted tokens 1..T-1): the record of the same tokens and one
    more (the model's end-of-text token), scored with full rows if not cached. A causal model's states of the first T
    tokens do not depend on what follows them, so its first T rows are the record's states and the last one."""
    card = await card_of(services, meta)
    ids = [*meta.token_ids, card.eos_token_ids[0] if card.eos_token_ids else 0]
    check_length(card, len(ids), services.settings.max_positions, "stop")
    longer, _, _ = await scored_record(services, tenant, card, ids, "full")
    return longer


async def _score(
    services: Services,
    tenant: str,
    card: ModelCard,
    rid: str,
    ids: list[int],
    retain: Retain,
    n_prompt: int | None = None,
    layers: list[int] | None = None,
) -> tuple[RecordMeta, dict[str, np.ndarray]]:
    """Score the tokens into record `rid` through a worker, and read it back. A job in flight for the same record
    may be joined; if it kept less than `retain` asks for, the next try runs a job of its own."""
    for _ in range(SCORING_TRIES):
        job = ScoreJob(
            job_id=new_job_id(),
            tenant=tenant,
            model=card.name,
            fingerprint=card.fingerprint,
            record_id=rid,
            token_ids=ids,
            n_prompt=n_prompt,
            retain=retain,
            layers=layers or [],
        )
        raise_for_outcome(await services.jobs.run(job))
        metrics.TOKENS.labels("scored").inc(len(ids))
        found = await services.store.read(tenant, rid)
        if found is not None and keeps(found[0], retain):
            return found
        if found is None:
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
    retain: Retain | None = None,
) -> tuple[RecordMeta, dict[str, np.ndarray], TextCodec, bool]:
    """The record an analysis runs on: a stored one by id, or the one for a text or chat (scored if needed); with
    retain "full", a stored stats record is upgraded."""
    if record_id is not None:
        if text is not None or messages is not None:
            raise ApiError(422, "missing_input", "give a `record_id` or a text, not both", "record_id")
        meta, stats = await services.store.require(tenant, record_id)
        if model is not None and model != meta.model:
            raise ApiError(422, "model_mismatch", f"record {record_id!r} was made by {meta.model!r}", "model")
        cached = retain != "full" or meta.retain == "full"
        if not cached:
            meta, stats = await upgraded(services, tenant, meta, stats)
        card = await services.catalog.card(meta.model)
        return meta, stats, await services.catalog.codec(card), cached
    if model is None:
        raise ApiError(422, "missing_input", "give a `record_id`, or a `model` with a `text` or `messages`", "model")
    card = await services.catalog.card(model)
    codec = await services.catalog.codec(card)
    ids = await input_ids(codec, text, messages, add_generation_prompt, services.settings.max_positions)
    meta, stats, cached = await scored_record(services, tenant, card, ids, retain)
    return meta, stats, codec, cached
