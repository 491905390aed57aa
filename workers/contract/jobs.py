"""The jobs workers take from the streams (JSON validated by pydantic, never pickled), and their outcomes."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.contract.heads import HEAD_ID_PATTERN
from workers.contract.keys import HEAVY_LANE, SCORING_LANE, STEPPED_LANE
from workers.contract.names import MAX_JOB_POSITIONS, ProtocolError, RecordId, Retain, TenantName


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    # vLLM's sampling fields, applied as its sampler does (workers/sampling.py); the defaults change nothing
    top_k: int = Field(default=0, ge=0, description="0: every token")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    logit_bias: dict[int, float] = Field(default_factory=dict)


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    job_id: str
    tenant: TenantName
    model: str
    fingerprint: str
    enqueued_at: float = Field(default_factory=time.time)
    # When the job's answer stops being wanted (Unix time; the request's timeout): a worker does not start a job past
    # it, and heavy work stops at the slice that passes it. None: no deadline.
    deadline: float | None = None


class ScoreJob(_JobBase):
    kind: Literal["score"] = "score"
    record_id: RecordId
    token_ids: list[int] = Field(min_length=1)
    n_prompt: int | None = None
    retain: Retain = "full"
    # hidden_states indices whose states the record keeps beside the final ones (records.layer_field), from the
    # same forward; the final layer's are the record's `hidden`
    layers: list[int] = Field(default_factory=list, max_length=1024)


class GenerateJob(_JobBase):
    kind: Literal["generate"] = "generate"
    prompt_ids: list[int] = Field(min_length=1)
    sampling: Sampling
    retain: Retain = "full"


class RowsJob(_JobBase):
    """Rebuild full log-probability rows for positions [start, stop) of a stored record."""

    kind: Literal["rows"] = "rows"
    record_id: RecordId
    start: int = Field(ge=1)
    stop: int = Field(ge=2)


class CrossSide(BaseModel):
    model_config = ConfigDict(extra="forbid")
    record_id: RecordId
    model: str
    fingerprint: str
    positions: list[int] = Field(min_length=1, max_length=MAX_JOB_POSITIONS)


class CrossJob(_JobBase):
    """Statistics that need two full distributions at once (KL, cross-entropy, ranks across models), for
    aligned positions of two records over the same vocabulary: p from one side, q from the other."""

    kind: Literal["cross"] = "cross"
    cross_id: str
    p: CrossSide
    q: CrossSide


def cross_id(p: CrossSide, q: CrossSide) -> str:
    body = json.dumps([p.record_id, p.positions, q.record_id, q.positions]).encode()
    return hashlib.sha256(body).hexdigest()[:32]


MAX_TOKEN_SAMPLES = 1000  # tokens drawn per position by one job (Lastde++'s reference code draws 100)


class TokenSamplesJob(_JobBase):
    """Tokens drawn independently at each of a record's `positions` from its own distribution there (Fast-DetectGPT's
    sampling, which Lastde++ normalises by), and their log-probabilities under it (workers/token_samples.py): a
    float32 array [positions, n_samples] left under samples_key(tenant, samples_id)."""

    kind: Literal["token_samples"] = "token_samples"
    samples_id: str
    record_id: RecordId
    positions: list[int] = Field(min_length=1, max_length=MAX_JOB_POSITIONS)
    n_samples: int = Field(ge=1, le=MAX_TOKEN_SAMPLES)
    seed: int = Field(ge=0, lt=2**32)


def samples_id(record_id: str, positions: list[int], n_samples: int, seed: int) -> str:
    body = json.dumps([record_id, positions, n_samples, seed]).encode()
    return hashlib.sha256(body).hexdigest()[:32]


class DecodeView(BaseModel):
    """One view of a contrastive decoding job: a model reading its own prefix, weighted in the combination."""

    model_config = ConfigDict(extra="forbid")
    model: str
    fingerprint: str
    prefix_ids: list[int] = Field(min_length=1)
    weight: float
    temperature: float = Field(default=1.0, gt=0.0)
    # DoLa (workers/dola.py): this view's logits contrast its final layer with the premature layer picked among these
    dola_layers: Literal["low", "high"] | list[int] | None = None


class Plausibility(BaseModel):
    """Contrastive decoding's cut: keep tokens whose probability under `view` is >= alpha * its maximum."""

    model_config = ConfigDict(extra="forbid")
    view: int = Field(ge=0)
    alpha: float = Field(gt=0.0, le=1.0)


