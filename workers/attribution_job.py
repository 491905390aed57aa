"""Running an attribution job: check its inputs against the model, run the method, leave the answer in Redis."""

from __future__ import annotations

import time

from workers.attribution import backend_scorer, occlusion, reagent
from workers.contract.jobs import (
    AnyJob,
    AttributionJob,
    AttributionResult,
    JobOutcome,
    occlusion_passes,
    reagent_min_passes,
)
from workers.contract.keys import attribution_key
from workers.contract.lifetimes import put_until
from workers.engines import check_ids
from workers.handlers.base import Context, Handler
from workers.outcomes import JobFailed

RESULT_TTL_S = 3600


def run_attribution_job(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, AttributionJob)
    backend = ctx.engines.backend_for(job.model, job.fingerprint)
    check_ids(job.token_ids, backend)
    n = len(job.token_ids)
    if len(set(job.positions)) != len(job.positions) or not all(2 <= t < n for t in job.positions):
        raise JobFailed("invalid_positions", f"target positions must be distinct and lie in [2, {n - 1}]")
    score = backend_scorer(backend)
    if job.method == "occlusion":
        _check_budget(occlusion_passes(job.positions), job.max_passes)
        targets = occlusion(job.token_ids, job.positions, score)
    else:
        if len(job.replacements) != n or not all(-1 <= r < backend.card.vocab_size for r in job.replacements):
            raise JobFailed(
                "invalid_replacements", f"one replacement id (or -1) per token, below {backend.card.vocab_size}"
            )
        _check_budget(reagent_min_passes(job.positions, job.reagent), job.max_passes)
        targets = reagent(job.token_ids, job.positions, job.replacements, job.reagent, job.seed, job.max_passes, score)
    result = AttributionResult(targets=targets, passes=sum(t.passes for t in targets))
    put_until(ctx.redis, attribution_key(job.job_id), result.model_dump_json(), time.time() + RESULT_TTL_S)
    return JobOutcome(job_id=job.job_id, ok=True)


def _check_budget(needed: int, max_passes: int) -> None:
    if needed > max_passes:
        raise JobFailed(
            "max_passes_too_small", f"these targets need at least {needed} forward passes; max_passes is {max_passes}"
        )


ATTRIBUTION = Handler("attribution", run_attribution_job)
