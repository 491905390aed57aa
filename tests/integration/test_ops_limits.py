"""What tenants create has a lifetime and a quota, and a batch gives up on an input after a few tries: against a
deployment of its own with low limits (one for the whole module: starting one costs a model load)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from app.batches.store import batch_key
from app.launcher.local_service import LocalService
from app.serving.calibrations import calibration_key
from app.serving.frequencies import table_key
from bench.texts import text_of_tokens
from tests.conftest import ARTIFACTS, DATA_DIR, METRICS_AUTH, METRICS_KEY, MODEL
from workers.contract.lifetimes import expiry_key

KEYS = {
    "key-alpha": "alpha",
    "key-beta": "beta",
    "key-gamma": "gamma",
    "key-delta": "delta",
    "key-epsilon": "epsilon",
    "key-zeta": "zeta",
    "key-eta": "eta",
    "key-theta": "theta",
    "key-iota": "iota",
    "key-kappa": "kappa",
}
TTL_S = 3600
SHARE = 3  # a tenant's jobs in the queue at once; the worker runs at most SHARE sequences at once too
ATTEMPTS = 3
TPM = 400


@pytest.fixture(scope="module")
def limited() -> Iterator[LocalService]:
    env = {
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps(KEYS),
        "LOGPROBE_METRICS_KEY": METRICS_KEY,
        "LOGPROBE_WORKER_THREADS": "1",
        "LOGPROBE_MAX_TABLES_PER_TENANT": "2",
        "LOGPROBE_MAX_CALIBRATIONS_PER_TENANT": "1",
        "LOGPROBE_MAX_ACTIVE_BATCHES_PER_TENANT": "2",
        "LOGPROBE_OBJECT_TTL_S": str(TTL_S),
        "LOGPROBE_BATCH_MAX_ATTEMPTS": str(ATTEMPTS),
        "LOGPROBE_BATCH_RETRY_MAX_DELAY_S": "0.2",
        "LOGPROBE_RATE_LIMIT_TPM": str(TPM),
        "LOGPROBE_TENANT_SHARE": str(SHARE),
        "LOGPROBE_WORKER_MAX_SEQUENCES": str(SHARE),
        "LOGPROBE_MAX_BUSY": "64",
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "limited") as service:
        yield service


def client(service: LocalService, key: str) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def client_async(service: LocalService, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=300)


def assert_quota(response: httpx.Response, param: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("quota_exceeded", param)


def assert_lifetime(r: redis.Redis, key: str) -> None:
    """A deadline within TTL_S, and no Redis TTL: eviction never takes it (workers/contract/lifetimes.py)."""
    deadline = r.zscore(expiry_key(key), key)
    assert r.ttl(key) == -1 and deadline is not None and 0 < deadline - time.time() <= TTL_S


def test_frequency_tables_have_a_lifetime_and_a_quota(limited: LocalService) -> None:
    r = redis.Redis.from_url(limited.redis_url)
    corpus = {"model": MODEL, "texts": ["the cat sat on the mat", "a dog ran"]}
    with client(limited, "key-alpha") as alpha, client(limited, "key-beta") as beta:
        first = alpha.put("/v1/frequency-tables/first", json=corpus).json()
        assert alpha.put("/v1/frequency-tables/second", json=corpus).status_code == 200
        assert_quota(alpha.put("/v1/frequency-tables/third", json=corpus), "frequency_tables")
        assert alpha.put("/v1/frequency-tables/first", json=corpus).status_code == 200  # replacing is not adding
        assert beta.put("/v1/frequency-tables/third", json=corpus).status_code == 200  # another key's quota
        assert_lifetime(r, table_key("alpha", first["tokenizer_id"], "first"))
        assert first["expires_at"] - first["created_at"] == TTL_S

        listed = alpha.get("/v1/frequency-tables").json()["data"]
        assert [(t["name"], t["packaged"]) for t in listed] in (
            [("default", True), ("first", False), ("second", False)],
            [("default", True), ("second", False), ("first", False)],  # created in the same second
        )
        protected = alpha.delete("/v1/frequency-tables/default")
        assert protected.status_code == 403 and protected.json()["error"]["code"] == "frequency_table_protected"

        assert alpha.delete("/v1/frequency-tables/second").status_code == 204
        assert alpha.put("/v1/frequency-tables/third", json=corpus).status_code == 200
        r.delete(table_key("alpha", first["tokenizer_id"], "first"))  # as an eviction would
        assert alpha.put("/v1/frequency-tables/fourth", json=corpus).status_code == 200
        names = {t["name"] for t in alpha.get("/v1/frequency-tables").json()["data"]}
        assert names == {"default", "third", "fourth"}


def test_calibrations_have_a_lifetime_and_a_quota(limited: LocalService) -> None:
    r = redis.Redis.from_url(limited.redis_url)
    texts = [{"text": f"Note {i} jotted down by hand.", "label": "human"} for i in range(2)]
    texts += [{"text": f"As an AI model I can help with {i}.", "label": "machine"} for i in range(2)]
    body = {"model": MODEL, "texts": texts, "methods": ["log_likelihood"]}
    with client(limited, "key-beta") as beta:
        created = beta.post("/v1/calibrations", json=body)
        assert created.status_code == 200, created.text
        cid = created.json()["calibration_id"]
        assert_lifetime(r, calibration_key("beta", cid))
        assert_quota(beta.post("/v1/calibrations", json=body), "calibrations")
        assert beta.delete(f"/v1/calibrations/{cid}").status_code == 204
        again = beta.post("/v1/calibrations", json=body)
        assert again.status_code == 200, again.text
        assert [c["calibration_id"] for c in beta.get("/v1/calibrations").json()["data"]] == [
            again.json()["calibration_id"]
        ]


def pause_workers(service: LocalService, sig: signal.Signals) -> None:
    for worker in service.workers:
        if worker.poll() is None:
            os.kill(worker.pid, sig)


def test_unfinished_batches_have_a_lifetime_and_a_quota(limited: LocalService) -> None:
    r = redis.Redis.from_url(limited.redis_url)
    salt = uuid.uuid4().hex[:8]
    pause_workers(limited, signal.SIGSTOP)  # nothing finishes while the quota is checked
    try:
        with client(limited, "key-delta") as delta:
            ids = []
            for i in range(2):
                created = delta.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": f"Wait {salt} {i}."}]})
                assert created.status_code == 200, created.text
                ids.append(created.json()["id"])
            for part in ("", "inputs"):
                assert_lifetime(r, batch_key("delta", ids[0], part))
            assert_quota(
                delta.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": "One too many."}]}),
                "unfinished_batches",
            )
            assert delta.post(f"/v1/batches/{ids[0]}/cancel").json()["status"] == "cancelled"
            third = delta.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": f"Room now {salt}."}]})
            assert third.status_code == 200, third.text
            for batch_id in (ids[1], third.json()["id"]):
                assert delta.delete(f"/v1/batches/{batch_id}").status_code == 204
            assert [b["id"] for b in delta.get("/v1/batches").json()["data"]] == [ids[0]]
    finally:
        pause_workers(limited, signal.SIGCONT)


def test_a_batch_input_that_keeps_failing_is_given_up_after_a_few_tries(limited: LocalService) -> None:
    """Over what is left of the tokens-per-minute budget every time: retried ATTEMPTS times, then its line says
    why; an input that alone needs more than the whole budget fails at once (no retry could pass)."""
    with client(limited, "key-gamma") as gamma:

        def encode(text: str) -> list[int]:
            return list(gamma.post("/tokenize", json={"model": MODEL, "prompt": text}).json()["tokens"])

        left = 60 - time.time() % 60
        if left < 20:  # the budget counts per calendar minute: the retries must fall in the one that was spent
            time.sleep(left + 0.5)
        spent = gamma.post(
            "/v1/score", json={"model": MODEL, "text": text_of_tokens(TPM // 2, encode, uuid.uuid4().hex)}
        )
        assert spent.status_code == 200, spent.text
        fits_alone = text_of_tokens(TPM - 20, encode, salt=uuid.uuid4().hex[:8])  # > what is left, <= the budget
        too_big = text_of_tokens(TPM + 100, encode, salt=uuid.uuid4().hex[:8])
        inputs = [{"text": fits_alone, "custom_id": "late"}, {"text": too_big, "custom_id": "big"}]
        batch = gamma.post("/v1/batches", json={"model": MODEL, "inputs": inputs})
        assert batch.status_code == 200, batch.text
        status: dict[str, Any] = {}
        for _ in range(600):
            status = gamma.get(f"/v1/batches/{batch.json()['id']}").json()
            if status["status"] == "completed":
                break
            time.sleep(0.2)
        assert (status["status"], status["completed"], status["failed"]) == ("completed", 0, 2)
        lines = {
            x["custom_id"]: x
            for x in map(json.loads, gamma.get(f"/v1/batches/{status['id']}/results").text.splitlines())
        }
        assert lines["late"]["error"]["code"] == "tokens_rate_limited"
        assert lines["late"]["error"]["attempts"] == ATTEMPTS
        assert lines["big"]["error"]["code"] == "request_exceeds_budget" and "attempts" not in lines["big"]["error"]
        direct = gamma.post("/v1/score", json={"model": MODEL, "text": too_big})
        assert direct.status_code == 422 and direct.json()["error"]["code"] == "request_exceeds_budget"
        assert "LOGPROBE_RATE_LIMIT_TPM" in direct.json()["error"]["message"]
        assert "Retry-After" not in direct.headers


def assert_exceeds_budget(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "request_exceeds_budget" and "LOGPROBE_RATE_LIMIT_TPM" in error["message"]
    assert "Retry-After" not in response.headers


def test_a_completion_whose_choices_together_exceed_the_budget_is_refused_before_any_runs(
    limited: LocalService,
) -> None:
    """Each choice alone fits the TPM budget, together they cannot: 422 `request_exceeds_budget` up front (not a 429
    after some choices ran, that no retry could pass), nothing counted: a request that fits passes at once."""
    prompt = f"Count the boats in the bay {uuid.uuid4().hex[:6]}:"
    each = TPM // 4 + 10  # prompt + max_tokens of one choice: four of them are more than TPM
    with client(limited, "key-iota") as iota:
        n_prompt = len(iota.post("/tokenize", json={"model": MODEL, "prompt": prompt}).json()["tokens"])
        max_tokens = each - n_prompt
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        assert_exceeds_budget(iota.post("/v1/completions", json={**body, "n": 1, "best_of": 4}))
        assert_exceeds_budget(iota.post("/v1/completions", json={**body, "prompt": [prompt] * 4}))
        chat = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        assert_exceeds_budget(iota.post("/v1/chat/completions", json={**chat, "n": 4}))
        fits = iota.post("/v1/completions", json={**body, "max_tokens": 4, "n": 2})
        assert fits.status_code == 200, fits.text  # nothing of the refused ones was counted


def test_a_calibration_whose_texts_together_exceed_the_budget_says_so(limited: LocalService) -> None:
    """A calibration scores its texts one by one, each within the budget: once they add up to more than a minute's
    budget it is a 422 `request_exceeds_budget`, not a 429 that no retry could pass."""
    with client(limited, "key-theta") as theta:

        def encode(text: str) -> list[int]:
            return list(theta.post("/tokenize", json={"model": MODEL, "prompt": text}).json()["tokens"])

        salt = uuid.uuid4().hex[:8]
        texts = [
            {"text": text_of_tokens(TPM // 4 + 20, encode, f"{salt}{i}"), "label": label}
            for i, label in enumerate(["human", "human", "machine", "machine"])
        ]
        assert_exceeds_budget(theta.post("/v1/calibrations", json={"model": MODEL, "texts": texts}))


def test_one_tenants_flood_of_requests_does_not_queue_ahead_of_anothers_request(limited: LocalService) -> None:
    """30 concurrent requests of one tenant: SHARE of them in the queue, the rest wait their turn in the gateway;
    another tenant's request goes straight into the queue, so it is answered long before the flood is."""
    flood, salt = 30, uuid.uuid4().hex[:8]

    async def waiting(client: httpx.AsyncClient) -> float:
        metrics = (await client.get("/metrics", headers=METRICS_AUTH)).text
        return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("logprobe_fair_share_"))

    async def run() -> tuple[httpx.Response, int, float]:
        async with (
            client_async(limited, "key-epsilon") as epsilon,
            client_async(limited, "key-zeta") as zeta,
        ):
            answered: list[int] = []

            async def one(i: int) -> None:
                response = await epsilon.post("/v1/score", json={"model": MODEL, "text": f"{salt} flood {i}."})
                assert response.status_code == 200, response.text
                answered.append(i)

            tasks = [asyncio.create_task(one(i)) for i in range(flood)]
            held_back, deadline = 0.0, time.monotonic() + 120  # a bound on a stuck gateway, not a speed check
            while held_back < flood - 2 * SHARE and time.monotonic() < deadline and len(answered) < SHARE:
                held_back = await waiting(zeta)
                await asyncio.sleep(0.02)
            other = await zeta.post("/v1/score", json={"model": MODEL, "text": f"{salt}: another tenant."})
            done_then = len(answered)
            await asyncio.gather(*tasks)
            return other, done_then, held_back

    other, done_then, held_back = asyncio.run(run())
    assert held_back >= flood - 2 * SHARE  # the flood waited in the gateway, not in the queue
    assert other.status_code == 200, other.text
    # Behind at most SHARE of the flood's jobs in the queue (and beside SHARE in the worker); in one shared queue
    # it would have come after all 30.
    assert done_then <= 4 * SHARE


