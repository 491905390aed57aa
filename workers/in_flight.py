"""Jobs in flight on a worker's engines, run as one continuous batch per model.

Generations join their model's running batch as they arrive and leave it when they end (`generations.py` for
transformers, the generate engine's own scheduler for vLLM); so do token-level contrastive decodings (`contrasts.py`:
one batch of streams per model across requests, on either backend). On an engine with its own scheduler (vLLM),
scoring requests too join the pooling engine's running batch as they arrive; a finished generation's record comes
from the states its decoding computed (vLLM's generate engine captures them, `backends/vllm_capture.py`), or where
those are missing, from the pooling engine's batch; elsewhere scoring runs at once as batched forwards
(`handlers.score.score_together`). Every job's record is stored as soon as its request finishes, and a job that
fails, fails alone.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import torch

from workers.backends.base import Backend
from workers.capture import capture_statistics_many
from workers.contract.jobs import AnyJob, ContrastJob, GenerateJob, JobError, JobOutcome, Sampling, ScoreJob
from workers.contract.names import CAPTURE_TOPK
from workers.contrasts import ContrastDone, SteppedContrasts, joinable
from workers.decoding import Contrast, Decoded, View, tokens_before_stop
from workers.engines import check_ids
from workers.generations import Finished, GenerationPool, SteppedGenerations
from workers.handlers.base import Context, answered
from workers.handlers.contrast import contrast_alone, contrast_done, contrast_options, contrast_views
from workers.handlers.generate import generation_budget, generation_stored
from workers.handlers.score import score_stored, score_together
from workers.outcomes import JobFailed, alone, refused, worker_error

log = logging.getLogger(__name__)

Done = list[tuple[AnyJob, JobOutcome]]
Stepped = GenerateJob | ContrastJob  # jobs that run step by step in a running batch


def stepped_tokens(job: Stepped) -> int:
    """The tokens a generation or a decoding may come to hold in the running batch: each stream's prompt and
    completion."""
    if isinstance(job, GenerateJob):
        return len(job.prompt_ids) + job.sampling.max_tokens
    return sum(len(view.prefix_ids) + job.sampling.max_tokens for view in job.views)


class InFlight:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.generations: dict[str, GenerationPool] = {}  # by model
        self.scorings: dict[str, Any] = {}  # by model, for engines with their own scheduler (vLLM's EngineScores)
        self.jobs: dict[str, AnyJob] = {}  # by job id: every job admitted and not finished
        self.samplings: dict[str, Sampling] = {}  # a generation's sampling, as bounded by its model
        self.capturing: dict[str, Decoded] = {}  # a finished generation whose states the pooling engine computes
        self.contrasts = SteppedContrasts()  # token-level contrastive decodings, across models and requests
        self.contrast_views: dict[str, list[View]] = {}  # a decoding's views, for its record
        self.early: Done = []  # finished while `run` waited for its own jobs: answered by the next `advance`

    def __len__(self) -> int:
        return len(self.jobs)

    def _generation_pool(self, model: str) -> GenerationPool:
        pool = self.generations.get(model)
        if pool is None:
            backend = self.ctx.engines.backends[model]
            own = getattr(backend, "generations", None)  # an engine with its own scheduler (vLLM)
            pool = own() if own is not None else SteppedGenerations(backend, backend)  # type: ignore[arg-type]
            self.generations[model] = pool
        return pool

    def _scoring_pool(self, model: str) -> Any:
        if model not in self.scorings:
            own = getattr(self.ctx.engines.backends.get(model), "scorings", None)
            self.scorings[model] = own() if own is not None else None
        return self.scorings[model]

    # ------------------------------------------------------------ admission

    def admit(self, jobs: list[ScoreJob | Stepped]) -> Done:
        """Take jobs into their models' running batches; the outcomes of those that ended at once (refused,
        already stored, scored at once by a backend without a scheduler of its own, or a decoding whose views
        cannot batch across requests, run alone)."""
        done: Done = []
        now: list[ScoreJob] = []
        for job in jobs:
            try:
                if isinstance(job, GenerateJob):
                    self._admit_generation(job)
                elif isinstance(job, ContrastJob):
                    if not self._admit_contrast(job):
                        done.append((job, answered(contrast_alone, job, self.ctx)))
                elif not self._admit_score(job):
                    now.append(job)
            except JobFailed as failed:
                done.append((job, refused(job, failed)))
            except Exception as exc:  # the engine refused it: this job fails alone
                log.exception("job %s could not join the batch of %s", job.job_id, job.model)
                done.append((job, worker_error(job, exc)))
        if now:
            done.extend(zip(now, score_together(now, self.ctx), strict=True))
        return done

    def _admit_generation(self, job: GenerateJob) -> None:
        backend = self.ctx.engines.backend_for(job.model, job.fingerprint)
        sampling = generation_budget(job, backend)
        self._generation_pool(job.model).join(job.job_id, job.prompt_ids, sampling)
        self.jobs[job.job_id], self.samplings[job.job_id] = job, sampling

    def _admit_contrast(self, job: ContrastJob) -> bool:
        """Whether the decoding joined the running contrastive batch (else it runs alone, at once)."""
        if job.level != "token":
            return False
        views, sampling = contrast_views(job, self.ctx)
        if not all(joinable(view.backend) for view in views):
            return False
        self.contrasts.join(job.job_id, Contrast(views, sampling, **contrast_options(job, self.ctx.redis, views)))
        self.jobs[job.job_id], self.contrast_views[job.job_id] = job, views
        return True

    def _admit_score(self, job: ScoreJob) -> bool:
        """Whether the job joined the pooling engine's batch (else it is scored at once, with the others)."""
        pool = self._scoring_pool(job.model)
        if pool is None or job.layers:  # layers: scored alone, which refuses them where the backend keeps none
            return False
        backend = self.ctx.engines.backend_for(job.model, job.fingerprint)
        check_ids(job.token_ids, backend)
        if backend.card.storage != "hidden" or self.ctx.records.complete(job.tenant, job.record_id, job.retain):
            return False
        pool.join(job.job_id, job.token_ids)
        self.jobs[job.job_id] = job
        return True

    # ------------------------------------------------------------ steps

    def advance(self) -> Done:
        """One step of every running batch; the jobs that finished, their records stored. A batch that fails
        fails the jobs it held (each a worker_error), and its model starts afresh."""
        done, self.early = self.early, []
        for model, pool in list(self.generations.items()):
            if len(pool):
                finished = self._step(model, pool, done)
                if finished is None:
                    del self.generations[model]  # it starts afresh
                done.extend(self._generated(finished or [], self.ctx.engines.backends[model]))
        for model, pool in list(self.scorings.items()):
            if pool is not None and len(pool):
                states = self._step(model, pool, done)
                if states is None:
                    del self.scorings[model]
                done.extend(self._scored(states or [], self.ctx.engines.backends[model]))
        if len(self.contrasts):
            done.extend(self._contrasted(self._step("contrastive decodings", self.contrasts, done) or []))
        return done

    def _step(self, name: str, pool: Any, done: Done) -> list[Any] | None:
        """One step of a running batch; None if it failed (the jobs it held fail, each a worker_error)."""
        try:
            return list(pool.advance())
        except Exception as exc:
            log.exception("the running batch of %s failed", name)
            for key in pool.abandon():
                done.append((self.jobs[key], worker_error(self.jobs[key], exc)))
                self._forget(key)
            return None

    # ------------------------------------------------------------ leaving

    def cancel(self, stops: dict[str, JobError]) -> Done:
        """Stop these jobs between steps (their clients left, or their deadlines passed): their rows leave the running
        batches, the others go on; each answered with its error. A batch that cannot let rows go fails the jobs it
        held (each a worker_error), and starts afresh."""
        keys = set(stops) & set(self.jobs)
        done: Done = []
        pools: list[tuple[str, Any, dict[str, Any]]] = [
            *((model, pool, self.generations) for model, pool in self.generations.items()),
            *((model, pool, self.scorings) for model, pool in self.scorings.items() if pool is not None),
        ]
        if len(self.contrasts):
            pools.append(("contrastive decodings", self.contrasts, {}))
        for name, pool, owner in pools:
            try:
                dropped = pool.leave(keys)
            except Exception as exc:
                log.exception("the running batch of %s could not let %d jobs go", name, len(keys))
                dropped = []
                for key in pool.abandon():
                    if key in keys:
                        dropped.append(key)
                    else:
                        done.append((self.jobs[key], worker_error(self.jobs[key], exc)))
                        self._forget(key)
                owner.pop(name, None)
            for key in dropped:
                if key in self.jobs:
                    job = self._forget(key)
                    done.append((job, JobOutcome(job_id=job.job_id, ok=False, error=stops[key])))
        return done

    def _forget(self, key: str) -> AnyJob:
        self.samplings.pop(key, None)
        self.capturing.pop(key, None)
        self.contrast_views.pop(key, None)
        return self.jobs.pop(key)

    def _contrasted(self, ended: list[ContrastDone]) -> Done:
        """Decodings that ended: each record stored (and steps kept) alone."""
        done: Done = []
        for one in ended:
            views = self.contrast_views[one.key]
            job = self._forget(one.key)
            assert isinstance(job, ContrastJob)
            if one.decoded is None:
                done.append((job, worker_error(job, one.error or RuntimeError("no decoding"))))
            else:
                done.append((job, alone(job, partial(contrast_done, job, views, one.decoded, self.ctx))))
        return done

    def _generated(self, finished: list[Finished], backend: Backend) -> Done:
        """Generations that ended: those whose decoding kept its states (transformers' loop, vLLM's generate engine
        when it captures them) are stored at once, their statistics through shared matmuls; the others' records are
        captured by the pooling engine's batch where there is one, else in one batched forward here."""
        done: Done = []
        kept: list[tuple[GenerateJob, Decoded]] = []
        computed: list[tuple[AnyJob, Decoded | None, torch.Tensor]] = []  # states from the decoding's own pass
        for f in finished:
            job = self.jobs[f.key]
            assert isinstance(job, GenerateJob)
            if f.error is not None:
                self._forget(f.key)
                done.append((job, worker_error(job, f.error)))
            elif f.states is not None and backend.card.storage == "hidden":  # the decoding loop computed them
                self._forget(f.key)
                computed.append((job, Decoded(f.completion, f.finish_reason, steps=[]), f.states))
            else:
                try:
                    kept.append((job, _kept(f.completion, f.finish_reason, self.samplings[f.key], backend)))
                except Exception as exc:  # its stop check failed: it fails alone
                    log.exception("generation %s could not be cut at its stop string", job.job_id)
                    self._forget(f.key)
                    done.append((job, worker_error(job, exc)))
        if computed:
            done.extend(self._stored(computed, backend))
        scoring = self._scoring_pool(kept[0][0].model) if kept else None
        if scoring is not None and backend.card.storage == "hidden":
            for job, decoded in kept:
                self.capturing[job.job_id] = decoded
                try:
                    scoring.join(job.job_id, job.prompt_ids + decoded.completion)
                except Exception as exc:
                    self._forget(job.job_id)
                    done.append((job, worker_error(job, exc)))
            return done
        full = [job.prompt_ids + decoded.completion for job, decoded in kept]
        hidden: list[torch.Tensor | None] = [None] * len(kept)
        if kept and backend.card.storage == "hidden":
            try:
                hidden = list(backend.hidden_states_batch(full))
            except Exception:  # each captures its own, so that a bad one fails alone
                log.exception("a batched capture of %d generations failed; capturing them one at a time", len(kept))
        for (job, decoded), states in zip(kept, hidden, strict=True):
            self._forget(job.job_id)
            done.append((job, alone(job, partial(generation_stored, job, backend, decoded, self.ctx.records, states))))
        return done

    def _scored(self, states: list[tuple[str, torch.Tensor]], backend: Backend) -> Done:
        """Sequences the pooling engine finished in one step, scorings and generations' records alike."""
        if not states:  # a step that finished nothing (a chunk of a long prefill)
            return []
        finished: list[tuple[AnyJob, Decoded | None, torch.Tensor]] = []
        for key, hidden in states:
            decoded = self.capturing.get(key)
            finished.append((self._forget(key), decoded, hidden))
        return self._stored(finished, backend)

    def _stored(self, finished: list[tuple[AnyJob, Decoded | None, torch.Tensor]], backend: Backend) -> Done:
        """Sequences whose hidden states are at hand: their statistics through shared unembedding matmuls, then
        each record stored alone."""
        done: Done = []
        for (job, decoded, hidden), stats in zip(finished, _statistics(finished, backend), strict=True):
            if isinstance(job, GenerateJob) and decoded is not None:
                work = partial(generation_stored, job, backend, decoded, self.ctx.records, hidden, stats)
            else:
                assert isinstance(job, ScoreJob)
                work = partial(score_stored, job, backend, self.ctx.records, hidden, stats)
            done.append((job, alone(job, work)))
        return done

    def run(self, jobs: list[ScoreJob | Stepped]) -> list[JobOutcome]:
        """Run jobs to their end (with whatever else is in flight); their outcomes, in order. Other jobs that
        finish meanwhile are answered by the next `advance`."""
        outcomes = {job.job_id: outcome for job, outcome in self.admit(jobs)}
        early: Done = []
        while any(job.job_id not in outcomes for job in jobs):
            for job, outcome in self.advance():
                if any(job is mine for mine in jobs):
                    outcomes[job.job_id] = outcome
                else:
                    early.append((job, outcome))
        self.early.extend(early)
        return [outcomes[job.job_id] for job in jobs]


