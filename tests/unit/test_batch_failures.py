"""A job that fails inside a batch fails alone (issue #14): a decoding or generation whose own step fails ends with
its error while the others go on; a model whose forward fails ends only the jobs with a row in it; jobs that ended
in the failing step keep their answers; a scoring whose forward fails fails alone; entries read when Redis goes
away are not held. Real tiny random models in transformers and a real Redis; the faults are injected (a forward
that raises once, as running out of memory would; a connection that drops once)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from app.launcher.embedded import EmbeddedRedis
from workers.backends import load_backend
from workers.config import ModelSpec
from workers.contract.jobs import Sampling, ScoreJob
from workers.contract.names import record_id
from workers.contrasts import ContrastDone, SteppedContrasts
from workers.decoding import Contrast, View, decode
from workers.generations import Finished, SteppedGenerations
from workers.handlers.base import Context
from workers.handlers.score import score_together
from workers.runner import Worker, WorkerSettings

PROMPTS = [[1, 504, 3218, 314], [1, 2000, 45], [1, 77, 78, 79, 80, 81]]


class FeedFails:
    """A backend whose forward over running streams raises at its `after`-th call (once)."""

    def __init__(self, backend: Any, after: int) -> None:
        self.backend, self.after, self.calls = backend, after, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def feed(self, streams: Any, tokens: list[int]) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.after:
            raise RuntimeError("out of memory (injected)")
        return self.backend.feed(streams, tokens)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def backends(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """Two models (two loads of the tiny Llama: each its own running batch)."""
    data = Path(tmp_path_factory.mktemp("data"))
    spec = ModelSpec(name="tiny-llama", source="hf", path=tiny_models["tiny-llama"])
    return load_backend(spec, data), load_backend(spec, data)


def sampling(max_tokens: int, seed: int, stop: list[str] | None = None) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=1.0, top_p=1.0, seed=seed, stop=stop or [])


def run_contrasts(pool: SteppedContrasts) -> dict[str, ContrastDone]:
    ended: dict[str, ContrastDone] = {}
    while len(pool):
        for one in pool.advance():
            assert one.key not in ended  # answered once
            ended[one.key] = one
    return ended


def test_a_decoding_whose_step_fails_fails_alone(backends: tuple[Any, Any]) -> None:
    a, b = backends

    def broken(ids: list[int]) -> str:
        if len(ids) >= 3:
            raise ValueError("cannot detokenize")
        return str(ids)

    views = [[View(a, p, 1.5), View(b, p, -0.5)] for p in PROMPTS]
    pool = SteppedContrasts()
    pool.join("good-0", Contrast(views[0], sampling(6, 1)))
    pool.join("bad", Contrast(views[1], sampling(6, 2, stop=["zz"]), detokenize=broken))
    pool.join("good-2", Contrast(views[2], sampling(5, 3)))
    ended = run_contrasts(pool)
    assert isinstance(ended["bad"].error, ValueError) and ended["bad"].decoded is None
    for key, prompt_views, spec in (("good-0", views[0], sampling(6, 1)), ("good-2", views[2], sampling(5, 3))):
        got = ended[key].decoded
        assert got is not None and ended[key].error is None
        alone = decode(prompt_views, spec)
        assert got.completion == alone.completion
        for step, same in zip(got.steps, alone.steps, strict=True):
            assert step.view_logprobs == pytest.approx(same.view_logprobs, abs=1e-5)


def test_a_model_whose_forward_fails_ends_only_the_decodings_with_a_row_in_it(backends: tuple[Any, Any]) -> None:
    """Model B's forward fails at its third step: the decodings with a view on B fail with that error, one on A
    alone decodes on as if alone, and one on B that ended in that very step keeps its answer."""
    a, b = backends
    failing = FeedFails(b, after=3)
    pool = SteppedContrasts()
    pool.join("a-only", Contrast([View(a, PROMPTS[0], 1.0, 0.7)], sampling(6, 4)))
    pool.join("a-and-b", Contrast([View(a, PROMPTS[1], 1.5), View(failing, PROMPTS[1], -0.5)], sampling(6, 5)))
    pool.join("b-ends-then", Contrast([View(failing, PROMPTS[2], 1.0, 0.7)], sampling(3, 6)))
    pool.join("b-only", Contrast([View(failing, PROMPTS[0], 1.0, 0.7)], sampling(6, 7)))
    ended = run_contrasts(pool)
    assert set(ended) == {"a-only", "a-and-b", "b-ends-then", "b-only"}
    for key in ("a-and-b", "b-only"):
        assert ended[key].decoded is None and "injected" in str(ended[key].error)
    kept = ended["b-ends-then"].decoded
    assert kept is not None and kept.completion == decode([View(b, PROMPTS[2], 1.0, 0.7)], sampling(3, 6)).completion
    alone = ended["a-only"].decoded
    assert alone is not None and alone.completion == decode([View(a, PROMPTS[0], 1.0, 0.7)], sampling(6, 4)).completion
    assert not pool.batches and not pool.running


def test_generations_that_ended_before_a_failed_step_keep_their_answers(backends: tuple[Any, Any]) -> None:
    a, _ = backends
    pool = SteppedGenerations(a, FeedFails(a, after=3))
    pool.join("short", PROMPTS[0], sampling(3, 1))
    pool.join("long-1", PROMPTS[1], sampling(8, 2))
    pool.join("long-2", PROMPTS[2], sampling(8, 3))
    ended: dict[str, Finished] = {}
    while len(pool):
        for one in pool.advance():
            assert one.key not in ended
            ended[one.key] = one
    assert ended["short"].error is None and len(ended["short"].completion) == 3
    alone = SteppedGenerations(a, a)
    alone.join("short", PROMPTS[0], sampling(3, 1))
    (same,) = alone.advance() + alone.advance() + alone.advance()
    assert ended["short"].completion == same.completion
    for key in ("long-1", "long-2"):
        assert ended[key].finish_reason == "error" and "injected" in str(ended[key].error)
    pool.join("after", PROMPTS[1], sampling(2, 9))  # the model's batch starts afresh
    assert [f.error for f in pool.advance() + pool.advance()] == [None]


class StatesFail:
    """A backend whose forward fails on one poisoned sequence, alone or in a batch (as a resource failure would)."""

    def __init__(self, backend: Any, poison: list[int]) -> None:
        self.backend, self.poison = backend, poison

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def hidden_states_batch(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        if self.poison in sequences:
            raise RuntimeError("out of memory (injected)")
        return self.backend.hidden_states_batch(sequences)  # type: ignore[no-any-return]

    def hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        return self.hidden_states_batch([token_ids])[0]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("failures") / "redis")
    try:
        client = redis.Redis.from_url(embedded.start())
        yield client
        client.close()
    finally:
        embedded.stop()


def score_job(n: int, ids: list[int], fingerprint: str) -> ScoreJob:
    rid = record_id(b"secret", "alpha", fingerprint, ids, {})
    return ScoreJob(
        job_id=f"job-{n}", tenant="alpha", model="tiny-llama", fingerprint=fingerprint, record_id=rid, token_ids=ids
    )


class LosesRedis(redis.Redis):
    """A client whose connection drops at its `after`-th EXISTS (a Redis restart in the middle of an intake)."""

    def __init__(self, *args: Any, after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after, self.calls = after, 0

    def exists(self, *names: Any) -> Any:
        self.calls += 1
        if self.calls == self.after:
            raise redis.ConnectionError("Connection reset by peer (injected)")
        return super().exists(*names)


def test_jobs_read_when_redis_is_lost_mid_intake_are_not_held(redis_server: redis.Redis) -> None:
    """Entries taken before Redis went away are let go (the heartbeat no longer keeps them fresh), so that the
    visibility timeout hands them to another delivery instead of leaving them pending for as long as this worker
    lives."""
    worker = Worker.__new__(Worker)
    worker.settings = WorkerSettings()
    worker.redis = LosesRedis(connection_pool=redis_server.connection_pool, after=3)
    worker.held, worker.held_lock, worker.waiting, worker.running = {}, threading.Lock(), [], {}
    entries = [
        ("lp:jobs:test", f"1-{n}".encode(), {b"job": score_job(n, [1, 2, n], "f").model_dump_json().encode()})
        for n in range(4)
    ]
    with pytest.raises(redis.ConnectionError):
        worker._handle_many(entries)
    assert worker.held == {}


def test_a_scoring_whose_forward_fails_fails_alone(backends: tuple[Any, Any], redis_server: redis.Redis) -> None:
    """Scorings read together: the batched forward fails on one of them, each then runs alone, and only that one
    fails (a 500 of its own); the others' records are stored as alone."""
    a, _ = backends
    poison = PROMPTS[1] + [11, 12]
    ctx = Context.build(redis_server, {"tiny-llama": StatesFail(a, poison)}, b"secret", 600)

    def job(n: int, ids: list[int]) -> ScoreJob:
        rid = record_id(b"secret", "alpha", a.card.fingerprint, ids, {})
        return ScoreJob(
            job_id=f"job-{n}",
            tenant="alpha",
            model="tiny-llama",
            fingerprint=a.card.fingerprint,
            record_id=rid,
            token_ids=ids,
        )

    jobs = [job(0, PROMPTS[0] + [7, 8]), job(1, poison), job(2, PROMPTS[2] + [9, 10])]
    outcomes = score_together(jobs, ctx)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error is not None and outcomes[1].error.code == "worker_error"
    assert [o.record_id for o in outcomes[::2]] == [jobs[0].record_id, jobs[2].record_id]