def test_a_heads_examples_are_charged_to_the_token_budget_before_it_is_accepted(limited: LocalService) -> None:
    """The texts a head's preparation would score count against the tokens per minute when it is asked for: more
    than a whole minute's budget is refused at once, and no head is made."""
    with client(limited, "key-eta") as eta:
        salt = uuid.uuid4().hex
        long = [
            {"text": f"Example {i} ({salt}): " + "a long sentence about nothing much at all. " * 6, "label": i % 2}
            for i in range(10)
        ]  # ~10 x 70 tokens: over TPM
        short = [{"text": f"Short {i} ({salt}).", "label": i % 2} for i in range(10)]  # ~10 x 20 tokens
        refused = eta.post("/v1/heads", json={"model": MODEL, "name": "big", "kind": "los", "examples": long})
        assert refused.json()["error"]["code"] == "request_exceeds_budget", refused.text
        assert refused.status_code == 422 and "Retry-After" not in refused.headers
        assert eta.get("/v1/heads").json()["data"] == []
        few = eta.post("/v1/heads", json={"model": MODEL, "name": "small", "kind": "los", "examples": short})
        assert few.status_code == 202, few.text


def test_each_input_of_a_consistency_batch_is_charged_as_the_endpoint_charges_it(limited: LocalService) -> None:
    """A consistency batch's input whose samples alone need more than a minute's budget fails at once with the
    endpoint's 422 (not retried); the input beside it answers."""
    with client(limited, "key-kappa") as kappa:

        def encode(text: str) -> list[int]:
            return list(kappa.post("/tokenize", json={"model": MODEL, "prompt": text}).json()["tokens"])

        too_big = text_of_tokens(TPM // 2, encode, salt=uuid.uuid4().hex[:8])  # (prompt + 4) x 3 answers > TPM
        inputs = [{"text": f"Q: 2 + 2? ({uuid.uuid4().hex[:6]})\nA:", "custom_id": "fits"}, {"text": too_big}]
        options = {"n": 2, "max_tokens": 4, "seed": 1, "methods": ["lexical_similarity"]}
        batch = kappa.post("/v1/batches", json={"model": MODEL, "inputs": inputs, "consistency": options})
        assert batch.status_code == 200, batch.text
        status: dict[str, Any] = {}
        for _ in range(600):
            status = kappa.get(f"/v1/batches/{batch.json()['id']}").json()
            if status["status"] == "completed":
                break
            time.sleep(0.2)
        assert (status["status"], status["completed"], status["failed"]) == ("completed", 1, 1)
        fits, big = map(json.loads, kappa.get(f"/v1/batches/{status['id']}/results").text.splitlines())
        assert fits["error"] is None and len(fits["results"]["consistency"]["samples"]) == 2
        assert big["error"]["code"] == "request_exceeds_budget" and "attempts" not in big["error"]
        direct = kappa.post("/v1/analysis/consistency", json={"model": MODEL, "prompt": too_big, **options})
        assert direct.status_code == 422 and direct.json()["error"]["code"] == "request_exceeds_budget"
