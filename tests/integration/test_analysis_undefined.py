"""Undefined values through the real service: null with a reason in answers, in batch lines and in
calibrations (which fit on the texts where the value is defined). SmolLM2 ranks every token of RANK_ONE first
(checked here, from the answer's own per-token ranks), so LRR's denominator, the sum of log-ranks, is 0."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL

RANK_ONE = ["The-the-world-is", "The-the-world"]  # SmolLM2's own greedy continuations of "The"
HUMAN = [
    "Fishermen mended their nets by the old sea wall before the storm.",
    "The keeper climbed ninety-one steps every evening to light the lamp.",
    "A narrow-gauge line was built, with three tunnels and a viaduct.",
]
MACHINE = [
    "Once upon a time, the city of Nova Haven",
    "The United States of America, which is a sovereign",
    "Monday, Tuesday, Wednesday, and Thursday) to",
]


def post(client: httpx.Client, family: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_lrr_is_null_with_a_reason_when_every_token_ranks_first(alpha: httpx.Client) -> None:
    ranks = post(alpha, "uncertainty", model=MODEL, text=RANK_ONE[0], methods=["rank"])
    assert [t["values"]["rank"] for t in ranks["tokens"]] == [1] * ranks["n_positions"]
    assert ranks["undefined"] == {}
    detect = post(alpha, "detect", model=MODEL, text=RANK_ONE[0], methods=["lrr", "log_rank", "log_likelihood"])
    assert detect["sequence"]["lrr"] is None and detect["sequence"]["log_rank"] == 0.0
    assert detect["undefined"] == {"lrr": "every token has rank 1, so the sum of log-ranks (the denominator) is 0"}
    defined = post(alpha, "detect", model=MODEL, text=HUMAN[0], methods=["lrr"])
    assert defined["sequence"]["lrr"] > 0 and defined["undefined"] == {}


def test_batch_lines_carry_the_null_and_its_reason(alpha: httpx.Client) -> None:
    inputs = [{"text": RANK_ONE[0], "custom_id": "rank-one"}, {"text": HUMAN[0], "custom_id": "human"}]
    created = alpha.post(
        "/v1/batches",
        json={"model": MODEL, "inputs": inputs, "analyses": [{"family": "detect", "methods": ["lrr"]}]},
    )
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    while alpha.get(f"/v1/batches/{batch_id}").json()["status"] not in ("completed", "cancelled"):
        time.sleep(0.3)
    results = alpha.get(f"/v1/batches/{batch_id}/results")
    lines = {line["custom_id"]: line for line in map(json.loads, results.text.splitlines())}
    rank_one, human = lines["rank-one"]["results"]["detect"], lines["human"]["results"]["detect"]
    assert rank_one["sequence"] == {"lrr": None} and "rank 1" in rank_one["undefined"]["lrr"]
    assert human["sequence"]["lrr"] > 0 and human["undefined"] == {}


def test_calibrations_fit_on_the_texts_where_a_value_is_defined(alpha: httpx.Client) -> None:
    texts = [{"text": t, "label": "human"} for t in [*RANK_ONE, *HUMAN]]
    texts += [{"text": t, "label": "machine"} for t in MACHINE]
    response = alpha.post(
        "/v1/calibrations",
        json={"model": MODEL, "texts": texts, "methods": ["lrr", "log_likelihood"], "target_fpr": 0.34},
    )
    assert response.status_code == 200, response.text
    calibration = response.json()
    fits = calibration["methods"]
    assert (fits["lrr"]["n_human"], fits["lrr"]["n_machine"]) == (len(HUMAN), len(MACHINE))
    assert (fits["log_likelihood"]["n_human"], fits["log_likelihood"]["n_machine"]) == (len(texts) - 3, len(MACHINE))

    body = {"model": MODEL, "text": RANK_ONE[0], "calibration_id": calibration["calibration_id"]}
    decided = post(alpha, "detect", **body)
    assert set(decided["decisions"]) == {"log_likelihood"}  # no decision from an undefined score
    decision = decided["decisions"]["log_likelihood"]
    fit = fits["log_likelihood"]
    assert decision["machine"] == (fit["sign"] * decided["sequence"]["log_likelihood"] > fit["threshold"])
    assert post(alpha, "detect", model=MODEL, text=RANK_ONE[0])["decisions"] is None  # none named, none given


@pytest.mark.parametrize("text", RANK_ONE)
def test_rank_one_texts_stay_defined_elsewhere(alpha: httpx.Client, text: str) -> None:
    body = post(alpha, "membership", model=MODEL, text=text, methods=["min_k", "min_k_plus_plus"])
    assert all(v is not None for v in body["sequence"].values()) and body["undefined"] == {}
