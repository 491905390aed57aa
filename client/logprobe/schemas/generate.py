"""POST /v1/generate, and the sampling fields it shares with contrastive decoding."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.score import RETAIN, Retain
from logprobe.schemas.tokens import ChatMessage, TokenOut, Usage


class SamplingRequest(BaseModel):
    """The sampling fields that /v1/generate and /v1/decode/contrastive share, and what their record keeps. Numbers
    are strict: `"5"` or `true` is no integer."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(default=64, ge=1, strict=True)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0, strict=True)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, strict=True)
    seed: int | None = Field(default=None, ge=0, lt=2**63, strict=True)
    stop: str | list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, strict=True)
    retain: Retain | None = Field(default=None, description=RETAIN)


class GenerateRequest(SamplingRequest):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)


class GenerateResponse(BaseModel):
    record_id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage
    tokens: list[TokenOut] = Field(description="the completion's tokens")
