"""Per-token fields shared by scoring, generation and records; chat messages; token usage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1, max_length=64)
    content: str


class TopLogprob(BaseModel):
    id: int
    text: str
    logprob: float


class TokenOut(BaseModel):
    id: int
    text: str
    logprob: float | None = Field(description="log p(token | prefix); null for the first token")
    rank: int | None = Field(description="1 + number of tokens the model found more likely")
    entropy: float | None = Field(description="entropy (nats) of the distribution that predicted this token")
    top_logprobs: list[TopLogprob] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