def _kept(completion: list[int], finish_reason: str, sampling: Sampling, backend: Backend) -> Decoded:
    """An engine's completion as a job keeps it: the engine keeps the token that completed a stop string."""
    if finish_reason == "stop" and sampling.stop:
        completion = completion[: tokens_before_stop(completion, backend.decode, sampling.stop)]
    return Decoded(completion, finish_reason, steps=[])


def _statistics(
    finished: list[tuple[AnyJob, Decoded | None, torch.Tensor]], backend: Backend
) -> list[dict[str, np.ndarray] | None]:
    """The statistics of finished sequences' rows, through shared unembedding matmuls (each matmul streams all
    of W); None for every one if that fails, so that each captures its own and a bad one fails alone."""
    ids = [torch.tensor(_sequence(job, decoded)) for job, decoded, _ in finished]
    hidden = [states[: len(tokens) - 1] for (_, _, states), tokens in zip(finished, ids, strict=True)]
    try:
        return list(capture_statistics_many(hidden, ids, backend.head, CAPTURE_TOPK))
    except Exception:
        log.exception("shared statistics of %d sequences failed; each captures its own", len(finished))
        return [None] * len(finished)


def _sequence(job: AnyJob, decoded: Decoded | None) -> list[int]:
    """The tokens of a scoring's record, or of a generation's (prompt + completion)."""
    if isinstance(job, GenerateJob) and decoded is not None:
        return job.prompt_ids + decoded.completion
    assert isinstance(job, ScoreJob)
    return job.token_ids
