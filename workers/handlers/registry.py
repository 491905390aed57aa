"""Every job kind's handler, by kind: the worker dispatches through this map (as app.analysis registers methods)."""

from __future__ import annotations

from workers.attribution_job import ATTRIBUTION
from workers.bytelevel.job import BYTES
from workers.contract.jobs import AnyJob, JobOutcome
from workers.handlers.base import Context, Handler, answered
from workers.handlers.contrast import CONTRAST
from workers.handlers.export import CROSS, ROWS
from workers.handlers.generate import GENERATE
from workers.handlers.score import SCORE
from workers.heads.job import TRAIN_HEAD
from workers.lens import LENS
from workers.token_samples import TOKEN_SAMPLES

HANDLERS: dict[str, Handler] = {
    handler.kind: handler
    for handler in (SCORE, GENERATE, CONTRAST, ROWS, CROSS, TOKEN_SAMPLES, TRAIN_HEAD, ATTRIBUTION, BYTES, LENS)
}


def handler_for(job: AnyJob) -> Handler:
    return HANDLERS[job.kind]


def run_job(job: AnyJob, ctx: Context) -> JobOutcome:
    """One job run alone by its handler (a refusal of its input is its 4xx outcome)."""
    run = handler_for(job).run
    if run is None:
        raise RuntimeError(f"{job.kind} jobs run only in the running batch")
    return answered(run, job, ctx)
