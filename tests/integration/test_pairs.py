"""Two-model and two-context analyses through the real service, against float64 references from the models'
own logits: SmolLM2 with a tiny random Llama that shares its tokenizer. (Models that tokenize differently are
compared byte by byte: tests/integration/test_byte_pairs.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL, hf_logprobs
from workers.config import PACKAGED_MODELS
from workers.models import safetensors_dir

TEXT = "The river froze early that year, and the ferry stopped running before the first snow."
TOL = 1e-4  # the rows are float32 (the model's dtype): KL inherits their ~1e-5 relative rounding


@pytest.fixture(scope="module")
def pair_service(tiny_models: dict[str, str]) -> Iterator[httpx.Client]:
    """One worker hosting SmolLM2 and the tiny Llama, so it serves every pair's jobs."""
    models = [MODEL, {"name": "tiny-llama", "source": "hf", "path": tiny_models["tiny-llama"]}]
    env = {"LOGPROBE_MODELS": json.dumps(models), "LOGPROBE_DATA_DIR": str(DATA_DIR), "LOGPROBE_WORKER_THREADS": "2"}
    with (
        LocalService(env=env, log_dir=ARTIFACTS / "pairs") as service,
        httpx.Client(base_url=service.base_url, timeout=300) as client,
    ):
        yield client


def smollm2_dir() -> str:
    return str(safetensors_dir(PACKAGED_MODELS[MODEL], DATA_DIR)[0])


