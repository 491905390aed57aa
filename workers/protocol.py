"""The contract between gateway and workers: Redis keys, job and record schemas, the binary codec.

Both sides import this module, so it imports nothing heavy (no torch, no transformers). Nothing is ever
pickled: jobs and metadata are JSON validated by pydantic, arrays are safetensors bytes validated on read.

Positions: a record of T tokens has T-1 predictions. Array row i holds the distribution that predicted
token i+1, so "position t" (the distribution that predicted token t, t >= 1) is row t-1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

PROTOCOL_VERSION = 1
CONSUMER_GROUP = "workers"
# Redis Cluster puts a key in the hash slot of the part of its name in braces (its hash tag). The job plane is one
# slot: a worker reads all its streams in one XREADGROUP, and settles a job (its outcome, the inflight mark, the
# ack and delete of its entry) in one transaction. Its entries are small (token ids);
# records, the bulk of the data, spread over every slot by their own names. Objects a tenant creates share the
# tenant's slot with the tenant's index of them (tenant_tag).
JOBS_TAG = "{jobs}"
DONE_CHANNEL = "lp:done"  # published outside transactions (a cluster pipeline refuses PUBLISH); every node relays it
DEAD_LETTER_STREAM = "lp:dead"
SECRET_KEY = "lp:secret"
CAPTURE_TOPK = 20
MAX_BLOB_BYTES = 512 * 1024 * 1024


class ProtocolError(ValueError):
    """A stream entry, record or blob that does not follow the contract; it is rejected, never run."""


# Names that become parts of Redis keys: a tenant never holds ":" (tenant "a" asking for id "b:X" must not reach
# tenant "a:b"), and record ids are what record_id() makes.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RECORD_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_JOB_POSITIONS = 1 << 16  # positions one job may name (a record holds at most the context length)
TenantName = Annotated[str, Field(pattern=TENANT_PATTERN)]
RecordId = Annotated[str, Field(pattern=RECORD_ID_PATTERN)]
# What a record keeps: "full" the hidden states (or full rows) besides the statistics, so its full distributions can
# be exported and compared across models; "stats" the statistics and top-k only. A record's id does not depend on
# it: a stats record asked for with "full" is re-scored in place (upgraded), and "stats" never drops full rows.
Retain = Literal["full", "stats"]


_TENANT = re.compile(TENANT_PATTERN)
_RECORD_ID = re.compile(RECORD_ID_PATTERN)


def valid_tenant(tenant: str) -> bool:
    return _TENANT.fullmatch(tenant) is not None


def valid_record_id(record_id: str) -> bool:
    return _RECORD_ID.fullmatch(record_id) is not None


# ---------------------------------------------------------------- keys


BULK_LANE = "bulk"  # jobs submitted for batches; workers take interactive jobs first
LANES = ("", BULK_LANE)


def jobs_stream(model: str, lane: str = "") -> str:
    """The stream of a model's jobs in a lane; jobs that need several models use the stream of their group_name.

    Each model has two lanes: requests that a client waits on, and the bulk of batches. A worker reads both and
    runs the interactive ones first, so one tenant's large batch never queues ahead of another's request."""
    return f"lp:{JOBS_TAG}:queue:{model}" + (f":{lane}" if lane else "")


MAX_GROUP = 3  # workers consume the streams of every group of up to this many of their models


def group_name(models: Iterable[str]) -> str:
    """Workers that host all these models consume the group's stream; a group of one is the model itself."""
    return "|".join(sorted(set(models)))


def tenant_tag(tenant: str) -> str:
    """The hash tag of a tenant's objects and their indexes (a tenant name never holds braces)."""
    return "{" + tenant + "}"


def cross_key(tenant: str, cross_id: str) -> str:
    return f"lp:cross:{tenant}:{cross_id}"


def job_outcome_key(job_id: str) -> str:
    return f"lp:{JOBS_TAG}:job:{job_id}"


def cancel_key(job_id: str) -> str:
    """Set by the gateway when a job's client went away; a worker that has not started the job skips it."""
    return f"lp:{JOBS_TAG}:cancel:{job_id}"


