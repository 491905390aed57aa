"""POST /v1/analysis/attribution: which context tokens made the model predict the tokens at some positions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.tokens import ChatMessage

MAX_TARGETS = 64


class ReagentOptions(BaseModel):
    """ReAGent's search (Zhao & Shan 2024; defaults of the reference code as packaged in inseq)."""

    model_config = ConfigDict(extra="forbid")
    num_probes: int = Field(default=16, ge=1, le=256)
    replacing_ratio: float = Field(default=0.3, gt=0.0, lt=1.0)
    keep_top_n: int = Field(default=5, ge=1, le=1024)
    stop_top_k: int = Field(default=3, ge=1, le=1024)


class AttributionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    record_id: str | None = None
    text: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    positions: list[int] = Field(
        min_length=1, max_length=MAX_TARGETS, description="target positions t (token t is the target; t >= 2)"
    )
    method: Literal["reagent", "occlusion"] = "reagent"
    seed: int = Field(default=0, ge=0, le=2**63 - 1, strict=True, description="the same seed gives the same answer")
    max_passes: int = Field(
        default=2048, ge=1, strict=True, description="forward passes at most, over all targets (server limit applies)"
    )
    reagent: ReagentOptions = Field(default_factory=ReagentOptions)
    replacement_model: str | None = Field(
        default=None,
        description="reagent: the served model whose most likely token at each place stands in for the context's "
        "token (the paper uses a second model, RoBERTa); it must share the attributed model's tokenizer. Default: "
        "the attributed model itself, read from its record",
    )


class ContextToken(BaseModel):
    position: int
    id: int
    text: str


class TargetAttribution(BaseModel):
    position: int
    id: int
    text: str
    logprob: float = Field(description="log p(target | its whole context)")
    importance: list[float] = Field(description="one per context token 0 .. position-1 (higher: more important)")
    top: list[int] = Field(description="the positions of the most important context tokens, most important first")
    passes: int
    converged: bool | None = Field(
        default=None, description="reagent: some probe met the paper's stopping condition within the budget"
    )


class AttributionResponse(BaseModel):
    record_id: str
    model: str
    cached: bool
    method: str
    seed: int
    max_passes: int
    passes: int
    tokens: list[ContextToken] = Field(description="the record's tokens up to the last target")
    replacements: list[ContextToken | None] | None = Field(
        default=None, description="reagent: the token that stands in for each context token (null: never replaced)"
    )
    targets: list[TargetAttribution]
