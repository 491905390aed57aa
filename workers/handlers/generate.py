"""The `generate` job: it runs only in its model's running batch (workers.in_flight); here what that batch asks of
it: its sampling bounded by the model, and its record stored when it ends."""

from __future__ import annotations

import numpy as np
import torch

from workers.backends.base import Backend
from workers.contract.jobs import ContrastJob, GenerateJob, JobOutcome, Sampling
from workers.decoding import Decoded
from workers.engines import check_ids, completion_budget
from workers.handlers.base import Handler
from workers.record_store import RecordWriter


def generation_budget(job: GenerateJob, backend: Backend) -> Sampling:
    """The job's sampling with max_tokens bounded by the model's limits (a bad prompt raises JobFailed)."""
    check_ids(job.prompt_ids, backend)
    budget = completion_budget(job.sampling, [(backend, job.prompt_ids)])
    return job.sampling.model_copy(update={"max_tokens": budget})


def generation_stored(
    job: GenerateJob,
    backend: Backend,
    decoded: Decoded,
    records: RecordWriter,
    hidden: torch.Tensor | None,
    stats: dict[str, np.ndarray] | None = None,
) -> JobOutcome:
    rid = records.store_completion(job.tenant, backend, job.prompt_ids, decoded, job.retain, hidden=hidden, stats=stats)
    return completed(job, rid, decoded)


def completed(job: GenerateJob | ContrastJob, rid: str, decoded: Decoded) -> JobOutcome:
    return JobOutcome(
        job_id=job.job_id,
        ok=True,
        record_id=rid,
        completion_ids=decoded.completion,
        finish_reason=decoded.finish_reason,
    )


GENERATE = Handler("generate", None)
