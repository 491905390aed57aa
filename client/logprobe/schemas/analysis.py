"""POST /v1/analysis/{family}, GET /v1/analysis/methods and PUT /v1/frequency-tables/{name}."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.score import Retain
from logprobe.schemas.tokens import ChatMessage

Family = Literal["uncertainty", "detect", "membership", "compare"]
SpanName = Literal["all", "prompt", "completion", "last_turn"]
DEFAULT_TABLE = "default"  # the frequency table counted from text that ships in packages


class SpanRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int = Field(ge=1, description="first position")
    stop: int = Field(ge=2, description="one past the last position")


class AnalysisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    record_id: str | None = None
    text: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    span: SpanName | SpanRange | list[int] = Field(
        default="all",
        description="all; prompt or completion (generated records, or messages ending with an assistant turn); "
        "last_turn (messages ending with an assistant turn: its reply tokens through the end-of-turn token); "
        "{start, stop}; or a list of distinct positions",
    )
    methods: list[str] | None = Field(default=None, description="default: every method of the family")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per method, e.g. {min_k: {k: 0.1}}; numbers as strict as the top level's (an integer parameter "
        'takes an integer: not 16.0, "16" or true), checked per method (422 invalid_params, `param` its path)',
    )
    frequency_table: str = Field(default=DEFAULT_TABLE, description="reference token frequencies for dc_pdd")
    reference_model: str | None = Field(
        default=None, description="compare/detect: the second model (reference, observer or base), same tokenizer"
    )
    context: str | None = Field(
        default=None, description="compare: the model with this context before the text (or the record's tokens)"
    )
    prefix: str | None = Field(
        default=None,
        description="membership: text known NOT to be in the training data, put before the text (ReCaLL, "
        "Con-ReCall); the text's positions are scored after it too",
    )
    member_prefix: str | None = Field(
        default=None, description="membership: text known to be in the training data, put before the text (Con-ReCall)"
    )
    calibration_id: str | None = Field(
        default=None, description="detect: the calibration whose thresholds give `decisions`"
    )
    heads: list[str] | None = Field(
        default=None,
        max_length=8,
        description="ids of trained heads (POST /v1/heads) of this family and model: each one's score is in "
        "`sequence` under its name, its per-token weights in `tokens[].values`, its decision in `decisions`",
    )
    retain: Retain | None = Field(
        default=None,
        description="what records scored for this request keep (default: the model's); 'full' also upgrades a stored "
        "stats record, which analyses that need full rows (two-model statistics, pawn and probe heads) require",
    )


class TokenValues(BaseModel):
    position: int
    id: int
    text: str
    values: dict[str, int | float | None] = Field(description="per method; integers for ranks, null if undefined")


class Decision(BaseModel):
    machine: bool = Field(description="detect: judged machine-written; for a head, the same as `positive`")
    positive: bool | None = Field(default=None, description="heads: the score is above the head's threshold (label 1)")
    sign: float
    threshold: float
    target_fpr: float


class AnalysisResponse(BaseModel):
    record_id: str
    model: str
    reference_record_id: str | None = None
    reference_model: str | None = None
    cached: bool
    family: str
    n_positions: int
    level: str = Field(default="token", description="byte: two models that tokenize differently, compared byte by byte")
    methods: list[str]
    tokens: list[TokenValues]
    sequence: dict[str, float | None]
    details: dict[str, list[float]]
    decisions: dict[str, Decision] | None = Field(
        default=None, description="detect: per calibrated method, whether the text is judged machine-written"
    )
    undefined: dict[str, str] = Field(
        default_factory=dict,
        description="why a value is null: per sequence value, and per token method with nulls at some positions",
    )


class ParamInfo(BaseModel):
    name: str
    type: Literal["int", "float"]
    default: int | float
    min: int | float
    max: int | float
    description: str


class MethodInfo(BaseModel):
    name: str
    families: list[str]
    level: str
    description: str
    paper: str = Field(description="the paper the method comes from: title, authors, year, arXiv id")
    higher_means: str
    needs: list[str]
    requires: list[str]
    params: list[ParamInfo]


class FrequencyTableRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    texts: list[str] = Field(min_length=1, max_length=100_000)


class FrequencyTableInfo(BaseModel):
    name: str
    model: str
    texts: int
    tokens: int
    distinct_tokens: int
