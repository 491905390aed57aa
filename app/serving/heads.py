"""Heads (#15): trained per tenant on labelled texts or records, stored under a random id, listed, deleted.

POST checks the examples at once (labels, classes, counts, records, models), stores the head's state and answers;
a task in the gateway then scores the texts that have no record yet and submits a `train_head` job to the model's
stream, where a worker trains the head from the records and writes its weights (`workers/heads`)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

import numpy as np

from app.analysis import REGISTRY
from app.platform.errors import ApiError
from app.platform.limits import charge, prepaid
from app.serving import quotas, stack
from app.serving.analyses import analyse, span_positions
from app.serving.inputs import token_ids
from app.serving.jobs import client_gone, new_job_id
from app.serving.layers import head_layers, keeps_layers, scoring_layers
from app.serving.pairs import chat_reply
from app.serving.scoring import scored_record
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.heads import Head, HeadExampleIn, HeadRequest
from workers.contract.cards import ModelCard
from workers.contract.heads import HEAD_WRITE_IF_EXISTS, HeadError, HeadState, head_params, head_training_bytes
from workers.contract.jobs import HeadExample, HeadJob
from workers.contract.keys import head_index_key, head_key
from workers.contract.lifetimes import announce, keep_until
from workers.contract.names import Retain, as_bytes
from workers.contract.records import RecordMeta
from workers.contract.usage import RECOUNT_HASH, object_usage_key

log = logging.getLogger("app.serving.heads")

MIN_EXAMPLES = 10
MIN_PER_CLASS = 4
MIN_LENS_TEXTS = 2
MAX_HEADS_PER_TENANT = 100
SCORING_CONCURRENCY = 4
PREPARING = "lp:heads-preparing"  # heads being prepared ("<tenant>\x1f<head id>"): leased, resumed by any gateway


def new_head_id() -> str:
    return "head_" + secrets.token_hex(12)


def head_not_found(head_id: str) -> ApiError:
    return ApiError(404, "head_not_found", f"head {head_id!r} not found", "head_id")


def to_response(state: HeadState) -> Head:
    return Head.model_validate(
        {
            **state.model_dump(exclude={"head_id", "fingerprint", "hidden_size", "feature_fingerprints"}),
            "id": state.head_id,
        }
    )


async def load_head(services: Services, tenant: str, head_id: str) -> HeadState | None:
    if not head_id.startswith("head_") or ":" in head_id:
        return None
    raw = as_bytes(await services.redis.hget(head_key(tenant, head_id), "state"))
    return None if raw is None else HeadState.model_validate_json(raw)


async def get_head(services: Services, tenant: str, head_id: str) -> Head:
    state = await load_head(services, tenant, head_id)
    if state is None:
        raise head_not_found(head_id)
    return to_response(state)


async def list_heads(services: Services, tenant: str) -> list[Head]:
    """The tenant's heads, newest first."""
    live = await quotas.live_entries(services.redis, head_index_key(tenant), lambda h: head_key(tenant, h))
    found = [await load_head(services, tenant, head_id) for head_id in live]
    return sorted((to_response(s) for s in found if s is not None), key=lambda h: h.created_at, reverse=True)


async def delete_head(services: Services, tenant: str, head_id: str) -> None:
    if not head_id.startswith("head_") or ":" in head_id:
        raise head_not_found(head_id)
    pipe = services.redis.pipeline(transaction=True)
    pipe.delete(head_key(tenant, head_id))
    pipe.hdel(head_index_key(tenant), head_id)
    pipe.hdel(object_usage_key(tenant), head_key(tenant, head_id))
    removed, *_ = await pipe.execute()
    if not removed:
        raise head_not_found(head_id)


async def _write_state(services: Services, tenant: str, state: HeadState) -> bool:
    """Update a head's state unless it was deleted meanwhile."""
    script = services.redis.register_script(HEAD_WRITE_IF_EXISTS)
    return bool(await script(keys=[head_key(tenant, state.head_id)], args=["state", state.model_dump_json()]))


# ---------------------------------------------------------------- checking a request


def _texts(examples: list[HeadExampleIn]) -> list[int]:
    """A tuned lens's examples: texts, no labels (read as 0 inside); at least MIN_LENS_TEXTS (one is held out)."""
    for i, example in enumerate(examples):
        if sum(getattr(example, k) is not None for k in ("text", "messages", "record_id")) != 1:
            raise ApiError(
                422, "missing_input", f"examples[{i}] needs exactly one of text, messages, record_id", f"examples.{i}"
            )
    if len(examples) < MIN_LENS_TEXTS:
        raise ApiError(
            422,
            "too_few_examples",
            f"a tuned lens needs at least {MIN_LENS_TEXTS} distinct texts (some are held out to measure it)",
            "examples",
        )
    return [0] * len(examples)


