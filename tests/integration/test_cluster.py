"""The service on a Redis Cluster (3 masters, 3 replicas, started here from the redis-server binary): the core
of the integration suite passes unchanged against it, the keys spread over the masters, and a master killed with
kill -9 while jobs are in flight hands its slots to its replica without a request hanging or being answered
wrong. The failover test runs last: it leaves the cluster with a replica promoted."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry

from app.launcher.cluster import EmbeddedCluster
from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, KEYS, MODEL
from tests.integration import test_analysis_api as analysis_suite
from tests.integration import test_batches as batches_suite
from tests.integration import test_contrastive as contrast_suite
from tests.integration import test_spine as spine_suite
from workers.contract.cards import ModelCard
from workers.contract.jobs import ScoreJob, encode_job
from workers.contract.keys import DONE_CHANNEL, card_key, job_outcome_key, jobs_stream, record_key
from workers.redis_client import CLUSTER_RETRIES, connect, connect_async, is_cluster


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1, node_timeout_ms=2000).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def on_cluster(redis_cluster: EmbeddedCluster) -> Iterator[LocalService]:
    """The whole service with REDIS_URL naming one node; cluster mode is found by asking it."""
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_WORKER_THREADS": "2",
        "LOGPROBE_JOB_TIMEOUT_S": "120",
        "LOGPROBE_VISIBILITY_TIMEOUT_S": "8",
        "LOGPROBE_RECLAIM_EVERY_S": "2",
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "cluster", redis_url=redis_cluster.url) as service:
        yield service


@pytest.fixture
def alpha_c(on_cluster: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=on_cluster.base_url, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as c:
        yield c


@pytest.fixture
def beta_c(on_cluster: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=on_cluster.base_url, headers={"Authorization": "Bearer key-beta"}, timeout=300) as c:
        yield c


def test_cluster_mode_is_found_by_asking_the_server(redis_cluster: EmbeddedCluster) -> None:
    assert is_cluster(redis_cluster.url) and not is_cluster(redis_cluster.url, setting=False)
    client = connect(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    client.close()


def test_score_matches_transformers(alpha_c: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    spine_suite.test_score_matches_transformers(alpha_c, hf_smollm2)
    spine_suite.test_full_rows_rebuild_exactly(alpha_c, hf_smollm2)


def test_greedy_generation(alpha_c: httpx.Client) -> None:
    spine_suite.test_greedy_chat_generation_says_paris(alpha_c)


def test_analyses(alpha_c: httpx.Client, beta_c: httpx.Client) -> None:
    analysis_suite.test_uncertainty_agrees_with_the_scored_tokens(alpha_c)
    analysis_suite.test_text_input_spans_and_method_choice(alpha_c)
    analysis_suite.test_membership_with_default_and_custom_frequency_tables(alpha_c, beta_c)


def test_batch_runs_and_cancels(alpha_c: httpx.Client) -> None:
    batches_suite.test_a_batch_runs_every_analysis_on_every_input(alpha_c)
    batches_suite.test_a_cancelled_batch_stops_counting_and_gives_every_input_a_line(alpha_c)


def test_contrastive_decoding(alpha_c: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    contrast_suite.test_prompt_contrast_on_the_packaged_model(alpha_c, hf_smollm2)


def test_streamed_steps_cross_the_cluster(alpha_c: httpx.Client) -> None:
    """A worker publishes each decoding step on one node's connection; the gateway listens on another's."""
    request = {
        "prompt": "Name a river.",
        "preset": {"name": "prompt_contrast", "model": MODEL, "alpha": 0.5},
        "max_tokens": 6,
        "temperature": 0,
    }
    whole = alpha_c.post("/v1/decode/contrastive", json=request).json()
    steps = []
    with alpha_c.stream("POST", "/v1/decode/contrastive", json={**request, "stream": True}) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "step":
                steps.append(json.loads(line.removeprefix("data: "))["id"])
    assert steps == [step["id"] for step in whole["steps"]] and steps


async def test_a_notice_published_on_any_master_reaches_a_listener(redis_cluster: EmbeddedCluster) -> None:
    listener = connect_async(redis_cluster.url)
    # the failover policy is the asyncio client's own (a blocking Retry would be replaced by redis-py, with a warning)
    assert isinstance(listener.retry, AsyncRetry) and listener.retry.get_retries() == CLUSTER_RETRIES
    await listener.ping()  # as the gateway's listener does: the client learns the slot map first
    masters = redis_cluster.masters()
    async with listener.pubsub() as pubsub:
        await pubsub.subscribe(DONE_CHANNEL)
        for i, node in enumerate(masters):
            client = node.client()
            client.publish(DONE_CHANNEL, f"job-{i}")
            client.close()
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < len(masters) and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                got.append(message["data"])
    await listener.aclose()
    assert sorted(got) == [f"job-{i}".encode() for i in range(len(masters))]


def test_records_spread_over_the_masters_and_the_job_plane_is_one_slot(
    alpha_c: httpx.Client, redis_cluster: EmbeddedCluster
) -> None:
    salt = uuid.uuid4().hex[:8]
    ids = [alpha_c.post("/v1/score", json={"model": MODEL, "text": f"Record {i} of {salt}."}).json() for i in range(12)]
    holders = {redis_cluster.master_of(record_key("alpha", body["record_id"])).address for body in ids}
    assert len(holders) >= 2  # 12 records on one master of three: 3 * (1/3)^12, never
    plane = {redis_cluster.master_of(key).address for key in (jobs_stream(MODEL), job_outcome_key("x"))}
    assert len(plane) == 1


def test_a_job_entered_twice_is_answered_and_its_worker_lives_on(
    on_cluster: LocalService, redis_cluster: EmbeddedCluster
) -> None:
    """A gateway re-submits a job after a failover; the original entry may have survived it: two entries of one
    job, read together, give one outcome, both entries are settled, and the worker goes on."""
    client = connect(redis_cluster.url)
    card = ModelCard.model_validate_json(client.get(card_key(MODEL)) or b"")
    job_id = f"twice-{uuid.uuid4().hex[:8]}"
    job = ScoreJob(
        job_id=job_id, tenant="alpha", model=MODEL, fingerprint=card.fingerprint, record_id="0" * 32, token_ids=[-5, 7]
    )
    for _ in range(2):
        client.xadd(jobs_stream(MODEL), encode_job(job))  # type: ignore[arg-type]
    deadline = time.monotonic() + 120
    while (
        client.xlen(jobs_stream(MODEL)) or not client.exists(job_outcome_key(job_id))
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    outcome = json.loads(client.get(job_outcome_key(job_id)) or b"{}")
    assert outcome["error"]["code"] == "invalid_token_ids" and client.xlen(jobs_stream(MODEL)) == 0
    assert all(worker.poll() is None for worker in on_cluster.workers)
    client.close()


def _score_all(base_url: str, texts: list[str]) -> list[httpx.Response | Exception]:
    def one(text: str) -> httpx.Response | Exception:
        headers = {"Authorization": "Bearer key-alpha"}
        try:
            return httpx.post(f"{base_url}/v1/score", json={"model": MODEL, "text": text}, headers=headers, timeout=200)
        except httpx.HTTPError as exc:  # a hang would end here, and fail the test
            return exc

    with ThreadPoolExecutor(len(texts)) as pool:
        return list(pool.map(one, texts))


def test_a_master_killed_mid_jobs_fails_over_and_every_request_is_answered_once(
    on_cluster: LocalService, redis_cluster: EmbeddedCluster, alpha_c: httpx.Client
) -> None:
    """kill -9 the master of the job plane (streams, outcomes) while 12 scores are queued or running: its replica
    takes over; each request gets one answer, either the right numbers or a retryable 503 with its code and
    Retry-After; none hangs (the client's timeout would end it, and fail this test)."""
    salt = uuid.uuid4().hex[:8]
    texts = [f"The ferry left the harbour at dawn, trip {i} of {salt}, with {i + 3} passengers." for i in range(12)]
    victim = redis_cluster.master_of(jobs_stream(MODEL))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_score_all, on_cluster.base_url, texts)
        probe = connect(redis_cluster.url)
        deadline = time.monotonic() + 60
        while probe.xlen(jobs_stream(MODEL)) == 0 and not pending.done() and time.monotonic() < deadline:
            time.sleep(0.02)  # until jobs are in the stream
        probe.close()
        assert not pending.done(), "every score was answered before the kill: the failover was not exercised"
        victim.kill()
        answers = pending.result(timeout=260)
    redis_cluster.wait_healthy(60)
    assert len(redis_cluster.masters()) == 3  # the victim's replica serves its slots now

    answered = 0
    for text, answer in zip(texts, answers, strict=True):
        assert isinstance(answer, httpx.Response), f"{text!r}: no answer ({answer!r})"
        if answer.status_code == 200:
            answered += 1
            again = alpha_c.post("/v1/score", json={"model": MODEL, "text": text})
            assert again.status_code == 200, again.text
            first, second = answer.json(), again.json()
            assert [t["id"] for t in first["tokens"]] == [t["id"] for t in second["tokens"]]
            assert [t["logprob"] for t in first["tokens"]] == pytest.approx(
                [t["logprob"] for t in second["tokens"]], abs=1e-6
            )
        else:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "redis_unavailable" and answer.headers["Retry-After"]
    assert answered >= 1

    # the service is whole again: a new request is answered, and the done channel still wakes waiters
    body = alpha_c.post("/v1/score", json={"model": MODEL, "text": f"After the failover {salt}."})
    assert body.status_code == 200, body.text
    client = connect(redis_cluster.url)
    assert client.publish(DONE_CHANNEL, "nobody") >= 0
    client.close()


async def test_the_expiry_sweep_ends_durable_keys_on_every_master(redis_cluster: EmbeddedCluster) -> None:
    """Durable keys of many hash tags (so on several masters): each set's script runs on its own slot."""
    from app.platform.expiry import sweep
    from workers.contract.lifetimes import EXPIRY_SETS, announce, expiry_key, keep_until

    client = connect_async(redis_cluster.url)
    salt = uuid.uuid4().hex[:8]
    keys = [f"lp:test:{{sweep-{salt}-{i}}}:object" for i in range(12)]
    for i, key in enumerate(keys):  # the odd ones' deadlines pass at 2000, the others' at 4000
        pipe = client.pipeline(transaction=True)
        pipe.set(key, 1)
        keep_until(pipe, 1000.0 if i % 2 else 3000.0, key)
        await pipe.execute()
        await announce(client, key)
    await sweep(client, now=2000.0)
    left = [key for key in keys if await client.exists(key)]
    assert left == keys[::2]
    await sweep(client, now=4000.0)
    assert not [key for key in keys if await client.exists(key)]
    assert not [key for key in keys if await client.sismember(EXPIRY_SETS, expiry_key(key))]
    await client.aclose()
