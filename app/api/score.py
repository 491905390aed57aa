"""POST /v1/score: per-token log-probabilities, ranks, entropies and alternatives of a text or chat."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.tokens import ChatMessage, TokenOut, input_ids, token_rows
from app.auth import TenantDep
from app.errors import ApiError
from app.scoring import scored_record
from app.services import ServicesDep

router = APIRouter(tags=["scoring"])


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    text: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = Field(default=False, description="end a chat with the assistant's turn opener")
    top_logprobs: int | None = Field(default=None, ge=0, description="alternatives per token (default 5, max 20)")


class ScoreResponse(BaseModel):
    record_id: str
    model: str
    cached: bool
    n_tokens: int
    tokens: list[TokenOut]


def top_k(requested: int | None, default: int, limit: int) -> int:
    k = default if requested is None else requested
    if k > limit:
        raise ApiError(422, "top_logprobs_too_large", f"top_logprobs is at most {limit}", "top_logprobs")
    return k


@router.post("/v1/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, services: ServicesDep, tenant: TenantDep) -> dict[str, object]:
    settings = services.settings
    k = top_k(body.top_logprobs, settings.default_top_logprobs, settings.max_top_logprobs)
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    ids = input_ids(codec, body.text, body.messages, body.add_generation_prompt, settings.max_positions)
    meta, stats, cached = await scored_record(services, tenant, card, ids)
    return {
        "record_id": meta.record_id,
        "model": card.name,
        "cached": cached,
        "n_tokens": len(ids),
        "tokens": token_rows(meta, stats, codec, k),
    }
