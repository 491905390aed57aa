"""POST /v1/score and GET /v1/records/{id}."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.tokens import ChatMessage, TokenOut

Layer = Annotated[int, Field(ge=0, strict=True)]

# as workers.contract.names.Retain (the client imports neither workers nor safetensors)
Retain = Literal["full", "stats"]

RETAIN = (
    "what the record keeps: 'full' (hidden states too: full rows can be exported and compared across models) or "
    "'stats' (statistics and top-k only); default: the model's. 'full' re-scores a stored stats record"
)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    text: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = Field(
        default=False, strict=True, description="end a chat with the assistant's turn opener"
    )
    top_logprobs: int | None = Field(
        default=None, ge=0, strict=True, description="alternatives per token (default 5, max 20; 5 without export)"
    )
    retain: Retain | None = Field(default=None, description=RETAIN)
    layers: list[Layer] | Literal["all"] | None = Field(
        default=None,
        description="intermediate layers whose hidden states the record keeps too, from the same forward "
        "(transformers' hidden_states indices: 0 = the embeddings, the model's layer count = the final states); "
        "export them with GET /v1/records/{id}/hidden?layer=L. Implies retain 'full'",
    )


class ScoreResponse(BaseModel):
    record_id: str
    model: str
    cached: bool
    n_tokens: int
    layers: list[int] = Field(default_factory=list, description="the layers whose hidden states the record keeps")
    tokens: list[TokenOut]


class RecordResponse(BaseModel):
    record_id: str
    model: str
    kind: str
    n_tokens: int
    n_prompt: int | None
    finish_reason: str | None
    created_at: float
    storage: str
    retain: Retain = Field(description="what the record keeps: 'full' (statistics and full rows) or 'stats'")
    hidden_dtype: str
    vocab_size: int
    layers: list[int] = Field(default_factory=list, description="the layers whose hidden states the record keeps")
    tokens: list[TokenOut]
