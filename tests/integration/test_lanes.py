"""Heavy work shares the worker (workers.lanes), with a real Redis, the packaged model and real HTTP: while one
tenant trains a head at the largest sizes the service accepts and runs a long attribution, another tenant's
scoring is answered; a heavy job stops within a slice when its head is deleted or its client leaves (the worker's
log says so); a job whose deadline passed before it started is not run."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from bench.texts import PASSAGE
from tests.conftest import ARTIFACTS, MODEL
from workers.contract.cards import ModelCard
from workers.contract.jobs import JobOutcome, ScoreJob, encode_job
from workers.contract.keys import card_key, job_outcome_key, jobs_stream

WORKER_LOG = ARTIFACTS / "worker0.log"
LARGEST = {"max_epochs": 1000, "patience": 1000, "width": 1024, "gate_width": 1024, "batch_size": 1}


def stopped_lines(kind: str, log: Path = WORKER_LOG) -> list[str]:
    return re.findall(rf"job \w+ {kind} stopped after \d+ turns: .*", log.read_text(errors="replace"))


def wait_for(check: object, bound_s: float = 120) -> None:
    """Wait until check() is true; the bound only keeps a broken run from hanging (not a speed check)."""
    deadline = time.monotonic() + bound_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def head_status(client: httpx.Client, head_id: str) -> str:
    return str(client.get(f"/v1/heads/{head_id}").json()["status"])


def test_a_score_is_answered_while_another_tenant_trains_the_largest_head(
    alpha: httpx.Client, beta: httpx.Client
) -> None:
    salt = uuid.uuid4().hex[:8]
    examples = [
        {"text": f"{salt} example {i}: " + PASSAGE[: 120 + 9 * i], "label": i % 2} for i in range(10)
    ]  # ten examples, as in the report: alone, this head trains for minutes
    created = alpha.post(
        "/v1/heads",
        json={
            "model": MODEL,
            "name": f"largest_{salt}",
            "family": "detect",
            "kind": "pawn",
            "seed": 1,
            **{"examples": examples, "params": LARGEST},
        },
    )
    assert created.status_code == 202, created.text
    head_id = created.json()["id"]
    wait_for(lambda: head_status(alpha, head_id) == "training")
    before = len(stopped_lines("train_head"))

    text = f"{salt} " + PASSAGE[:480]  # about 100 tokens
    scored = beta.post("/v1/score", json={"model": MODEL, "text": text})
    assert scored.status_code == 200 and scored.json()["cached"] is False
    assert head_status(alpha, head_id) == "training"  # answered between the training's slices, not after it

    assert alpha.delete(f"/v1/heads/{head_id}").status_code in (200, 204)
    wait_for(lambda: len(stopped_lines("train_head")) > before)  # the training stopped at its next slice
    assert "the job was cancelled" in stopped_lines("train_head")[-1]


def test_an_attribution_whose_client_leaves_stops_and_others_are_answered_meanwhile(
    service: str, beta: httpx.Client
) -> None:
    salt = uuid.uuid4().hex[:8]
    text = f"{salt} " + PASSAGE * 4  # ~460 tokens: occlusion at position 300 takes minutes alone
    before = len(stopped_lines("attribution"))
    body = {"model": MODEL, "text": text, "positions": [300], "method": "occlusion", "max_passes": 5000}
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as alpha:
        assert alpha.post("/v1/score", json={"model": MODEL, "text": text}).status_code == 200  # its record first

    def leave_early() -> None:
        with (
            httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=4) as leaving,
            pytest.raises(httpx.TimeoutException),
        ):
            leaving.post("/v1/analysis/attribution", json=body)

    thread = threading.Thread(target=leave_early)
    thread.start()
    time.sleep(1.5)  # the attribution is under way
    scored = beta.post("/v1/score", json={"model": MODEL, "text": f"{salt} A short text beside it."})
    assert scored.status_code == 200
    thread.join()
    wait_for(lambda: len(stopped_lines("attribution")) > before)
    assert "the job was cancelled" in stopped_lines("attribution")[-1]


def test_a_job_past_its_deadline_is_not_started(redis_client: redis.Redis) -> None:
    card = ModelCard.model_validate_json(redis_client.get(card_key(MODEL)))  # type: ignore[arg-type]
    job = ScoreJob(
        job_id=uuid.uuid4().hex,
        tenant="alpha",
        model=MODEL,
        fingerprint=card.fingerprint,
        record_id=uuid.uuid4().hex,
        token_ids=[1, 2, 3, 4],
        deadline=time.time() - 1,
    )
    redis_client.xadd(jobs_stream(MODEL), encode_job(job))  # type: ignore[arg-type]
    wait_for(lambda: redis_client.exists(job_outcome_key(job.job_id)))
    outcome = JobOutcome.model_validate_json(redis_client.get(job_outcome_key(job.job_id)))  # type: ignore[arg-type]
    assert not outcome.ok and outcome.error is not None and outcome.error.code == "deadline_exceeded"
    assert outcome.error.status == 504
