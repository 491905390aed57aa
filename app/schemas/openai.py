"""POST /v1/completions and /v1/chat/completions requests, as the OpenAI API spells them (numbers and flags
strict, as its JSON is: `"5"` or `true` is no integer)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.tokens import ChatMessage

MAX_TOP = 100


class OpenAICommon(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, stream_options…)
    model: str
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, strict=True)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, strict=True)
    n: int = Field(default=1, ge=1, le=1, strict=True, description="one choice per request")
    stream: bool = Field(default=False, strict=True)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63, strict=True)


class CompletionRequest(OpenAICommon):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP, strict=True)
    echo: bool = Field(default=False, strict=True)


class ChatCompletionRequest(OpenAICommon):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    logprobs: bool = Field(default=False, strict=True)
    top_logprobs: int | None = Field(
        default=None, ge=0, le=MAX_TOP, strict=True, description="needs `logprobs: true`, as in the OpenAI API"
    )
