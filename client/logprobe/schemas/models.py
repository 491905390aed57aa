"""GET /v1/models."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "logprobe"
    ready: bool
    workers: int
    backend: str | None = None
    dtype: str | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    context_length: int | None = None
    max_model_len: int | None = Field(default=None, description="as vLLM's /v1/models says: the context length")
    chat_template: bool | None = None
    storage: str | None = None
    retain: str | None = Field(
        default=None, description="what its records keep unless a request says otherwise: 'full' or 'stats'"
    )
    hidden_dtype: str | None = None
    lossy: bool | None = None
    rebuild_max_abs_error: float | None = None
    max_top_logprobs: int | None = Field(
        default=None,
        description="alternatives per token that every route gives at most (score, generate, records, decode, "
        "the OpenAI routes' logprobs, top_logprobs and prompt_logprobs)",
    )


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelInfo]
