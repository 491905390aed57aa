"""POST /v1/analysis/consistency: n sampled answers to one prompt, their pairwise similarities, and the
consistency methods over them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.tokens import ChatMessage

MAX_SAMPLES = 20
MAX_ANSWER_TOKENS = 256
Similarity = Literal["lexical", "entailment", "hidden"]
SIMILARITY = (
    "how alike two answers are, in [0, 1]: `lexical` (default: ROUGE-L F over words, no model work, so n samples "
    "cost n generations and nothing more), `entailment` (the served model judges whether one answer entails the "
    "other by its own next-token probabilities of ' Yes' and ' No'; 2 short scorings per ordered pair), `hidden` "
    "(cosine, clipped at 0, of the answers' mean final hidden states, from their records)"
)


class ConsistencyOptions(BaseModel):
    """How the samples are drawn and judged: what /v1/analysis/consistency and a consistency batch share. Numbers are
    strict, as in /v1/generate."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(default=10, ge=2, le=MAX_SAMPLES, strict=True, description="samples, generated as one batch")
    temperature: float = Field(default=1.0, gt=0.0, le=10.0, strict=True)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, strict=True)
    max_tokens: int = Field(default=64, ge=1, le=MAX_ANSWER_TOKENS, strict=True, description="per answer")
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, strict=True, description="sample i is drawn with seed + i: seeded samples repeat"
    )
    methods: list[str] | None = Field(default=None, description="default: every consistency method")
    similarity: Similarity = Field(default="lexical", description=SIMILARITY)


ANSWER = "the answer being judged (default: the greedy answer, generated)"


class ConsistencyRequest(ConsistencyOptions):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    answer: str | None = Field(default=None, min_length=1, description=ANSWER)


class JudgedAnswer(BaseModel):
    text: str
    record_id: str
    greedy: bool = Field(description="generated greedily here (no `answer` was given)")
    similarity: list[float] = Field(description="to each sample that succeeded, in order")
    log_likelihood: float = Field(description="sum of its tokens' logprobs")
    p_true: float | None = Field(description="the model's probability that it is true (P(True) prompt)")


class SampleError(BaseModel):
    code: str
    message: str


class Sample(BaseModel):
    index: int
    seed: int | None
    record_id: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    log_likelihood: float | None = Field(default=None, description="sum of its tokens' logprobs")
    n_tokens: int | None = None
    error: SampleError | None = Field(default=None, description="this sample failed; the others were used")


class ConsistencyResponse(BaseModel):
    model: str
    similarity_kind: Similarity
    answer: JudgedAnswer
    samples: list[Sample]
    similarity: list[list[float]] = Field(description="[i][j] between the samples that succeeded, in order")
    methods: list[str]
    sequence: dict[str, float | None]
    undefined: dict[str, str]
