"""The `train_head` job: read the examples' records, train with cross-validation, and store the head (weights and
final state in one step, only if the head still exists). Any failure leaves a `failed` state and no weights."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from safetensors.numpy import save as st_save

from workers.backends.base import Backend
from workers.contract.heads import (
    HEAD_WRITE_IF_EXISTS,
    HeadError,
    HeadMetrics,
    HeadState,
    LensMetrics,
    feature_labels,
    head_params,
)
from workers.contract.jobs import AnyJob, HeadJob, JobError, JobOutcome
from workers.contract.keys import head_key
from workers.contract.names import as_bytes
from workers.contract.usage import RECOUNT_HASH, object_usage_key
from workers.handlers.base import Context, Handler
from workers.heads.data import HeadInputError, read_examples
from workers.heads.lens_head import train_lens_head
from workers.heads.train import Trained, train_head
from workers.lanes import Stopped

log = logging.getLogger(__name__)


class HeadWriter:
    """Updates of one head's state; each write lands only while the head exists."""

    def __init__(self, client: redis.Redis, job: HeadJob) -> None:
        self.key = head_key(job.tenant, job.head_id)
        self.script = client.register_script(HEAD_WRITE_IF_EXISTS)
        self.recount = client.register_script(RECOUNT_HASH)
        self.usage = object_usage_key(job.tenant)
        raw = as_bytes(client.hget(self.key, "state"))
        self.state = HeadState.model_validate_json(raw) if raw else None

    def update(self, weights: bytes | None = None, **changes: Any) -> bool:
        if self.state is None:
            return False
        self.state = self.state.model_copy(update=changes)
        args: list[str | bytes] = ["state", self.state.model_dump_json()]
        if weights is not None:
            args = ["weights", weights, *args]  # one script: the weights never stand without their final state
        written = bool(self.script(keys=[self.key], args=args))
        if written and (weights is not None or "status" in changes):  # its bytes count against its tenant's quota
            self.recount(keys=[self.usage, self.key])
        return written


def run_head_job(client: redis.Redis, job: HeadJob, backend: Backend | None = None) -> JobOutcome:
    """`backend`: the model, for a lens head (it reads every layer with its own forwards)."""
    started = time.perf_counter()
    writer = HeadWriter(client, job)
    if writer.state is None:
        return _failed(job, "head_not_found", "the head was deleted before training started")
    writer.update(status="training", stage="reading records", progress=0.0)
    try:
        params = head_params(job.head_kind, job.params)

        def progress(stage: str, fraction: float) -> None:
            writer.update(stage=stage, progress=round(fraction, 4))

        metrics: HeadMetrics | LensMetrics
        if job.head_kind == "lens":
            assert backend is not None
            lens = train_lens_head(client, job, backend, params, progress)
            weights, metrics, n_params = lens.weights, lens.metrics, lens.n_parameters
        else:
            trained = train_head(
                job.head_kind, read_examples(client, job, params), job.seed, params, job.target_fpr, progress
            )
            weights, metrics, n_params = (
                trained.weights,
                with_features(trained, params, writer.state),
                trained.n_parameters,
            )
    except Stopped as stop:  # a deleted head stays deleted: its writes are no-ops
        if stop.reason == "stopping":
            writer.update(status="queued", stage="waiting for a worker (the last one stopped)", progress=0.0)
        else:
            code, message = ("cancelled", str(stop)) if stop.reason == "cancelled" else _out_of_time(job)
            writer.update(
                status="failed", stage="", error=HeadError(code=code, message=message), finished_at=time.time()
            )
        raise
    except (HeadInputError, ValueError) as exc:
        code = exc.code if isinstance(exc, HeadInputError) else "invalid_params"
        writer.update(status="failed", stage="", error=HeadError(code=code, message=str(exc)), finished_at=time.time())
        return _failed(job, code, str(exc))
    except Exception as exc:  # a bug or a resource: the head says so, and no weights are written
        log.exception("training head %s failed", job.head_id)
        message = f"training failed: {type(exc).__name__}: {exc}"[:500]
        writer.update(
            status="failed", stage="", error=HeadError(code="training_failed", message=message), finished_at=time.time()
        )
        return _failed(job, "training_failed", message, 500)
    stored = writer.update(
        weights=st_save(weights),
        status="succeeded",
        stage="",
        progress=1.0,
        params=params,
        metrics=metrics,
        training_time_s=round(time.perf_counter() - started, 3),  # reading the records included
        n_parameters=n_params,
        finished_at=time.time(),
    )
    if not stored:
        return _failed(job, "head_not_found", "the head was deleted during training")
    return JobOutcome(job_id=job.job_id, ok=True)


def with_features(trained: Trained, params: dict[str, float | int | str], state: HeadState | None) -> HeadMetrics:
    """The metrics with the layer a probe reads (`with_layer`) and a stack's features alone, keyed by their labels."""
    metrics = with_layer(trained, params)
    if trained.feature_auroc is not None and state is not None and state.features is not None:
        alone = dict(zip(feature_labels(state.features), trained.feature_auroc, strict=True))
        metrics = metrics.model_copy(update={"feature_auroc": alone})
    return metrics


def with_layer(trained: Trained, params: dict[str, float | int | str]) -> HeadMetrics:
    """The metrics, saying which layer a probe on a layer reads (with "best", the candidates 0..C-1 and their AUROCs;
    the chosen one's figures come from the same cross-validation that chose it, so they lean optimistic)."""
    metrics, layer = trained.metrics, params.get("layer", "final")
    if layer == "final":
        return metrics
    if trained.layer_aurocs is None or trained.layer_choice is None:
        return metrics.model_copy(update={"layer": int(layer)})
    return metrics.model_copy(
        update={
            "layer": trained.layer_choice,
            "layer_auroc": dict(enumerate(trained.layer_aurocs)),
            "confidence": f"{metrics.confidence}; layer {trained.layer_choice} was chosen as the best of "
            f"{len(trained.layer_aurocs)} by this cross-validation, so its figures lean optimistic",
        }
    )


def _out_of_time(job: HeadJob) -> tuple[str, str]:
    allowed = (job.deadline or job.enqueued_at) - job.enqueued_at
    return "deadline_exceeded", f"training ran past its time budget of {allowed:.0f} s (max_head_training_s)"


def abandon_head(job: AnyJob, ctx: Context, code: str, message: str) -> None:
    """A training job given up on (its deadline passed while it waited, or dead-lettered after its deliveries):
    its head fails with the reason instead of staying `queued` or `training`."""
    assert isinstance(job, HeadJob)
    if code == "deadline_exceeded":
        code, message = _out_of_time(job)
    error = HeadError(code=code, message=message)
    HeadWriter(ctx.redis, job).update(status="failed", stage="", error=error, finished_at=time.time())


def _failed(job: HeadJob, code: str, message: str, status: int = 422) -> JobOutcome:
    return JobOutcome(job_id=job.job_id, ok=False, error=JobError(code=code, message=message, status=status))


def train_head_job(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, HeadJob)
    if job.head_kind == "lens":  # a tuned lens reads every layer: the model runs
        return run_head_job(ctx.redis, job, ctx.engines.backend_for(job.model, job.fingerprint))
    return run_head_job(ctx.redis, job)  # reads records only: no backend, no weights


def head_deleted(job: AnyJob, client: redis.Redis) -> bool:
    """Whether the head this job trains was deleted meanwhile (its training then stops at its next slice)."""
    assert isinstance(job, HeadJob)
    return not client.exists(head_key(job.tenant, job.head_id))


TRAIN_HEAD = Handler("train_head", train_head_job, abandon_head, head_deleted)