def _labels(examples: list[HeadExampleIn]) -> list[int]:
    labels = []
    for i, example in enumerate(examples):
        if isinstance(example.label, bool) or example.label not in (0, 1):
            raise ApiError(
                422, "invalid_label", f"examples[{i}].label is {example.label!r}; labels are 0 or 1", f"examples.{i}"
            )
        given = [k for k in ("text", "messages", "record_id") if getattr(example, k) is not None]
        if len(given) != 1:
            raise ApiError(
                422, "missing_input", f"examples[{i}] needs exactly one of text, messages, record_id", f"examples.{i}"
            )
        labels.append(int(example.label))
    counts = [labels.count(0), labels.count(1)]
    if min(counts) == 0:
        raise ApiError(
            422, "single_class", f"every example has label {labels[0]}: give examples of both labels", "examples"
        )
    if len(labels) < MIN_EXAMPLES or min(counts) < MIN_PER_CLASS:
        raise ApiError(
            422,
            "too_few_examples",
            f"a head needs at least {MIN_EXAMPLES} examples and {MIN_PER_CLASS} of each label "
            f"(got {counts[0]} of label 0 and {counts[1]} of label 1)",
            "examples",
        )
    return labels


def _check_request(body: HeadRequest, card: ModelCard) -> dict[str, float | int | str]:
    if body.name in REGISTRY.methods:
        raise ApiError(
            422, "invalid_head_name", f"{body.name!r} is the name of a method; name the head otherwise", "name"
        )
    try:
        params = head_params(body.kind, body.params)
    except ValueError as exc:
        raise ApiError(422, "invalid_params", str(exc), "params") from exc
    if body.kind != "stack" and body.features is not None:
        raise ApiError(422, "invalid_request", "only stack heads take `features`", "features")
    if body.kind not in ("los", "stack") and card.storage != "hidden":
        raise ApiError(
            422,
            "hidden_states_not_stored",
            f"a {body.kind} head reads hidden states; {card.name} keeps full rows instead (use kind 'los')",
            "kind",
        )
    head_layers(body.kind, params, card)
    if body.kind == "lens":
        keeps_layers(card, "kind", ": a tuned lens reads every layer")
    return params