def inflight_key(tenant: str, record_id: str) -> str:
    return f"lp:{JOBS_TAG}:inflight:{tenant}:{record_id}"


def record_key(tenant: str, record_id: str) -> str:
    if not (valid_tenant(tenant) and valid_record_id(record_id)):
        raise ProtocolError(f"not a tenant and record id: {tenant!r}, {record_id!r}")
    return f"lp:rec:{tenant}:{record_id}"


# A record hash lacking any of these is incomplete (damaged, or hand-edited): treated as absent and scored again.
RECORD_CORE_FIELDS = ("meta", "stats")


def card_key(model: str) -> str:
    return f"lp:card:{model}"


def tokenizer_key(fingerprint: str) -> str:
    return f"lp:tokenizer:{fingerprint}"


def alive_key(model: str, worker_id: str) -> str:
    return f"lp:alive:{model}:{worker_id}"


def serving_key(queue: str) -> str:
    """Refreshed by every live worker of the queue (a model or a group of models) on each heartbeat, expiring soon
    after the last one stops: one key a waiter reads to learn that no worker is left to answer."""
    return f"lp:serving:{queue}"


def alive_pattern(model: str) -> str:
    return f"lp:alive:{model}:*"


def alive_on_host(client: Any, host: str) -> bool:
    """Whether a worker of `host` (a container's hostname) has announced a model within its alive TTL."""
    return next(iter(client.scan_iter(match=alive_key("*", f"{host}-*"), count=1000)), None) is not None


def export_key(job_id: str) -> str:
    return f"lp:export:{job_id}"


