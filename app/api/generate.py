"""POST /v1/generate: a completion with per-token fields, stored as a record of prompt and completion."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, TenantDep
from app.platform.limits import charge
from app.serving.inputs import check_length, input_ids, sampling_of, top_k, truncate_at_stop
from app.serving.jobs import NO_ROOM, generation_job, raise_for_outcome
from app.serving.tokens import token_rows
from logprobe.schemas.generate import GenerateRequest, GenerateResponse

router = APIRouter(tags=["generation"])


@router.post("/v1/generate", response_model=GenerateResponse)
async def generate(body: GenerateRequest, services: ServicesDep, tenant: TenantDep) -> dict[str, object]:
    settings = services.settings
    k = top_k(body.top_logprobs, settings, settings.max_top_logprobs)
    card = await services.catalog.card(body.model)
    sampling = sampling_of(body, min(settings.max_new_tokens, card.max_new_tokens))
    stops = sampling.stop
    codec = await services.catalog.codec(card)
    ids = await input_ids(codec, body.prompt, body.messages, True, settings.max_positions, "prompt")
    check_length(card, len(ids), settings.max_positions, "prompt", body.max_tokens)
    await charge(services.redis, tenant, "tokens", len(ids) + body.max_tokens, settings.rate_limit_tpm)
    job = generation_job(tenant, card, ids, sampling, body.retain)
    outcome = raise_for_outcome(await services.jobs.run(job), NO_ROOM)
    assert outcome.record_id is not None and outcome.completion_ids is not None
    meta, stats = await services.store.require(tenant, outcome.record_id)
    text = codec.decode(outcome.completion_ids)
    if outcome.finish_reason == "stop":
        text = truncate_at_stop(text, stops)
    return {
        "record_id": outcome.record_id,
        "model": card.name,
        "text": text,
        "finish_reason": outcome.finish_reason,
        "tokens": token_rows(meta, stats, codec, k, start=len(ids)),
        "usage": {"prompt_tokens": len(ids), "completion_tokens": len(outcome.completion_ids)},
    }