async def _given_records(services: Services, tenant: str, body: HeadRequest, card: ModelCard) -> dict[int, RecordMeta]:
    found = {}
    layers = head_layers(body.kind, head_params(body.kind, body.params), card)
    for i, example in enumerate(body.examples):
        if example.record_id is None:
            continue
        try:
            meta = await services.store.meta(tenant, example.record_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise ApiError(
                422, "unknown_record", f"examples[{i}]: no record {example.record_id!r}", f"examples.{i}.record_id"
            ) from None
        if meta.model != card.name or meta.fingerprint != card.fingerprint:
            raise ApiError(
                422,
                "mixed_models",
                f"examples[{i}]: record {example.record_id!r} was made by {meta.model!r}, not by the head's model "
                f"{card.name!r} (as it is served now); one head reads one model's records",
                f"examples.{i}.record_id",
            )
        if body.kind not in ("los", "stack", "lens") and meta.retain != "full":
            raise ApiError(
                409,
                "rows_not_retained",
                f"examples[{i}]: a {body.kind} head reads hidden states, and record {example.record_id!r} keeps "
                "statistics only; score its text with retain 'full' (which upgrades it) or train a 'los' head",
                f"examples.{i}.record_id",
            )
        if layers is not None and not set(layers) <= set(meta.layers):
            raise ApiError(
                409,
                "layer_not_stored",
                f"examples[{i}]: a probe on layer {body.params.get('layer')!r} reads layers {layers}, and record "
                f"{example.record_id!r} keeps layers {meta.layers}; score its text with those `layers`",
                f"examples.{i}.record_id",
            )
        found[i] = meta
    return found


# ---------------------------------------------------------------- creating


async def create_head(services: Services, tenant: str, body: HeadRequest, creator: str | None = None) -> Head:
    body = body.model_copy(update={"examples": _distinct(body.examples)})  # a repeated example is trained once
    labels = _texts(body.examples) if body.kind == "lens" else _labels(body.examples)
    card = await services.catalog.card(body.model)
    params = _check_request(body, card)
    given = await _given_records(services, tenant, body, card)
    codec = await services.catalog.codec(card)
    tokenized = await asyncio.to_thread(_tokenized, body, given, codec, services.settings.max_positions)
    _check_budget(body, card, params, given, tokenized, services.settings.max_head_training_bytes)
    _check_layer_bytes(body, card, params, tokenized, services.settings.max_layer_bytes)
    features = stack.check_features(body.features, card.name) if body.kind == "stack" else None
    others = await stack.fingerprints(services, features) if features is not None else None
    # the texts its preparation scores count against the tenant's token budget now, before anything is accepted
    # (a stack head's texts once per model its features read; its records' texts too: they are analysed again)
    tokens = sum(map(len, tokenized.values()))
    if features is not None:
        tokens = (tokens + sum(len(m.token_ids) for m in given.values())) * (1 + stack.other_models(features))
    await charge(services.redis, tenant, "tokens", tokens, services.settings.rate_limit_tpm)
    index = head_index_key(tenant)
    await quotas.check_room(services.redis, index, MAX_HEADS_PER_TENANT, "heads", lambda h: head_key(tenant, h))
    to_score = len(body.examples) if features is not None else len(body.examples) - len(given)
    state = HeadState(
        head_id=new_head_id(),
        name=body.name,
        kind=body.kind,
        family=body.family,
        model=card.name,
        fingerprint=card.fingerprint,
        hidden_size=card.hidden_size,
        span=body.span if isinstance(body.span, str) else body.span.model_dump(),
        status="scoring" if to_score else "queued",
        stage=f"scoring {to_score} texts" if to_score else "waiting for a worker",
        seed=body.seed,
        params=params,
        examples={"texts": len(labels)} if body.kind == "lens" else {"0": labels.count(0), "1": labels.count(1)},
        expires_at=quotas.expires_at(),
        created_by=creator,
        features=features,
        feature_fingerprints=others,
    )
    key = head_key(tenant, state.head_id)
    pipe = services.redis.pipeline(transaction=True)
    # the request stays beside the state until the training job is submitted: another gateway resumes from it
    fields = [state.model_dump_json(), body.model_dump_json()]
    pipe.hset(key, mapping={"state": fields[0], "request": fields[1]})
    keep_until(pipe, state.expires_at or quotas.expires_at(), key)  # a deadline, never a TTL: eviction spares it
    await pipe.execute()
    await announce(services.redis, key)
    entry = {"name": state.name, "created_at": state.created_at}
    try:
        await services.objects.record(services.redis, tenant, key, sum(len(v.encode()) for v in fields))
        await quotas.claim(
            services.redis, index, state.head_id, entry, MAX_HEADS_PER_TENANT, "heads", lambda h: head_key(tenant, h)
        )
    except ApiError:
        await services.redis.delete(key)
        await services.objects.release(services.redis, tenant, key)
        raise
    await services.preparations.add(
        _preparation(tenant, state.head_id),
        lambda: _prepare(services, tenant, state, body, labels, given, tokenized, card),
    )
    return to_response(state)


def _preparation(tenant: str, head_id: str) -> str:
    return f"{tenant}\x1f{head_id}"


async def resume_preparation(services: Services, name: str) -> None:
    """Prepare a head again from its stored request, after the gateway that was preparing it stopped (its lease
    lapsed): scored texts are found cached, the rest are scored, and the training job is submitted. A head that
    can no longer be prepared (its model changed, a record expired) fails with the reason."""
    tenant, head_id = name.split("\x1f", 1)
    raw_state, raw_request = map(as_bytes, await services.redis.hmget(head_key(tenant, head_id), ["state", "request"]))
    state = None if raw_state is None else HeadState.model_validate_json(raw_state)
    if state is None or raw_request is None or state.status not in ("scoring", "queued"):
        await _prepared(services, tenant, head_id)
        return
    log.info("resuming the preparation of head %s", head_id)
    body = HeadRequest.model_validate_json(raw_request)
    try:
        card = await services.catalog.card(body.model)
        if card.fingerprint != state.fingerprint:
            raise ApiError(
                409, "model_changed", f"{card.name!r} was reloaded with other weights; create the head again"
            )
        given = await _given_records(services, tenant, body, card)
        codec = await services.catalog.codec(card)
        tokenized = await asyncio.to_thread(_tokenized, body, given, codec, services.settings.max_positions)
    except ApiError as exc:
        await _fail(services, tenant, state, exc.code, exc.message)
        await _prepared(services, tenant, head_id)
        return
    labels = _texts(body.examples) if body.kind == "lens" else _labels(body.examples)
    await _prepare(services, tenant, state, body, labels, given, tokenized, card)


async def _prepared(services: Services, tenant: str, head_id: str) -> None:
    """The head's preparation is over (its job submitted, or it failed): no gateway resumes it."""
    pipe = services.redis.pipeline(transaction=False)
    pipe.srem(PREPARING, _preparation(tenant, head_id))
    pipe.hdel(head_key(tenant, head_id), "request")
    await pipe.execute()
    recount = services.redis.register_script(RECOUNT_HASH)  # its request no longer counts against its tenant
    await recount(keys=[object_usage_key(tenant), head_key(tenant, head_id)])


async def _prepare(
    services: Services,
    tenant: str,
    state: HeadState,
    body: HeadRequest,
    labels: list[int],
    given: dict[int, RecordMeta],
    tokenized: dict[int, list[int]],
    card: ModelCard,
) -> None:
    """Score the texts, resolve each example's span, submit the training job; a failure fails the head."""
    client_gone.set(None)  # the request that started this has been answered; its client leaving cancels nothing
    try:
        if state.features is not None:
            with prepaid():  # charged when the head was asked for
                examples = await _stack_examples(services, tenant, state, body, labels)
        else:
            codec = await services.catalog.codec(card)
            metas = await _score_texts(services, tenant, state, body, given, tokenized, card)
            examples = await asyncio.to_thread(_examples, body, labels, metas, codec)  # chats are tokenized again
        job = HeadJob(
            job_id=new_job_id(),
            tenant=tenant,
            model=card.name,
            fingerprint=card.fingerprint,
            head_id=state.head_id,
            head_kind=state.kind,
            examples=examples,
            seed=state.seed,
            params=state.params,
            target_fpr=body.target_fpr,
            deadline=time.time() + services.settings.max_head_training_s,
        )
        state = state.model_copy(update={"status": "queued", "stage": "waiting for a worker", "progress": 0.0})
        if await _write_state(services, tenant, state):
            await services.jobs.submit(job)
    except ApiError as exc:
        await _fail(services, tenant, state, exc.code, exc.message)
    except Exception as exc:  # a bug: the head says so rather than staying in `scoring`
        log.exception("preparing head %s failed", state.head_id)
        await _fail(services, tenant, state, "internal", f"{type(exc).__name__}: {exc}")
    await _prepared(services, tenant, state.head_id)  # not reached when Redis went away: then it is resumed


async def _fail(services: Services, tenant: str, state: HeadState, code: str, message: str) -> None:
    failed = state.model_copy(
        update={
            "status": "failed",
            "stage": "",
            "error": HeadError(code=code, message=message),
            "finished_at": time.time(),
        }
    )
    await _write_state(services, tenant, failed)


async def _score_texts(
    services: Services,
    tenant: str,
    state: HeadState,
    body: HeadRequest,
    given: dict[int, RecordMeta],
    tokenized: dict[int, list[int]],
    card: ModelCard,
) -> list[RecordMeta]:
    gate = asyncio.Semaphore(SCORING_CONCURRENCY)
    todo = [i for i in range(len(body.examples)) if i not in given]
    layers = head_layers(body.kind, head_params(body.kind, body.params), card)  # a probe on a layer: kept too
    done = 0

    async def score(i: int) -> tuple[int, RecordMeta]:
        nonlocal done
        async with gate:
            try:
                # pawn and probe heads read hidden states: their texts are scored with full rows
                # (a tuned lens reads only their tokens: its worker runs the forwards that give every layer)
                retain: Retain | None = None if body.kind in ("los", "lens") else "full"
                meta, _, _ = await scored_record(
                    services, tenant, card, tokenized[i], retain, charged=True, layers=layers
                )
            except ApiError as exc:
                raise ApiError(exc.status, exc.code, f"examples[{i}]: {exc.message}", f"examples.{i}") from exc
        done += 1
        if done % 8 == 0 or done == len(todo):
            update = {"progress": round(done / len(todo), 4), "stage": f"scored {done} of {len(todo)} texts"}
            await _write_state(services, tenant, state.model_copy(update=update))
        return i, meta

    scored = dict(await asyncio.gather(*(score(i) for i in todo)))
    return [given[i] if i in given else scored[i] for i in range(len(body.examples))]


async def _stack_examples(
    services: Services, tenant: str, state: HeadState, body: HeadRequest, labels: list[int]
) -> list[HeadExample]:
    """Each example's feature values, from the analyses its features name (a few texts at a time)."""
    assert state.features is not None
    gate = asyncio.Semaphore(SCORING_CONCURRENCY)
    done = 0

    async def one(i: int, example: HeadExampleIn) -> HeadExample:
        nonlocal done
        async with gate:
            try:
                values, record = await stack.feature_values(
                    analyse,
                    services,
                    tenant,
                    state.features or [],
                    state.model,
                    body.span,
                    example.text,
                    example.messages,
                    example.record_id,
                )
            except ApiError as exc:
                raise ApiError(exc.status, exc.code, f"examples[{i}]: {exc.message}", f"examples.{i}") from exc
        done += 1
        if done % 8 == 0 or done == len(body.examples):
            update = {"progress": round(done / len(body.examples), 4), "stage": f"analysed {done} texts"}
            await _write_state(services, tenant, state.model_copy(update=update))
        features = [None if np.isnan(v) else float(v) for v in values]
        return HeadExample(record_id=record, label=labels[i], start=1, stop=2, features=features)  # type: ignore[arg-type]

    return list(await asyncio.gather(*(one(i, e) for i, e in enumerate(body.examples))))


def _distinct(examples: list[HeadExampleIn]) -> list[HeadExampleIn]:
    """The examples with exact repeats (same input and label) dropped, in their first order."""
    return list({json.dumps(e.model_dump(mode="json"), sort_keys=True): e for e in examples}.values())


def _tokenized(
    body: HeadRequest, given: dict[int, RecordMeta], codec: TextCodec, max_positions: int
) -> dict[int, list[int]]:
    """The token ids of every example given as a text or a chat (run off the event loop: thousands of texts)."""
    out = {}
    for i, example in enumerate(body.examples):
        if i in given:
            continue
        try:
            out[i] = token_ids(codec, example.text, example.messages, False, max_positions)
        except ApiError as exc:
            raise ApiError(exc.status, exc.code, f"examples[{i}]: {exc.message}", f"examples.{i}") from exc
    return out


def _check_budget(
    body: HeadRequest,
    card: ModelCard,
    params: dict[str, float | int | str],
    given: dict[int, RecordMeta],
    tokenized: dict[int, list[int]],
    limit: int,
) -> None:
    """422 before anything runs when the training would hold more than `limit` bytes of inputs."""
    cap = int(params.get("max_positions", 1 << 30))  # a stack reads one value per feature, not positions
    positions = [
        min(cap, (len(given[i].token_ids) if i in given else len(tokenized[i])) - 1) for i in range(len(body.examples))
    ]
    layers = head_layers(body.kind, params, card)  # a probe on "best" holds every layer's states
    if body.kind == "lens":  # a tuned lens: every layer's, the final one's included
        layers = list(range((card.layers or 0) + 1))
    need = head_training_bytes(body.kind, positions, card.hidden_size * len(layers or [0]), params)
    if need > limit:
        raise ApiError(
            422,
            "training_too_large",
            f"training this head would hold about {need / 2**20:,.0f} MiB of inputs ({len(positions)} distinct "
            f"examples, up to {max(positions)} positions each); the limit is {limit / 2**20:,.0f} MiB "
            "(max_head_training_bytes): use fewer or shorter examples, or a lower params.max_positions",
            "examples",
        )


def _check_layer_bytes(
    body: HeadRequest,
    card: ModelCard,
    params: dict[str, float | int | str],
    tokenized: dict[int, list[int]],
    limit: int,
) -> None:
    """422 layers_too_large before anything runs when a text's record could not keep the layers a probe reads."""
    layers = head_layers(body.kind, params, card)
    for i, ids in tokenized.items():
        try:
            scoring_layers(layers, card, len(ids), "full", limit)
        except ApiError as exc:
            raise ApiError(exc.status, exc.code, f"examples[{i}]: {exc.message}", f"examples.{i}") from exc


def _examples(body: HeadRequest, labels: list[int], metas: list[RecordMeta], codec: TextCodec) -> list[HeadExample]:
    return [
        HeadExample(record_id=meta.record_id, label=labels[i], **_span(body, example, meta, codec, i))  # type: ignore[arg-type]
        for i, (example, meta) in enumerate(zip(body.examples, metas, strict=True))
    ]


def _span(body: HeadRequest, example: HeadExampleIn, meta: RecordMeta, codec: TextCodec, i: int) -> dict[str, Any]:
    """The example's span as [start, stop) positions."""
    reply = None
    if example.messages is not None and body.span in ("prompt", "completion", "last_turn"):
        reply = chat_reply(codec, example.messages, meta.token_ids)
    try:
        positions = span_positions(body.span, meta, reply)
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, f"examples[{i}]: {exc.message}", f"examples.{i}") from exc
    return {"start": int(positions[0]), "stop": int(positions[-1]) + 1}