def analysis(client: httpx.Client, family: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_two_models_compare_and_detect(pair_service: httpx.Client, tiny_models: dict[str, str]) -> None:
    body = analysis(pair_service, "compare", model=MODEL, reference_model="tiny-llama", text=TEXT)
    scored = pair_service.post("/v1/score", json={"model": MODEL, "text": TEXT}).json()
    ids = [t["id"] for t in scored["tokens"]]
    logp = hf_logprobs(smollm2_dir(), ids)[:-1]
    logq = hf_logprobs(tiny_models["tiny-llama"], ids)[:-1]
    p, q = np.exp(logp), np.exp(logq)
    kl = (p * (logp - logq)).sum(axis=1)
    shift = np.array([1 + np.count_nonzero(b > b[np.argmax(a)]) for a, b in zip(logp, logq, strict=True)])
    assert body["record_id"] == scored["record_id"] and body["reference_model"] == "tiny-llama"
    np.testing.assert_allclose([t["values"]["kl"] for t in body["tokens"]], kl, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(
        [t["values"]["reverse_kl"] for t in body["tokens"]], (q * (logq - logp)).sum(axis=1), rtol=TOL, atol=TOL
    )
    np.testing.assert_array_equal([t["values"]["shift_rank"] for t in body["tokens"]], shift)
    assert body["sequence"]["mean_kl"] == pytest.approx(kl.mean(), rel=TOL)

    detect = analysis(
        pair_service,
        "detect",
        model=MODEL,
        reference_model="tiny-llama",
        text=TEXT,
        methods=["fast_detectgpt", "binoculars", "dna_detectllm"],
    )
    lp_x = logp[np.arange(len(ids) - 1), ids[1:]]
    mu = (q * logp).sum(axis=1)
    var = (q * logp**2).sum(axis=1) - mu**2
    assert detect["sequence"]["fast_detectgpt"] == pytest.approx((lp_x.sum() - mu.sum()) / np.sqrt(var.sum()), rel=TOL)
    assert detect["sequence"]["binoculars"] == pytest.approx(-lp_x.mean() / -mu.mean(), rel=TOL)
    dna = (-lp_x.mean() - logp.max(axis=1).mean()) / (2 * -mu.mean())  # DNA-DetectLLM, observer = reference_model
    assert detect["sequence"]["dna_detectllm"] == pytest.approx(dna, rel=TOL)


def test_context_confidence_gain(pair_service: httpx.Client) -> None:
    context = "Ferries in the north stop when rivers freeze."
    body = analysis(pair_service, "compare", model=MODEL, context=context, text=TEXT)
    alone = pair_service.post("/v1/score", json={"model": MODEL, "text": TEXT}).json()["tokens"]
    assert [t["id"] for t in body["tokens"]] == [t["id"] for t in alone[1:]]
    ctx_ids = pair_service.post("/v1/score", json={"model": MODEL, "text": context}).json()["tokens"]
    with_context = hf_logprobs(smollm2_dir(), [t["id"] for t in ctx_ids] + [t["id"] for t in alone])
    entropy_with = -(np.exp(with_context) * with_context).sum(axis=1)[len(ctx_ids) : -1]
    gains = [t["values"]["confidence_gain"] for t in body["tokens"]]
    np.testing.assert_allclose(gains, np.array([t["entropy"] for t in alone[1:]]) - entropy_with, atol=1e-4)
    assert body["sequence"]["mean_confidence_gain"] == pytest.approx(np.mean(gains), abs=1e-9)


def test_drift_per_turn(pair_service: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "A pear."},
    ]
    body = analysis(
        pair_service, "compare", model=MODEL, reference_model="tiny-llama", messages=messages, methods=["drift", "kl"]
    )
    per_turn = body["details"]["drift.per_turn"]
    assert len(per_turn) == len(messages)  # the template's default system prompt belongs to the first turn
    assert body["sequence"]["drift.mean"] == pytest.approx(np.mean(per_turn))


@pytest.mark.parametrize(
    ("family", "body", "status", "code"),
    [
        ("compare", {"model": MODEL, "text": TEXT}, 422, "reference_required"),
        ("detect", {"model": MODEL, "text": TEXT, "methods": ["binoculars"]}, 422, "reference_required"),
        (
            "compare",
            {"model": MODEL, "reference_model": "tiny-llama", "text": TEXT, "methods": ["drift"]},
            422,
            "reference_required",
        ),
        ("uncertainty", {"model": MODEL, "reference_model": "tiny-llama", "text": TEXT}, 422, "invalid_request"),
    ],
)
def test_pair_errors(pair_service: httpx.Client, family: str, body: dict[str, Any], status: int, code: str) -> None:
    response = pair_service.post(f"/v1/analysis/{family}", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def kl_rows(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    return (np.exp(logp) * (logp - logq)).sum(axis=1)  # type: ignore[no-any-return]


def entropy_rows(logp: np.ndarray) -> np.ndarray:
    return -(np.exp(logp) * logp).sum(axis=1)  # type: ignore[no-any-return]


def test_paired_analyses_take_a_record_id(pair_service: httpx.Client, tiny_models: dict[str, str]) -> None:
    generated = pair_service.post(
        "/v1/generate", json={"model": MODEL, "prompt": "Count: 1, 2, 3,", "temperature": 0, "max_tokens": 8}
    ).json()
    rid, n_prompt = generated["record_id"], generated["usage"]["prompt_tokens"]
    ids = [t["id"] for t in pair_service.get(f"/v1/records/{rid}").json()["tokens"]]
    logp = hf_logprobs(smollm2_dir(), ids)[:-1]
    logq = hf_logprobs(tiny_models["tiny-llama"], ids)[:-1]

    body = analysis(pair_service, "compare", record_id=rid, reference_model="tiny-llama", span="completion")
    assert body["record_id"] == rid and body["model"] == MODEL and body["reference_model"] == "tiny-llama"
    assert [t["position"] for t in body["tokens"]] == list(range(n_prompt, len(ids)))
    assert [t["id"] for t in body["tokens"]] == [t["id"] for t in generated["tokens"]]
    kl = kl_rows(logp, logq)[n_prompt - 1 :]
    np.testing.assert_allclose([t["values"]["kl"] for t in body["tokens"]], kl, rtol=TOL, atol=TOL)
    prompt = analysis(pair_service, "compare", record_id=rid, reference_model="tiny-llama", span="prompt")
    assert prompt["n_positions"] == n_prompt - 1 and prompt["reference_record_id"] == body["reference_record_id"]

    detect = analysis(
        pair_service, "detect", record_id=rid, reference_model="tiny-llama", methods=["fast_detectgpt", "binoculars"]
    )
    lp_x = logp[np.arange(len(ids) - 1), ids[1:]]
    q = np.exp(logq)
    mu = (q * logp).sum(axis=1)
    var = (q * logp**2).sum(axis=1) - mu**2
    assert detect["sequence"]["fast_detectgpt"] == pytest.approx((lp_x.sum() - mu.sum()) / np.sqrt(var.sum()), rel=TOL)
    assert detect["sequence"]["binoculars"] == pytest.approx(-lp_x.mean() / -mu.mean(), rel=TOL)

    context = "Counting goes up by one."
    gained = analysis(pair_service, "compare", record_id=rid, context=context, span="completion")
    ctx_ids = pair_service.post("/v1/score", json={"model": MODEL, "text": context}).json()["tokens"]
    with_context = hf_logprobs(smollm2_dir(), [t["id"] for t in ctx_ids] + ids)[len(ctx_ids) : -1]
    expected = (entropy_rows(logp) - entropy_rows(with_context))[n_prompt - 1 :]
    np.testing.assert_allclose([t["values"]["confidence_gain"] for t in gained["tokens"]], expected, atol=1e-4)
    assert gained["record_id"] != rid and gained["reference_record_id"] == rid  # q is the record on its own


def test_openai_answers_record_ids_are_ready_for_paired_analyses(pair_service: httpx.Client) -> None:
    answer = pair_service.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Name a river."}], "max_tokens": 6},
    ).json()
    body = analysis(
        pair_service, "compare", record_id=answer["record_id"], reference_model="tiny-llama", span="completion"
    )
    assert body["n_positions"] == answer["usage"]["completion_tokens"]
    assert all(t["values"]["kl"] > -1e-6 for t in body["tokens"])  # KL >= 0, up to float32 rounding


def test_drift_turns_match_the_chat_templates_own_boundaries(
    pair_service: httpx.Client, tiny_models: dict[str, str]
) -> None:
    from transformers import AutoTokenizer

    messages = [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "Another one, please?"},
        {"role": "assistant", "content": "A pear, ripe and sweet."},
    ]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    ends = [len(tokenizer.apply_chat_template(messages[: i + 1], return_dict=False)) for i in range(len(messages))]
    ids = tokenizer.apply_chat_template(messages, return_dict=False)
    kl = kl_rows(hf_logprobs(smollm2_dir(), ids)[:-1], hf_logprobs(tiny_models["tiny-llama"], ids)[:-1])
    starts = [1, *ends[:-1]]  # position 0 predicts nothing
    per_turn = [kl[a - 1 : b - 1].mean() for a, b in zip(starts, ends, strict=True)]
    assert all(b - a >= 3 for a, b in zip(starts, ends, strict=True))

    body = analysis(
        pair_service, "compare", model=MODEL, reference_model="tiny-llama", messages=messages, methods=["drift"]
    )
    np.testing.assert_allclose(body["details"]["drift.per_turn"], per_turn, rtol=TOL, atol=TOL)
    assert body["sequence"]["drift.mean"] == pytest.approx(np.mean(per_turn), rel=TOL)

    header = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=False)
    last = analysis(
        pair_service,
        "compare",
        model=MODEL,
        reference_model="tiny-llama",
        messages=messages,
        methods=["kl"],
        span="last_turn",
    )
    assert [t["position"] for t in last["tokens"]] == list(range(len(header), len(ids) - 1))  # <|im_end|>, not "\n"
    np.testing.assert_allclose(
        [t["values"]["kl"] for t in last["tokens"]], kl[len(header) - 1 : -1], rtol=TOL, atol=TOL
    )