def as_bytes(value: object) -> bytes | None:
    """A Redis reply as bytes (clients run with decode_responses=False); None stays None."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise ProtocolError(f"unexpected Redis reply of type {type(value).__name__}")


# ---------------------------------------------------------------- ids


def new_secret() -> str:
    """A per-deployment HMAC secret; the first process to start stores it with SET NX under SECRET_KEY."""
    return secrets.token_hex(32)


def record_id(secret: bytes, tenant: str, fingerprint: str, token_ids: list[int], options: dict[str, Any]) -> str:
    """Content address of a record: HMAC over tenant, model fingerprint, token ids and capture options.

    The tenant is part of the address, so one tenant's ids say nothing about another's records.
    """
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update(json.dumps([PROTOCOL_VERSION, tenant, fingerprint, options], sort_keys=True).encode())
    mac.update(np.asarray(token_ids, dtype="<i4").tobytes())
    return mac.hexdigest()[:32]


# ---------------------------------------------------------------- model cards


class ModelCard(BaseModel):
    """What a worker publishes about a loaded model, so the gateway can tokenize and validate."""

    name: str
    fingerprint: str
    backend: Literal["hf", "vllm"]
    dtype: str
    vocab_size: int
    hidden_size: int
    context_length: int
    add_bos: bool
    bos_token_id: int | None
    eos_token_ids: list[int]
    chat_template: str | None
    special_tokens: dict[str, str] = Field(default_factory=dict)
    storage: Literal["hidden", "rows"]
    hidden_dtype: str
    rebuild_max_abs_error: float
    lossy: bool = False
    max_new_tokens: int
    retain: Retain = "full"  # what its records keep unless a request says otherwise


# ---------------------------------------------------------------- jobs


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


# Per aligned position: name -> meaning. All float64.
CROSS_ARRAYS = {
    "kl_pq": "KL(p || q)",
    "kl_qp": "KL(q || p)",
    "js": "Jensen-Shannon divergence (nats)",
    "q_logp_mean": "sum_v q(v) log p(v)",
    "q_logp_m2": "sum_v q(v) (log p(v))^2",
    "p_logq_mean": "sum_v p(v) log q(v)",
    "p_logq_m2": "sum_v p(v) (log q(v))^2",
    "rank_ptop_in_q": "rank under q of p's most likely token",
    "rank_qtop_in_p": "rank under p of q's most likely token",
}


def decode_cross(blob: bytes, positions: int) -> dict[str, np.ndarray]:
    try:
        arrays = st_load(blob)
    except Exception as exc:
        raise ProtocolError(f"unreadable cross statistics: {exc}") from exc
    if set(arrays) != set(CROSS_ARRAYS) or any(
        a.shape != (positions,) or a.dtype != np.float64 or not np.isfinite(a).all() for a in arrays.values()
    ):
        raise ProtocolError("cross statistics failed validation")
    return arrays


class DecodeView(BaseModel):
    """One view of a contrastive decoding job: a model reading its own prefix, weighted in the combination."""

    model_config = ConfigDict(extra="forbid")
    model: str
    fingerprint: str
    prefix_ids: list[int] = Field(min_length=1)
    weight: float
    temperature: float = Field(default=1.0, gt=0.0)


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


def steps_key(job_id: str) -> str:
    """Where a contrastive job leaves its per-step details (JSON list)."""
    return f"lp:steps:{job_id}"


def steps_channel(job_id: str) -> str:
    """Where a contrastive job publishes each step as it is taken (for streaming)."""
    return f"lp:stream:{job_id}"


class DecodeStep(BaseModel):
    token: int
    top_ids: list[int]
    top_logprobs: list[float]
    view_logprobs: list[float]
    view_ranks: list[int]
    contrasted: bool | None = None  # selective contrast (USCD): whether this step was contrasted
    logprob: float | None = None  # the chosen id's logprob under the combined distribution
    text: str | None = None  # byte level: the character this step's byte begins ("" for the others and the end)


HEAD_KINDS = ("pawn", "los", "probe")
HEAD_ID_PATTERN = r"^head_[0-9a-f]{24}$"


class HeadExample(BaseModel):
    """One labelled record of a training set, with the positions [start, stop) its span names."""

    model_config = ConfigDict(extra="forbid")
    record_id: RecordId
    label: Literal[0, 1]
    start: int = Field(ge=1)
    stop: int = Field(ge=2)


class HeadJob(_JobBase):
    """Train a head on stored records (workers/heads); the worker writes its state and weights under head_key."""

    kind: Literal["train_head"] = "train_head"
    head_id: Annotated[str, Field(pattern=HEAD_ID_PATTERN)]
    head_kind: Literal["pawn", "los", "probe"]
    examples: list[HeadExample] = Field(min_length=2, max_length=100_000)
    seed: int
    params: dict[str, float | int | str] = Field(default_factory=dict)
    target_fpr: float = Field(gt=0.0, lt=1.0)


class ReagentParams(BaseModel):
    """ReAGent's search (Zhao & Shan 2024; defaults of the reference code as packaged in inseq); the gateway's
    public twin is app.schemas.attribution.ReagentOptions."""

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


def attribution_key(job_id: str) -> str:
    return f"lp:attribution:{job_id}"


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


def bytes_key(tenant: str, record_id: str) -> str:
    if not (valid_tenant(tenant) and valid_record_id(record_id)):
        raise ProtocolError(f"not a tenant and record id: {tenant!r}, {record_id!r}")
    return f"lp:bytes:{tenant}:{record_id}"


AnyJob = ScoreJob | GenerateJob | RowsJob | CrossJob | ContrastJob | HeadJob | AttributionJob | BytesJob
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


# ---------------------------------------------------------------- records


class RecordMeta(BaseModel):
    record_id: str
    tenant: str
    model: str
    fingerprint: str
    kind: Literal["score", "generate"]
    token_ids: list[int]
    n_prompt: int | None = None
    finish_reason: str | None = None
    storage: Literal["hidden", "rows"]
    hidden_dtype: str
    topk: int
    vocab_size: int
    hidden_size: int
    retain: Retain = "full"  # "stats": no hidden states (nor rows) were kept
    created_at: float = Field(default_factory=time.time)


def rows_field(storage: str) -> str:
    """The record field that holds what rebuilds full rows: the hidden states, or the rows themselves."""
    return "hidden" if storage == "hidden" else "rows"


# Per-position statistics: name -> (dtype, trailing shape symbol). "k" is the captured top-k.
STAT_ARRAYS: dict[str, tuple[str, str | None]] = {
    "logprob": ("float32", None),  # log p(x_t)
    "rank": ("int32", None),  # 1 + #{v : p(v) > p(x_t)}
    "entropy": ("float32", None),  # -sum p log p
    "logp_m2": ("float32", None),  # sum p (log p)^2, the second moment of log p under p
    "kurtosis": ("float32", None),  # Fisher kurtosis of the V probability values
    "logz": ("float32", None),  # logsumexp of the raw logits
    "topk_ids": ("int32", "k"),
    "topk_logprobs": ("float32", "k"),
}


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    return st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def decode_stats(blob: bytes, positions: int, topk: int) -> dict[str, np.ndarray]:
    """Decode and validate a record's statistics blob: every array present, shaped, typed and finite."""
    if len(blob) > MAX_BLOB_BYTES:
        raise ProtocolError("statistics blob too large")
    try:
        arrays = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types for truncated or bad headers
        raise ProtocolError(f"unreadable statistics blob: {exc}") from exc
    if set(arrays) != set(STAT_ARRAYS):
        raise ProtocolError(f"statistics blob has arrays {sorted(arrays)}")
    for name, (dtype, trailing) in STAT_ARRAYS.items():
        a = arrays[name]
        shape = (positions,) if trailing is None else (positions, topk)
        if a.dtype != np.dtype(dtype) or a.shape != shape:
            raise ProtocolError(f"{name}: expected {dtype}{list(shape)}, got {a.dtype}{list(a.shape)}")
        if a.dtype.kind == "f":
            finite = np.isfinite(a) | (np.isneginf(a) if name in ("logprob", "topk_logprobs") else False)
            if not finite.all():
                raise ProtocolError(f"{name}: NaN or +Inf values")
    return arrays


