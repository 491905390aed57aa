"""The `score` job: capture a token sequence's record. Scoring jobs read together share batched forwards (of at
most BATCH_TOKENS padded tokens, similar lengths together), and each record is the one it would be alone."""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import torch

from workers.backends.base import Backend
from workers.capture import capture_statistics_many
from workers.contract.jobs import AnyJob, JobOutcome, ScoreJob
from workers.contract.names import CAPTURE_TOPK
from workers.engines import check_ids
from workers.handlers.base import Context, Handler, answered
from workers.outcomes import JobFailed, alone, refused, worker_error
from workers.record_store import RecordWriter

log = logging.getLogger(__name__)

BATCH_TOKENS = 8192  # padded tokens in one batched scoring forward


def score_one(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, ScoreJob)
    backend = ctx.engines.backend_for(job.model, job.fingerprint)
    check_ids(job.token_ids, backend)
    kept = ctx.records.complete(
        job.tenant, job.record_id, job.retain, backend.card.storage, (job.layers, backend.card.layers)
    )
    if kept:  # another delivery did it
        return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)
    return score_stored(job, backend, ctx.records)


def score_stored(
    job: ScoreJob,
    backend: Backend,
    records: RecordWriter,
    hidden: torch.Tensor | None = None,
    stats: dict[str, np.ndarray] | None = None,
) -> JobOutcome:
    """Store the job's record (`hidden` and `stats`, when given, as RecordWriter.capture_and_store takes them)."""
    records.capture_and_store(
        job.tenant,
        job.record_id,
        job.token_ids,
        backend,
        kind="score",
        retain=job.retain,
        n_prompt=job.n_prompt,
        hidden=hidden,
        stats=stats,
        layers=job.layers,
    )
    return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)


def score_together(jobs: list[ScoreJob], ctx: Context) -> list[JobOutcome]:
    """Scoring jobs read together: those of one model that need a forward share batched forwards. A job that fails,
    fails alone; if a batched forward fails, its jobs run one at a time."""
    outcomes: dict[int, JobOutcome] = {}
    todo: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        try:
            backend = ctx.engines.backend_for(job.model, job.fingerprint)
            check_ids(job.token_ids, backend)
            stored = ctx.records.complete(
                job.tenant, job.record_id, job.retain, backend.card.storage, (job.layers, backend.card.layers)
            )
        except JobFailed as failed:
            outcomes[i] = refused(job, failed)
            continue
        except Exception as exc:  # Redis lost, say: this job alone
            outcomes[i] = worker_error(job, exc)
            continue
        if stored:
            outcomes[i] = JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)
        elif backend.card.storage != "hidden" or job.layers:  # layers: a forward of their own
            outcomes[i] = alone(job, partial(answered, score_one, job, ctx))
        else:
            todo.setdefault(job.model, []).append(i)
    for model, indices in todo.items():
        for group in _batches(sorted(indices, key=lambda i: len(jobs[i].token_ids)), jobs):
            outcomes.update(_score_group([jobs[i] for i in group], group, ctx.engines.backends[model], ctx))
    return [outcomes[i] for i in range(len(jobs))]


def _score_group(group: list[ScoreJob], indices: list[int], backend: Backend, ctx: Context) -> dict[int, JobOutcome]:
    if len(group) == 1:
        return {indices[0]: alone(group[0], partial(answered, score_one, group[0], ctx))}
    try:
        hidden = backend.hidden_states_batch([job.token_ids for job in group])
        hidden = [states[: len(job.token_ids) - 1] for job, states in zip(group, hidden, strict=True)]
        ids = [torch.tensor(job.token_ids) for job in group]
        stats = capture_statistics_many(hidden, ids, backend.head, CAPTURE_TOPK)  # shared unembedding matmuls
    except Exception:  # e.g. out of memory for the batch: each job alone, so a bad one fails alone
        log.exception("a batched forward of %d jobs failed; running them one at a time", len(group))
        return {i: alone(job, partial(answered, score_one, job, ctx)) for i, job in zip(indices, group, strict=True)}
    return {
        i: alone(job, partial(score_stored, job, backend, ctx.records, states, job_stats))
        for i, job, states, job_stats in zip(indices, group, hidden, stats, strict=True)
    }


def _batches(order: list[int], jobs: list[ScoreJob]) -> list[list[int]]:
    """Job indices, shortest first, cut into groups whose padded size stays within BATCH_TOKENS."""
    groups: list[list[int]] = []
    for i in order:
        width = len(jobs[i].token_ids)  # the longest so far: the order is by length
        if groups and width * (len(groups[-1]) + 1) <= BATCH_TOKENS:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


SCORE = Handler("score", score_one)
