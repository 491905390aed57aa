"""Calibrations: thresholds fitted on labelled texts (human plot summaries that ship in a package, machine
continuations SmolLM2 writes from their openings), then calibrated decisions in detect answers."""

from __future__ import annotations

import httpx
import pytest

from app.serving import corpus
from logprobe.client import Client
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


def test_calibrations_take_labelled_examples_as_heads_do(alpha: httpx.Client, labelled: list[dict[str, str]]) -> None:
    """One shape for labelled examples (#30 item 18): {text | messages | record_id, label 0 | 1}, 1 machine-written,
    as POST /v1/heads takes them; the older texts labelled human/machine fit the same thresholds."""
    methods = ["log_likelihood", "log_rank"]
    old = alpha.post("/v1/calibrations", json={"model": MODEL, "texts": labelled, "methods": methods})
    assert old.status_code == 200, old.text
    examples: list[dict[str, object]] = [{"text": t["text"], "label": int(t["label"] == "machine")} for t in labelled]
    first = alpha.post("/v1/score", json={"model": MODEL, "text": labelled[0]["text"]}).json()
    examples[0] = {"record_id": first["record_id"], "label": 0}  # a record stands in for its text
    new = alpha.post("/v1/calibrations", json={"model": MODEL, "examples": examples, "methods": methods})
    assert new.status_code == 200, new.text
    for name in methods:
        fitted, expected = new.json()["methods"][name], old.json()["methods"][name]
        assert fitted == pytest.approx(expected, rel=1e-9)
    with Client(str(alpha.base_url), api_key="key-alpha") as lp:  # the client sends either shape
        assert lp.calibrate(MODEL, examples, methods=methods).methods.keys() == set(methods)

    def refused(body: dict[str, object], code: str, param: str) -> None:
        response = alpha.post("/v1/calibrations", json={"model": MODEL, **body})
        assert response.status_code == 422, response.text
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)

    for label in ("machine", True, 1.0, 2):  # the code and the labels heads use
        refused({"examples": [{**e, "label": label} for e in examples]}, "invalid_label", "examples.0.label")
    refused({"examples": examples, "texts": labelled}, "missing_input", "examples")
    refused({}, "missing_input", "examples")
    refused({"examples": [{"label": 1}, *examples[1:]]}, "missing_input", "examples.0")
    refused({"examples": [{**e, "label": 0} for e in examples]}, "too_few_labels", "examples")
    unknown = {"model": MODEL, "examples": [{"record_id": "0" * 32, "label": 0}, *examples[1:]]}
    missing = alpha.post("/v1/calibrations", json=unknown)
    assert missing.status_code == 404, missing.text
    error = missing.json()["error"]
    assert (error["code"], error["param"]) == ("record_not_found", "examples.0.record_id")