def decode_meta(blob: bytes) -> RecordMeta:
    try:
        return RecordMeta.model_validate_json(blob)
    except ValidationError as exc:
        raise ProtocolError(f"invalid record metadata: {exc.errors()[:3]}") from exc


# ---------------------------------------------------------------- heads
#
# A head lives in one hash per tenant: "state" (HeadState JSON, written by the gateway until the job starts, then
# by the worker) and, once trained, "weights" (safetensors, float32), written together with the final state.
# The per-position features below are the contract between training (worker) and inference (gateway).


def head_key(tenant: str, head_id: str) -> str:
    return f"lp:head:{tenant_tag(tenant)}:{head_id}"


def head_index_key(tenant: str) -> str:
    return f"lp:head-index:{tenant_tag(tenant)}"


class HeadError(BaseModel):
    code: str
    message: str


class HeadMetrics(BaseModel):
    """k-fold cross-validated metrics: every example is scored by a head that never saw it."""

    folds: int
    auroc: float  # the mean of the folds' AUROCs
    auroc_folds: list[float]
    auroc_pooled: float  # over all out-of-fold scores at once (what the threshold is chosen on)
    auroc_ci95: tuple[float, float]
    target_fpr: float
    threshold: float  # decide label 1 when the score > threshold (from the out-of-fold scores of label 0)
    tpr: float
    fpr: float
    confidence: str


class HeadState(BaseModel):
    head_id: str
    name: str
    kind: Literal["pawn", "los", "probe"]
    family: str
    model: str
    fingerprint: str
    hidden_size: int
    span: Any
    status: Literal["scoring", "queued", "training", "succeeded", "failed"]
    stage: str = ""
    progress: float = 0.0
    seed: int
    params: dict[str, float | int | str] = Field(default_factory=dict)
    examples: dict[str, int] = Field(default_factory=dict)  # per label ("0", "1")
    metrics: HeadMetrics | None = None
    training_time_s: float | None = None
    n_parameters: int | None = None
    error: HeadError | None = None
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    expires_at: int | None = None