def test_a_worker_takes_no_more_heavy_jobs_than_it_has_free_slots(redis_server: redis.Redis) -> None:
    """Five heavy jobs wait, two slots are free (one of four runs, one waits): two entries are taken, the rest
    stay in the stream for another worker; scoring jobs are taken beside them."""
    from workers.contract.jobs import LensJob, encode_job
    from workers.contract.keys import CONSUMER_GROUP, HEAVY_LANE, LANES, jobs_stream

    worker = Worker.__new__(Worker)
    worker.settings = WorkerSettings(worker_heavy_jobs=4)
    worker.redis, worker.id = redis_server, "hoarder"
    worker.waiting, worker.running, worker.last_intake = [], {}, 1
    worker.heavy_lock, worker.heavy_active = threading.Lock(), {"running": "alpha"}
    worker.heavy_queue = [("s", b"1-1", score_job(9, [1, 2], "f"))]
    worker.lane_streams = {lane: [jobs_stream("hoard", lane)] for lane in LANES}
    for stream in worker.lane_streams.values():
        redis_server.xgroup_create(stream[0], CONSUMER_GROUP, id="0", mkstream=True)
    heavy = jobs_stream("hoard", HEAVY_LANE)
    for n in range(5):
        job = LensJob(job_id=f"lens-{n}", tenant="alpha", model="hoard", fingerprint="f", token_ids=[1, 2], layers=[0])
        redis_server.xadd(heavy, encode_job(job))
    redis_server.xadd(jobs_stream("hoard"), encode_job(score_job(1, [1, 2, 3], "f")))
    taken = worker._intake(busy=True)
    assert sorted(stream for stream, _, _ in taken) == [jobs_stream("hoard"), heavy, heavy]
    pending: Any = redis_server.xpending(heavy, CONSUMER_GROUP)
    assert pending["pending"] == 2 and redis_server.xlen(heavy) == 5  # three never delivered: another worker's
    worker.heavy_active = {f"r{n}": "alpha" for n in range(3)}
    assert worker._intake(busy=True) == []  # no slot free: none taken
