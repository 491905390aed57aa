"""How a job ends badly: a refusal of its input (JobFailed, a 4xx for its client) or a failure of the worker's
own (worker_error, a 500), which fails that job alone. Losing Redis mid-job (an outage, a cluster failover, a cut
link) is neither: such a job is left pending, and another delivery answers it after the visibility timeout."""

from __future__ import annotations

import logging
from collections.abc import Callable

from workers.contract.jobs import AnyJob, JobError, JobOutcome
from workers.redis_client import STORAGE_FULL, TRANSIENT, storage_full

REDIS_LOST = "redis_lost"  # the code of an outcome never published: its job is delivered again

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """A job that cannot be done as asked; becomes an error outcome the gateway turns into a 4xx."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.error = JobError(code=code, message=message, status=status)


def refused(job: AnyJob, failed: JobFailed) -> JobOutcome:
    return JobOutcome(job_id=job.job_id, ok=False, error=failed.error)


def worker_error(job: AnyJob, exc: Exception) -> JobOutcome:
    """The outcome of a job that failed on something other than its input (a bug, a resource)."""
    if isinstance(exc, TRANSIENT):
        error = JobError(code=REDIS_LOST, message=f"Redis was lost mid-job: {exc}", status=503)
        return JobOutcome(job_id=job.job_id, ok=False, error=error)
    if storage_full(exc):
        error = JobError(
            code=STORAGE_FULL, message="Redis is full (its memory limit reached): nothing was kept", status=503
        )
        return JobOutcome(job_id=job.job_id, ok=False, error=error)
    return JobOutcome(
        job_id=job.job_id, ok=False, error=JobError(code="worker_error", message=type(exc).__name__, status=500)
    )


def alone(job: AnyJob, work: Callable[[], JobOutcome]) -> JobOutcome:
    """One job's outcome inside a batch: an exception fails this job alone, not the batch."""
    try:
        return work()
    except Exception as exc:
        log.exception("job %s failed", job.job_id)
        return worker_error(job, exc)