# Writes a head's hash only while it exists (a head deleted during training stays deleted).
HEAD_WRITE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# How the pooled networks (pawn, los) train, by default.
_NETWORK_TRAINING: dict[str, float | int | str] = {
    "folds": 5,
    "max_epochs": 60,
    "patience": 10,
    "lr": 1e-2,
    "weight_decay": 0.1,
    "dropout": 0.1,
    "batch_size": 32,
    "val_fraction": 0.2,
}

# Each kind's parameters and their defaults; a request's `params` may override any of them (and nothing else).
HEAD_PARAMS: dict[str, dict[str, float | int | str]] = {
    "pawn": {
        **_NETWORK_TRAINING,
        "width": 32,  # token-feature MLP
        "gate_dims": 32,  # principal directions of the hidden states the gate sees
        "gate_width": 32,
        "max_positions": 1024,  # positions per example used in training (the first of the span)
    },
    "los": {
        **_NETWORK_TRAINING,
        "width": 32,
        "topk": 20,
        "max_positions": 1024,
    },
    "probe": {"folds": 5, "val_fraction": 0.2, "pool": "mean", "max_positions": 1 << 20},
}
HEAD_PARAM_CHOICES = {"pool": ("mean", "last")}
HEAD_PARAM_MAX = {
    "folds": 20,
    "max_epochs": 1000,
    "patience": 1000,
    "lr": 1.0,
    "weight_decay": 100.0,
    "batch_size": 4096,
    "width": 1024,
    "gate_dims": 256,
    "gate_width": 1024,
    "topk": CAPTURE_TOPK,
    "max_positions": 1 << 20,
}


