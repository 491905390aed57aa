"""POST /v1/decode/contrastive."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from logprobe.schemas.bytes import max_states_field
from logprobe.schemas.generate import SamplingRequest
from logprobe.schemas.tokens import Text, Usage


class ViewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    template: Literal["raw", "chat"] = "chat"
    system: str | None = None
    context: str | None = Field(default=None, description="text placed before the prompt")
    prompt: Text | None = Field(default=None, description="this view's own prompt instead of the request's")
    weight: float = Field(default=1.0, ge=-100, le=100, strict=True, description="not 0: a view that counts")
    temperature: float = Field(default=1.0, gt=0.0, le=100.0, strict=True, description="this view's own temperature")

    @field_validator("weight")
    @classmethod
    def _counts(cls, weight: float) -> float:
        if weight == 0:
            raise PydanticCustomError("zero_weight", "must not be 0: a view with weight 0 changes nothing")
        return weight


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Literal["ed", "cd", "cad", "proxy", "prompt_contrast", "uscd", "dola"]
    model: str | None = Field(default=None, description="cad, prompt_contrast, uscd, dola")
    base: str | None = Field(default=None, description="ed (pre-trained model), proxy (large base)")
    aligned: str | None = Field(default=None, description="ed (its aligned version)")
    expert: str | None = Field(default=None, description="cd")
    amateur: str | None = Field(default=None, description="cd")
    tuned: str | None = Field(default=None, description="proxy (small tuned model)")
    small_base: str | None = Field(default=None, description="proxy (small base model)")
    context: str | None = Field(default=None, description="cad")
    system: str | None = None
    alpha: float | None = Field(default=None, ge=0.0, le=100.0, strict=True)
    lambda_: float | None = Field(default=None, alias="lambda", ge=-100.0, le=100.0, strict=True)
    amateur_temperature: float = Field(default=1.0, gt=0.0, le=100.0, strict=True)
    lame_prompt: Text | None = Field(
        default=None, description="uscd: the request's prompt without its examples (the 'lame' prompt)"
    )
    template: Literal["raw", "chat"] = Field(
        default="raw", description="uscd: how both prompts reach the model; dola: how the prompt does"
    )
    layers: Literal["low", "high"] | list[Annotated[int, Field(ge=0, strict=True)]] = Field(
        default="high",
        description="dola: the candidate premature layers, as transformers' `dola_layers`: every second layer of "
        "the lower or upper half (past the embeddings, layer 0, when the head is tied to them), or their indices "
        "(0 = the embeddings, below the model's layer count)",
    )
    uncertainty: Literal["std", "top1", "entropy"] = Field(
        default="std",
        description="uscd: contrast where the standard view's probabilities have a standard deviation at most "
        "`threshold` (the paper's measure), a top probability below it, or an entropy (nats) above it",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        strict=True,
        description="uscd: default for std the paper's 0.005 at CodeLlama's 32,016-token vocabulary (sum p^2 = 0.80) "
        "carried to the model's vocabulary; top1 and entropy need one",
    )
    min_ratio: float = Field(
        default=2 / 3, ge=0.0, le=1.0, strict=True, description="uscd: keep tokens with p >= min_ratio / V"
    )


class PlausibilityIn(BaseModel):
    """Contrastive decoding's cut: keep tokens whose probability under `view` is >= alpha * its maximum."""

    model_config = ConfigDict(extra="forbid")
    view: int = Field(ge=0, strict=True)
    alpha: float = Field(gt=0.0, le=1.0, strict=True)


class DecodeRequest(SamplingRequest):
    max_tokens: int = Field(
        default=64,
        ge=1,
        strict=True,
        description="steps: tokens, or at the byte level bytes (UTF-8; a character cut by the limit is dropped)",
    )
    prompt: Text
    level: Literal["auto", "token", "byte"] = Field(
        default="auto",
        description="token: the views' models must share a tokenizer; byte: step by bytes, each view's exact "
        "next-byte distribution (Phan et al. 2024), for models that tokenize differently; auto: token where the "
        "tokenizers agree, else byte",
    )
    max_states: int = max_states_field(
        "byte level: bound on each view's cover states (forward positions); a run over it is refused"
    )
    views: list[ViewIn] | None = Field(default=None, min_length=1)
    preset: Preset | None = None
    plausibility: PlausibilityIn | None = None
    record_view: int = Field(default=0, ge=0, strict=True, description="the view whose model's record is stored")
    stream: bool = Field(default=False, strict=True)


class TopToken(BaseModel):
    id: int
    text: str
    logprob: float


class ViewScore(BaseModel):
    logprob: float
    rank: int


class StepOut(BaseModel):
    id: int
    text: str
    special: bool = Field(default=False, description="a special token of the tokenizer (e.g. `<|im_end|>`)")
    top_logprobs: list[TopToken]
    views: list[ViewScore]
    contrasted: bool | None = Field(default=None, description="uscd: whether this step was contrasted")
    logprob: float | None = Field(default=None, description="the chosen id's logprob under the combined distribution")
    premature_layer: int | None = Field(
        default=None, description="dola: the premature layer (hidden_states index) contrasted with the final one"
    )


class DecodeResponse(BaseModel):
    record_id: str
    level: Literal["token", "byte"] = Field(
        default="token",
        description="byte: steps are bytes (id the byte, 256 the end of text) and the record holds "
        "the text re-tokenised by record_view's model",
    )
    text: str
    finish_reason: str
    usage: Usage
    views: list[ViewIn]
    steps: list[StepOut]