@pytest.mark.parametrize(
    ("body", "param", "never_asks"),
    [
        ({"reference_model": "tiny-llama", "text": TEXT}, "messages", "reference_model"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "reference_model", "messages"),
        ({"context": "Before.", "text": TEXT}, "context", "give a `context`"),
    ],
)
def test_the_drift_error_asks_for_what_is_missing(
    pair_service: httpx.Client, body: dict[str, Any], param: str, never_asks: str
) -> None:
    response = pair_service.post("/v1/analysis/compare", json={"model": MODEL, "methods": ["drift"], **body})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("reference_required", param)
    assert never_asks not in error["message"]


def test_pair_spans_are_checked_before_any_cross_job(pair_service: httpx.Client) -> None:
    for span in ([1, 2, 2], [1] * 10_000):
        response = pair_service.post(
            "/v1/analysis/compare", json={"model": MODEL, "reference_model": "tiny-llama", "text": TEXT, "span": span}
        )
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_span"
    chat = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}]
    body = {"model": MODEL, "reference_model": "tiny-llama", "messages": chat, "methods": ["drift"], "span": [5, 3, 4]}
    unordered = pair_service.post("/v1/analysis/compare", json=body)
    assert unordered.status_code == 422 and unordered.json()["error"]["param"] == "span"