def head_params(kind: str, given: dict[str, float | int | str]) -> dict[str, float | int | str]:
    """The kind's defaults overridden by `given`; ValueError naming what is wrong."""
    defaults = HEAD_PARAMS[kind]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{kind} heads take no parameter {unknown[0]!r}; they take {sorted(defaults)}")
    out = dict(defaults)
    for name, value in given.items():
        default = defaults[name]
        if isinstance(default, str):
            if value not in HEAD_PARAM_CHOICES[name]:
                raise ValueError(f"{name} is one of {list(HEAD_PARAM_CHOICES[name])}")
        elif isinstance(value, str | bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number")
        elif isinstance(default, int) and (int(value) != value or (name == "folds" and value < 2)):
            raise ValueError(f"{name} must be an integer" + (" of at least 2" if name == "folds" else ""))
        elif name in ("val_fraction", "dropout") and value >= 1:
            raise ValueError(f"{name} must lie in (0, 1)")
        elif value > HEAD_PARAM_MAX.get(name, value):
            raise ValueError(f"{name} is at most {HEAD_PARAM_MAX[name]}")
        out[name] = int(value) if isinstance(default, int) else value
    return out


PAWN_FEATURES = (
    "logprob",  # log p(x_t), floored at -50
    "entropy",  # H_t
    "max_logprob",  # log p of the most likely token
    "log_rank",  # log rank of x_t
    "logp_std",  # sqrt(sum p (log p)^2 - H^2), the spread of log p under p
    "zscore",  # (log p(x_t) + H_t) / logp_std, Min-K%++'s token score
    "gap_to_max",  # log p(x_t) - max log p
    "margin",  # p1 - p2
)
LOGPROB_FLOOR = -50.0
# PAWN's read-out criterion (Fast-DetectGPT under the gate's weights) reads these raw token features; its
# denominator's floor per unit of sum w_t^2 (nats^2), far below any real token's variance, keeps it finite (and
# differentiable) on spans of near-certain tokens. One definition for the worker's torch forward and the gateway's.
CRITERION_COLUMNS = tuple(PAWN_FEATURES.index(name) for name in ("logprob", "entropy", "logp_std"))
CRITERION_FLOOR = 1e-4


def pawn_features(stats: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """float32 [len(rows), len(PAWN_FEATURES)]: PAWN's per-token features at record rows `rows` (position t is
    row t-1), all finite."""
    lp = np.maximum(stats["logprob"][rows].astype(np.float64), LOGPROB_FLOOR)
    entropy = stats["entropy"][rows].astype(np.float64)
    top = np.maximum(stats["topk_logprobs"][rows, :2].astype(np.float64), LOGPROB_FLOOR)
    std = np.sqrt(np.maximum(stats["logp_m2"][rows].astype(np.float64) - entropy**2, 0.0))
    z = np.clip((lp + entropy) / np.maximum(std, 1e-6), -50.0, 50.0)
    columns = [lp, entropy, top[:, 0], np.log(stats["rank"][rows].astype(np.float64)), std, z, lp - top[:, 0]]
    columns.append(np.exp(top[:, 0]) - np.exp(top[:, 1]))
    return np.stack(columns, axis=1).astype(np.float32)


def los_features(stats: dict[str, np.ndarray], rows: np.ndarray, topk: int) -> np.ndarray:
    """float32 [len(rows), topk + 1]: LOS-Net's output signature, each position's sorted top-k probabilities and
    the probability of the actual token."""
    top = np.sort(np.exp(stats["topk_logprobs"][rows, :topk].astype(np.float64)), axis=1)[:, ::-1]
    actual = np.exp(stats["logprob"][rows].astype(np.float64))[:, None]
    out: np.ndarray = np.concatenate([top, actual], axis=1).astype(np.float32)
    return out


def head_training_bytes(kind: str, positions: list[int], hidden_size: int, params: dict[str, float | int | str]) -> int:
    """What a head's training holds for its inputs, in bytes (workers.heads.train.Inputs, float32): each example's
    features at its positions padded to the longest, and pawn's hidden states (one more row each); a probe keeps one
    pooled state per example beside one record's states at a time. `positions`: per distinct example, its span's
    length capped at `max_positions`. The gateway refuses a head above its budget before accepting it."""
    n, longest = len(positions), max(positions, default=0)
    if kind == "probe":
        return 4 * hidden_size * (n + longest)
    features = len(PAWN_FEATURES) if kind == "pawn" else int(params["topk"]) + 1
    padded = n * longest * (4 * features + 9)  # float32 features, int64 positions, bool mask
    if kind == "pawn":
        padded += 4 * hidden_size * sum(p + 1 for p in positions)
    return padded


def hidden_float32(blob: bytes) -> np.ndarray:
    """A record's stored hidden states (safetensors, float32, float16 or bfloat16) as float32 [positions, D]."""
    _, header, data = _safetensors_parts(blob)
    entry = header.get("hidden")
    if not isinstance(entry, dict):
        raise ProtocolError("no hidden states in the blob")
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    raw = data[begin:end]
    if entry["dtype"] == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        out = bits.view(np.float32)
    elif entry["dtype"] in ("F32", "F16"):
        out = np.frombuffer(raw, dtype="<f4" if entry["dtype"] == "F32" else "<f2").astype(np.float32)
    else:
        raise ProtocolError(f"hidden states of dtype {entry['dtype']}")
    if len(shape) != 2 or out.size != shape[0] * shape[1]:
        raise ProtocolError("hidden states of the wrong shape")
    return out.reshape(shape)


def slice_hidden(blob: bytes, start: int, stop: int) -> bytes:
    """Rows [start, stop) of a stored hidden-state blob, as safetensors in the stored dtype (bytes copied as is)."""
    _, header, data = _safetensors_parts(blob)
    entry = header["hidden"]
    rows, width = entry["shape"]
    begin, end = entry["data_offsets"]
    row_bytes = (end - begin) // max(rows, 1)
    part = data[begin + start * row_bytes : begin + stop * row_bytes]
    head = json.dumps(
        {"hidden": {"dtype": entry["dtype"], "shape": [stop - start, width], "data_offsets": [0, len(part)]}}
    ).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + part


def _safetensors_parts(blob: bytes) -> tuple[int, dict[str, Any], bytes]:
    if len(blob) < 8:
        raise ProtocolError("truncated safetensors blob")
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8 : 8 + n])
    except ValueError as exc:
        raise ProtocolError(f"unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("unreadable safetensors header")
    return n, header, blob[8 + n :]
