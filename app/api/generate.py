"""POST /v1/generate: a completion with per-token fields, stored as a record of prompt and completion."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.score import top_k
from app.api.tokens import ChatMessage, TokenOut, check_length, input_ids, token_rows
from app.auth import TenantDep
from app.errors import ApiError
from app.jobs import new_job_id, raise_for_outcome
from app.limits import charge
from app.services import ServicesDep
from workers.protocol import GenerateJob, Sampling

router = APIRouter(tags=["generation"])


def stop_list(stop: str | list[str] | None) -> list[str]:
    """A request's `stop` as a list; 422 for an empty stop string."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not s for s in stops):
        raise ApiError(422, "invalid_stop", "stop strings must not be empty", "stop")
    return stops


class SamplingRequest(BaseModel):
    """The sampling fields that /v1/generate and /v1/decode/contrastive share."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0)

    def sampling(self, max_new_tokens: int) -> Sampling:
        """The job's sampling parameters; 422 for max_tokens over the limit or an empty stop string."""
        if self.max_tokens > max_new_tokens:
            raise ApiError(422, "max_tokens_too_large", f"max_tokens is at most {max_new_tokens}", "max_tokens")
        stops = stop_list(self.stop)
        return Sampling(
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=stops
        )


class GenerateRequest(SamplingRequest):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    record_id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage
    tokens: list[TokenOut] = Field(description="the completion's tokens")


def truncate_at_stop(text: str, stops: list[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text


@router.post("/v1/generate", response_model=GenerateResponse)
async def generate(body: GenerateRequest, services: ServicesDep, tenant: TenantDep) -> dict[str, object]:
    settings = services.settings
    k = top_k(body.top_logprobs, settings.default_top_logprobs, settings.max_top_logprobs)
    card = await services.catalog.card(body.model)
    sampling = body.sampling(min(settings.max_new_tokens, card.max_new_tokens))
    stops = sampling.stop
    codec = await services.catalog.codec(card)
    ids = input_ids(codec, body.prompt, body.messages, True, settings.max_positions)
    check_length(card, len(ids) + body.max_tokens, settings.max_positions)
    await charge(services.redis, tenant, "tokens", len(ids) + body.max_tokens, settings.rate_limit_tpm)
    job = GenerateJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=card.name,
        fingerprint=card.fingerprint,
        prompt_ids=ids,
        sampling=sampling,
    )
    outcome = raise_for_outcome(await services.jobs.run(job))
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
