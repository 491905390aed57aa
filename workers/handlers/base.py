"""What a job handler is, and what it is given: the engines, a record writer and Redis (for the answers it leaves
there). A handler never calls back into the worker. How the worker runs a job follows its lane
(workers.contract.jobs.job_lane): scoring jobs read together share forwards (or the pooling engine's running batch),
stepped ones (generations, token-level decodings) join the running batch, heavy ones run in a thread of their own
taking turns by slices (workers.lanes); the handler's `run` is how one job runs alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from workers.backends.base import Backend
from workers.contract.jobs import AnyJob, JobOutcome
from workers.engines import Engines
from workers.outcomes import JobFailed, refused
from workers.record_store import RecordWriter


@dataclass
class Context:
    """What handlers are given."""

    redis: Redis
    engines: Engines
    records: RecordWriter

    @classmethod
    def build(cls, client: Redis, backends: dict[str, Backend], secret: bytes, record_ttl_s: int) -> Context:
        return cls(client, Engines(backends), RecordWriter(client, secret, record_ttl_s))


@dataclass(frozen=True)
class Handler:
    """A job kind's handler: how to run one job alone (None for a kind that runs only in the running batch:
    workers.in_flight), what to do when the worker gives a job up without running it to its end (its deadline
    passed before it started; dead-lettered), and whether what the job works for is gone (a deleted head: heavy
    work asks between slices, beside the job's own cancellation)."""

    kind: str
    run: Callable[[AnyJob, Context], JobOutcome] | None
    abandon: Callable[[AnyJob, Context, str, str], None] | None = None  # job, context, code, message
    gone: Callable[[AnyJob, Redis], bool] | None = None


def answered(run: Callable[[AnyJob, Context], JobOutcome], job: AnyJob, ctx: Context) -> JobOutcome:
    """A job run alone: a refusal of its input becomes its 4xx outcome (other failures propagate)."""
    try:
        return run(job, ctx)
    except JobFailed as failed:
        return refused(job, failed)
