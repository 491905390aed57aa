"""POST /v1/score: per-token log-probabilities, ranks, entropies and alternatives of a text or chat."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, TenantDep
from app.serving.inputs import input_ids, top_k
from app.serving.layers import scoring_layers
from app.serving.scoring import scored_record
from app.serving.tokens import token_rows
from logprobe.schemas.score import Retain, ScoreRequest, ScoreResponse

router = APIRouter(tags=["scoring"])


@router.post("/v1/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, services: ServicesDep, tenant: TenantDep) -> dict[str, object]:
    settings = services.settings
    k = top_k(body.top_logprobs, settings, settings.max_top_logprobs)
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    ids = await input_ids(codec, body.text, body.messages, body.add_generation_prompt, settings.max_positions)
    layers = scoring_layers(body.layers, card, len(ids), body.retain, settings.max_layer_bytes)
    retain: Retain | None = "full" if layers else body.retain
    meta, stats, cached = await scored_record(services, tenant, card, ids, retain, layers=layers)
    return {
        "record_id": meta.record_id,
        "model": card.name,
        "cached": cached,
        "n_tokens": len(ids),
        "layers": meta.layers,
        "tokens": token_rows(meta, stats, codec, k),
    }
