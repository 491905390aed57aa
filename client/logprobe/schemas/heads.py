"""POST /v1/heads (train a head on labelled texts or records) and the head object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.analysis import SpanName, SpanRange
from logprobe.schemas.consistency import ConsistencyOptions
from logprobe.schemas.tokens import ChatMessage

HeadKind = Literal["pawn", "los", "probe", "stack", "lens"]
HeadFamily = Literal["detect", "uncertainty", "membership"]
HEAD_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
MAX_STACK_FEATURES = 32


class HeadExampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    record_id: str | None = None
    label: Any = Field(
        default=None,
        description="0 or 1 (a `lens` head takes none); 1 is what the family's score points to: machine-written "
        "(detect), the model is wrong (uncertainty), a member of the training data (membership)",
    )


class StackFeature(BaseModel):
    """One input of a `stack` head: a sequence value of an analysis method, from any served model."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="a sequence-level method of GET /v1/analysis/methods")
    family: Literal["uncertainty", "detect", "membership", "compare", "consistency"] | None = Field(
        default=None, description="the family to run it in (default: the method's first family)"
    )
    model: str | None = Field(default=None, description="the model that scores the text (default: the head's model)")
    reference_model: str | None = Field(
        default=None,
        description="for paired methods: the second model (observer, reference or base; another tokenizer compares "
        "byte by byte)",
    )
    value: str | None = Field(
        default=None,
        description="the key of `sequence` to read (default: the method's name; e.g. gltr.top10 for a method with "
        "several values)",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the method's parameters, as in analyses")
    consistency: ConsistencyOptions | None = Field(
        default=None,
        description="consistency methods: how the samples are drawn and judged, as in POST /v1/analysis/consistency "
        "(`methods` left out: the feature names its method). Each example's `messages` are the prompt and, last, the "
        "assistant's answer being judged",
    )


class HeadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=HEAD_NAME_PATTERN, description="the key of the head's score in `sequence`")
    kind: HeadKind = Field(
        description="pawn: PAWN (token features weighted by a gate over hidden states); los: LOS-Net style network "
        "over each position's sorted top-k probabilities; probe: logistic probe on the mean or last hidden state; "
        "stack: a calibrated logistic combination of analysis methods' sequence values (`features`), from one or "
        "more served models; lens: a tuned lens (Belrose et al. 2023), one affine translator per layer trained on the "
        "texts to minimise KL(final || lens), read with POST /v1/analysis/lens"
    )
    model: str
    family: HeadFamily = "detect"
    span: SpanName | SpanRange = Field(default="all", description="the positions of each example the head reads")
    examples: list[HeadExampleIn] = Field(min_length=1, max_length=20_000)
    seed: int = 0
    params: dict[str, float | int | str] = Field(default_factory=dict, description="per kind; see the README")
    target_fpr: float = Field(default=0.05, gt=0.0, lt=1.0, description="for the decision threshold")
    features: list[StackFeature] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_STACK_FEATURES,
        description="stack heads only: the methods whose sequence values the head combines",
    )


class HeadErrorOut(BaseModel):
    code: str
    message: str


class HeadMetricsOut(BaseModel):
    folds: int
    auroc: float = Field(description="cross-validated: the mean of the folds' AUROCs")
    auroc_folds: list[float]
    auroc_pooled: float = Field(description="over all out-of-fold scores at once")
    auroc_ci95: tuple[float, float]
    target_fpr: float
    threshold: float = Field(description="decide label 1 when the head's score is above it")
    tpr: float = Field(description="out of fold, at the threshold")
    fpr: float
    confidence: str = Field(description="how far the figures can be trusted, in words")
    layer: int | None = Field(
        default=None, description="a probe on a layer (params.layer): the hidden_states index it reads (the chosen one)"
    )
    layer_auroc: dict[int, float] | None = Field(
        default=None, description='params.layer "best": the cross-validated AUROC of each layer (the best was chosen)'
    )
    feature_auroc: dict[str, float] | None = Field(
        default=None,
        description="stack: each feature alone (a one-feature logistic model), cross-validated on the same folds; "
        "keyed by the feature's label",
    )


class LensMetricsOut(BaseModel):
    """A tuned lens's: per layer (hidden_states index) the mean KL(final || lens) in nats over the held-out texts'
    positions, for the tuned lens (as stored) and the logit lens."""

    held_out_texts: int
    held_out_positions: int
    train_texts: int
    train_positions: int
    steps: int
    kl_tuned: dict[int, float]
    kl_logit: dict[int, float]
    mean_kl_tuned: float
    mean_kl_logit: float
    layers_improved: int = Field(description="layers at which the tuned lens's held-out KL is below the logit lens's")


class Head(BaseModel):
    id: str
    object: Literal["head"] = "head"
    name: str
    kind: HeadKind
    family: str
    model: str
    span: Any
    status: Literal["scoring", "queued", "training", "succeeded", "failed"]
    stage: str = Field(default="", description="what the head is doing now")
    progress: float = Field(description="0 to 1")
    seed: int
    params: dict[str, float | int | str]
    examples: dict[str, int] = Field(description='examples per label; a lens head: {"texts": n}')
    metrics: HeadMetricsOut | LensMetricsOut | None = None
    training_time_s: float | None = None
    n_parameters: int | None = None
    error: HeadErrorOut | None = None
    created_at: float
    created_by: str | None = Field(
        default=None, description='who made it: "key " and 8 hex digits of its key\'s sha256, or "anonymous"'
    )
    finished_at: float | None = None
    expires_at: int | None = None
    features: list[StackFeature] | None = Field(default=None, description="stack: the combined methods, in order")


class HeadList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Head] = Field(description="newest first")
    has_more: bool = False