class Selective(BaseModel):
    """USCD's rule (workers/decoding.py): contrast the views only at steps where view 0 is uncertain."""

    model_config = ConfigDict(extra="forbid")
    measure: Literal["std", "top1", "entropy"]
    threshold: float = Field(ge=0.0)
    min_ratio: float = Field(ge=0.0)


class ContrastJob(_JobBase):
    """Sample from log_softmax(sum_i w_i log p_i(y | prefix_i, y_<t)), each view with its own KV cache."""

    kind: Literal["contrast"] = "contrast"
    views: list[DecodeView] = Field(min_length=1, max_length=16)
    sampling: Sampling
    plausibility: Plausibility | None = None
    selective: Selective | None = None
    topk: int = Field(default=5, ge=0, le=100)
    record_view: int = Field(default=0, ge=0)
    retain: Retain = "full"
    level: Literal["token", "byte"] = "token"  # byte: steps by bytes (workers/bytelevel/decoding.py)
    max_states: int = Field(default=8192, ge=2)  # byte level: the bound on each view's cover states


class DecodeStep(BaseModel):
    token: int
    top_ids: list[int]
    top_logprobs: list[float]
    view_logprobs: list[float]
    view_ranks: list[int]
    contrasted: bool | None = None  # selective contrast (USCD): whether this step was contrasted
    logprob: float | None = None  # the chosen id's logprob under the combined distribution
    text: str | None = None  # byte level: the character this step's byte begins ("" for the others and the end)
    premature_layer: int | None = None  # DoLa: the premature layer (hidden_states index) contrasted at this step


class HeadExample(BaseModel):
    """One labelled record of a training set, with the positions [start, stop) its span names."""

    model_config = ConfigDict(extra="forbid")
    record_id: RecordId
    label: Literal[0, 1]
    start: int = Field(ge=1)
    stop: int = Field(ge=2)
    features: list[float | None] | None = None  # stack: the example's feature values (None: undefined)


class HeadJob(_JobBase):
    """Train a head on stored records (workers/heads); the worker writes its state and weights under head_key."""

    kind: Literal["train_head"] = "train_head"
    head_id: Annotated[str, Field(pattern=HEAD_ID_PATTERN)]
    head_kind: Literal["pawn", "los", "probe", "stack", "lens"]
    examples: list[HeadExample] = Field(min_length=2, max_length=100_000)
    seed: int
    params: dict[str, float | int | str] = Field(default_factory=dict)
    target_fpr: float = Field(gt=0.0, lt=1.0)


class ReagentParams(BaseModel):
    """ReAGent's search (Zhao & Shan 2024; defaults of the reference code as packaged in inseq); the gateway's
    public twin is logprobe.schemas.attribution.ReagentOptions."""

    model_config = ConfigDict(extra="forbid")
    num_probes: int = Field(default=16, ge=1, le=256)
    replacing_ratio: float = Field(default=0.3, gt=0.0, lt=1.0)
    keep_top_n: int = Field(default=5, ge=1, le=1024)
    stop_top_k: int = Field(default=3, ge=1, le=1024)


class AttributionJob(_JobBase):
    """Importance of each context token for the tokens at `positions` (workers/attribution.py), by forward passes
    of perturbed contexts of `token_ids`; `replacements[i]` stands in for token i in ReAGent (-1: never replaced).
    The answer (AttributionResult JSON) is left under attribution_key(job_id)."""

    kind: Literal["attribution"] = "attribution"
    token_ids: list[int] = Field(min_length=2)
    positions: list[int] = Field(min_length=1, max_length=256)
    method: Literal["reagent", "occlusion"]
    replacements: list[int] = Field(default_factory=list)
    seed: int = Field(ge=0)
    max_passes: int = Field(ge=1)
    reagent: ReagentParams = Field(default_factory=ReagentParams)


def occlusion_passes(positions: list[int]) -> int:
    """Forward passes occlusion needs: the whole context, then each context token left out."""
    return sum(t + 1 for t in positions)


