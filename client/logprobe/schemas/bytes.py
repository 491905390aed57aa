"""POST /v1/bytes: a text's exact byte-level log-probabilities under one model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.tokens import Text

MAX_STATES_LIMIT = 32_768


def max_states_field(description: str) -> Any:
    """The bound on cover states (forward positions) of byte-level work: 8192 unless asked, at most 32,768."""
    return Field(default=8192, ge=2, le=MAX_STATES_LIMIT, strict=True, description=description)


class BytesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    text: Text
    mode: Literal["canonical", "all"] = Field(
        default="canonical",
        description="canonical: the tokenizer's own encodings of the text's prefixes, as the paper restricts "
        "cover encodings to valid ones; all: every tokenization (exponential, for short texts)",
    )
    max_states: int = max_states_field(
        "bound on the forward positions (cover states) the text may need; a text over it is refused"
    )
    distributions: bool = Field(default=False, strict=True, description="also return each byte's 256 logprobs")


class ByteOut(BaseModel):
    offset: int
    byte: int
    text: str  # the character the byte begins, "" for a continuation byte of a multi-byte character
    logprob: float | None
    distribution: list[float | None] | None = None


class BytesResponse(BaseModel):
    record_id: str
    model: str
    mode: str
    cached: bool
    n_bytes: int
    states: int = Field(description="forward positions the cover plan took (the cost)")
    logprob: float | None = Field(description="sum of the bytes' logprobs: the text's byte-level log-likelihood")
    bytes: list[ByteOut]
