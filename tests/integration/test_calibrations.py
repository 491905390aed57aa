"""Calibrations: thresholds fitted on labelled texts (human plot summaries that ship in a package, machine
continuations SmolLM2 writes from their openings), then calibrated decisions in detect answers."""

from __future__ import annotations

import httpx
import pytest

from app.serving import corpus
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def labelled(service: str) -> list[dict[str, str]]:
    texts = []
    with httpx.Client(base_url=service, headers={"Authorization": "Bearer key-alpha"}, timeout=300) as client:
        for plot in corpus.plots()[:6]:
            words = plot.split()
            opening = " ".join(words[:12])
            texts.append({"text": " ".join(words[:60]), "label": "human"})
            body = client.post(
                "/v1/generate", json={"model": MODEL, "prompt": opening, "temperature": 0, "max_tokens": 60}
            ).json()
            texts.append({"text": opening + body["text"], "label": "machine"})
    return texts


def test_calibration_fits_and_detect_decides(
    alpha: httpx.Client, beta: httpx.Client, labelled: list[dict[str, str]]
) -> None:
    response = alpha.post(
        "/v1/calibrations",
        json={
            "model": MODEL,
            "texts": labelled,
            "target_fpr": 0.2,
            "methods": ["log_likelihood", "log_rank", "fast_detectgpt"],
        },
    )
    assert response.status_code == 200, response.text
    calibration = response.json()
    fits = calibration["methods"]
    assert set(fits) == {"log_likelihood", "log_rank", "fast_detectgpt"}
    for fit in fits.values():
        assert fit["fpr"] <= 0.2 and fit["n_human"] == 6 and fit["n_machine"] == 6
    assert fits["log_likelihood"]["sign"] == 1.0 and fits["log_likelihood"]["auroc"] > 0.8  # greedy text is likely
    assert alpha.get(f"/v1/calibrations/{calibration['calibration_id']}").json() == calibration

    cid = calibration["calibration_id"]
    assert cid.startswith("cal_") and calibration["expires_at"] > calibration["created_at"]

    machine = next(t["text"] for t in labelled if t["label"] == "machine")
    plain = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": machine}).json()
    assert plain["decisions"] is None  # a calibration changes only the answers that name it
    detect = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": machine, "calibration_id": cid}).json()
    assert set(detect["decisions"]) == set(fits)
    decision = detect["decisions"]["log_likelihood"]
    assert decision["machine"] == (detect["sequence"]["log_likelihood"] > decision["threshold"])
    by_record = {"record_id": detect["record_id"], "calibration_id": cid}
    assert alpha.post("/v1/analysis/detect", json=by_record).json()["decisions"] == detect["decisions"]
    mismatch = alpha.post(
        "/v1/analysis/detect",
        json={"model": MODEL, "reference_model": MODEL, "text": machine, "calibration_id": cid},
    )
    assert mismatch.status_code == 422, mismatch.text
    assert mismatch.json()["error"]["code"] == "calibration_mismatch"
    assert mismatch.json()["error"]["param"] == "calibration_id"

    assert beta.get(f"/v1/calibrations/{cid}").status_code == 404
    for_beta = beta.post("/v1/analysis/detect", json={"model": MODEL, "text": machine, "calibration_id": cid})
    assert for_beta.status_code == 404 and for_beta.json()["error"]["code"] == "calibration_not_found"
    assert beta.delete(f"/v1/calibrations/{cid}").status_code == 404

    second = alpha.post("/v1/calibrations", json={"model": MODEL, "texts": labelled[:4], "methods": ["log_rank"]})
    assert second.status_code == 200, second.text
    listed = [c["calibration_id"] for c in alpha.get("/v1/calibrations").json()["data"]]
    assert listed[:2] == [second.json()["calibration_id"], cid]  # newest first, two for the same model
    assert cid not in [c["calibration_id"] for c in beta.get("/v1/calibrations").json()["data"]]
    assert alpha.delete(f"/v1/calibrations/{cid}").status_code == 204
    assert alpha.get(f"/v1/calibrations/{cid}").json()["error"]["code"] == "calibration_not_found"
    gone = alpha.post("/v1/analysis/detect", json={"model": MODEL, "text": machine, "calibration_id": cid})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "calibration_not_found"
    assert cid not in [c["calibration_id"] for c in alpha.get("/v1/calibrations").json()["data"]]


def test_calibration_needs_both_labels(alpha: httpx.Client) -> None:
    texts = [{"text": f"Text number {i}.", "label": "human"} for i in range(4)]
    response = alpha.post("/v1/calibrations", json={"model": MODEL, "texts": texts})
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_few_labels"