def reagent_min_passes(positions: list[int], params: ReagentParams) -> int:
    """Forward passes ReAGent needs for one round of every probe on every target (plus the whole contexts)."""
    return len(positions) * (1 + 2 * params.num_probes)


class AttributionTarget(BaseModel):
    position: int
    logprob: float  # log p(token at `position` | its whole context), from the same batched forwards
    importance: list[float]  # one per context token 0 .. position-1
    passes: int
    converged: bool | None = None  # ReAGent: some probe met the stopping condition within the budget


class AttributionResult(BaseModel):
    targets: list[AttributionTarget]
    passes: int


class BytesJob(_JobBase):
    """Byte-level log-probabilities of a text (workers/bytelevel), stored by the worker under bytes_key."""

    kind: Literal["bytes"] = "bytes"
    record_id: RecordId
    text: str = Field(min_length=1)
    mode: Literal["canonical", "all"] = "canonical"
    max_states: int = Field(ge=2)


class LensJob(_JobBase):
    """The logit lens over a text (workers/lens.py): every position's next-token distribution read from each asked
    layer through the model's final norm and unembedding. The answer (LensResult JSON) is left under
    lens_key(job_id)."""

    kind: Literal["lens"] = "lens"
    token_ids: list[int] = Field(min_length=2, max_length=MAX_JOB_POSITIONS)
    layers: list[int] = Field(min_length=1, max_length=1024)  # transformers' hidden_states indices: 0 = embeddings
    top_k: int = Field(default=0, ge=0, le=20)
    # a record of these tokens that kept every asked layer (scored with `layers`): read, no forward
    record_id: RecordId | None = None
    # a trained `lens` head of the job's tenant: its translators read the layers below the last (the tuned lens)
    lens_head: Annotated[str, Field(pattern=HEAD_ID_PATTERN)] | None = None


class LensLayer(BaseModel):
    """One layer's reading of positions 1..T-1 (row i predicts token i+1), in float32 precision."""

    layer: int
    logprob: list[float]  # of the token that came
    rank: list[int]  # 1 + the tokens more likely than it
    entropy: list[float]  # nats
    kl_to_final: list[float]  # KL(final || this layer), nats (tuned-lens' direction)
    top1: list[int]  # the most likely token
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


class LensResult(BaseModel):
    layers: list[LensLayer]
    final_top1: list[int]  # the final layer's most likely token, per position
    n_layers: int  # the model's decoder layers: hidden_states has n_layers + 1 entries


AnyJob = (
    ScoreJob
    | GenerateJob
    | RowsJob
    | CrossJob
    | TokenSamplesJob
    | ContrastJob
    | HeadJob
    | AttributionJob
    | BytesJob
    | LensJob
)


def job_lane(job: AnyJob) -> str:
    """The lane (workers.contract.keys.LANES) a job waits in and runs in, unless it is a batch's (BULK_LANE)."""
    if isinstance(job, ScoreJob):
        return SCORING_LANE
    if isinstance(job, GenerateJob) or (isinstance(job, ContrastJob) and job.level == "token"):
        return STEPPED_LANE
    return HEAVY_LANE


Job = Annotated[AnyJob, Field(discriminator="kind")]


class _JobEnvelope(BaseModel):
    job: Job


def encode_job(job: AnyJob) -> dict[str, str]:
    return {"job": job.model_dump_json()}


def decode_job(fields: dict[bytes, bytes] | dict[str, str]) -> AnyJob:
    """Parse a stream entry; anything but one JSON job of a known kind is a ProtocolError."""
    raw = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    if set(raw) != {"job"}:
        raise ProtocolError(f"unexpected stream fields {sorted(raw)}")
    body = raw["job"]
    try:
        return _JobEnvelope.model_validate_json(
            b'{"job":' + (body if isinstance(body, bytes) else body.encode()) + b"}"
        ).job
    except ValidationError as exc:
        raise ProtocolError(f"invalid job: {exc.errors()[:3]}") from exc


class JobError(BaseModel):
    code: str
    message: str
    status: int = 422


class JobOutcome(BaseModel):
    """Written by the worker under job_outcome_key, then announced on DONE_CHANNEL."""

    job_id: str
    ok: bool
    record_id: str | None = None
    error: JobError | None = None
    completion_ids: list[int] | None = None
    finish_reason: str | None = None
    worker: str | None = None
