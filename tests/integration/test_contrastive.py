"""Contrastive decoding through the real service on tiny random models that share SmolLM2's tokenizer: a
"base", an "aligned" copy with perturbed weights, and a small third model. Every step's combined distribution
is checked against a float64 reference computed from the models' own full logits (no KV cache)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import scipy.special
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, MODEL, SMALL, _save_with_smollm2_tokenizer

PROMPT = "Write one sentence about rivers."
TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_trio(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("trio")
    aligned = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in aligned.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.manual_seed(2)
    return {
        "tiny-base": tiny_models["tiny-llama"],
        "tiny-aligned": _save_with_smollm2_tokenizer(root / "aligned", aligned),
        "tiny-small": _save_with_smollm2_tokenizer(root / "small", LlamaForCausalLM(LlamaConfig(**SMALL))),
    }


@pytest.fixture(scope="module")
def trio_service(tiny_trio: dict[str, str]) -> Iterator[httpx.Client]:
    specs = [{"name": name, "source": "hf", "path": path} for name, path in tiny_trio.items()]
    env = {"LOGPROBE_MODELS": json.dumps(specs), "LOGPROBE_DATA_DIR": str(DATA_DIR), "LOGPROBE_WORKER_THREADS": "2"}
    with (
        LocalService(env=env, log_dir=ARTIFACTS / "trio") as service,
        httpx.Client(base_url=service.base_url, timeout=300) as client,
    ):
        yield client


class Reference:
    """Each view's log-probabilities from a full forward pass of its model, in float64."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.models = {name: AutoModelForCausalLM.from_pretrained(path).eval() for name, path in paths.items()}
        self.tokenizer = AutoTokenizer.from_pretrained(next(iter(paths.values())))

    def prefix(self, view: dict[str, Any]) -> list[int]:
        body = PROMPT if view.get("context") is None else f"{view['context']}\n\n{PROMPT}"
        if view["template"] == "raw":
            return list(self.tokenizer(body).input_ids)
        messages = [{"role": "user", "content": body}]
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )

    def logprobs(self, model: str, ids: list[int], temperature: float) -> np.ndarray:
        with torch.inference_mode():
            logits = self.models[model](input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
        return logits / temperature - scipy.special.logsumexp(logits / temperature)

    def combined(
        self, views: list[dict[str, Any]], completion: list[int], alpha: float | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        per_view = [self.logprobs(v["model"], self.prefix(v) + completion, v["temperature"]) for v in views]
        score = sum(v["weight"] * lp for v, lp in zip(views, per_view, strict=True))
        if alpha is not None:
            score = np.where(per_view[0] < math.log(alpha) + per_view[0].max(), -np.inf, score)
        return score - scipy.special.logsumexp(score), per_view


@pytest.fixture(scope="module")
def reference(tiny_trio: dict[str, str]) -> Reference:
    return Reference(tiny_trio)


PRESETS = [
    ({"name": "ed", "base": "tiny-base", "aligned": "tiny-aligned", "alpha": 0.6}, None),
    ({"name": "cd", "expert": "tiny-base", "amateur": "tiny-small", "alpha": 0.1, "amateur_temperature": 0.5}, 0.1),
    ({"name": "cad", "model": "tiny-base", "context": "Rivers run to the sea.", "alpha": 0.5}, None),
    ({"name": "proxy", "base": "tiny-base", "tuned": "tiny-aligned", "small_base": "tiny-small", "lambda": 0.8}, None),
]


@pytest.mark.parametrize(("preset", "plausibility"), PRESETS, ids=[p["name"] for p, _ in PRESETS])
def test_every_step_matches_the_float64_reference(
    trio_service: httpx.Client, reference: Reference, preset: dict[str, Any], plausibility: float | None
) -> None:
    response = trio_service.post(
        "/v1/decode/contrastive",
        json={"prompt": PROMPT, "preset": preset, "max_tokens": 6, "temperature": 0, "top_logprobs": 20},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    views = body["views"]
    completion: list[int] = []
    for step in body["steps"]:
        combined, per_view = reference.combined(views, completion, plausibility)
        assert step["id"] == int(np.argmax(combined))  # greedy over the combined distribution
        top = [t["logprob"] for t in step["top_logprobs"]]
        np.testing.assert_allclose(top, np.sort(combined[np.isfinite(combined)])[::-1][: len(top)], atol=TOL)
        for view_score, lp in zip(step["views"], per_view, strict=True):
            assert view_score["logprob"] == pytest.approx(lp[step["id"]], abs=TOL)
            assert view_score["rank"] == 1 + int(np.sum(lp > lp[step["id"]]))
        completion.append(step["id"])


def test_concurrent_decodings_equal_each_decoded_alone(trio_service: httpx.Client) -> None:
    """Decodings read together run side by side, every view's stream of one model a row of that model's batch
    whatever request it belongs to (rows of other lengths join and leave between steps): each answer, its steps
    and its record are what the same request gets alone."""
    requests = [
        {
            "prompt": f"{PROMPT} Number {i}." + " Slowly." * i,
            "preset": preset,
            "max_tokens": 12 + 2 * i,
            "temperature": 1.0,
            "seed": i,
            "top_logprobs": 5,
            **({"stop": ["e"]} if i == 5 else {}),
        }
        for i, (preset, _) in enumerate(PRESETS * 2)
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda body: trio_service.post("/v1/decode/contrastive", json=body), requests))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    alone = [trio_service.post("/v1/decode/contrastive", json=body).json() for body in requests]
    for together, single in zip([r.json() for r in responses], alone, strict=True):
        assert [s["id"] for s in together["steps"]] == [s["id"] for s in single["steps"]]
        assert (together["text"], together["record_id"]) == (single["text"], single["record_id"])
        for a, b in zip(together["steps"], single["steps"], strict=True):
            assert [v["logprob"] for v in a["views"]] == pytest.approx([v["logprob"] for v in b["views"]], abs=TOL)
            assert [t["logprob"] for t in a["top_logprobs"]] == pytest.approx(
                [t["logprob"] for t in b["top_logprobs"]], abs=TOL
            )


def test_ed_with_alpha_zero_is_the_base_models_greedy_output(trio_service: httpx.Client) -> None:
    ed = trio_service.post(
        "/v1/decode/contrastive",
        json={
            "prompt": PROMPT,
            "preset": {"name": "ed", "base": "tiny-base", "aligned": "tiny-aligned", "alpha": 0},
            "max_tokens": 12,
            "temperature": 0,
        },
    ).json()
    base = trio_service.post(
        "/v1/generate", json={"model": "tiny-base", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    ).json()
    assert [s["id"] for s in ed["steps"]] == [t["id"] for t in base["tokens"]]
    assert ed["text"] == base["text"] and ed["record_id"] == base["record_id"]


def test_seeded_sampling_is_reproducible_and_streams(trio_service: httpx.Client) -> None:
    request = {
        "prompt": PROMPT,
        "preset": {"name": "ed", "base": "tiny-base", "aligned": "tiny-aligned"},
        "max_tokens": 10,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 7,
    }
    first = trio_service.post("/v1/decode/contrastive", json=request).json()
    second = trio_service.post("/v1/decode/contrastive", json=request).json()
    assert first["steps"] == second["steps"] and first["text"] == second["text"]
    events = []
    with trio_service.stream("POST", "/v1/decode/contrastive", json={**request, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    assert [e for e, _ in events] == ["step"] * len(first["steps"]) + ["done"]
    assert [d["id"] for e, d in events if e == "step"] == [s["id"] for s in first["steps"]]
    assert events[-1][1]["text"] == first["text"] and events[-1][1]["record_id"] == first["record_id"]
    record = trio_service.get(f"/v1/records/{first['record_id']}").json()
    assert record["kind"] == "generate" and record["model"] == "tiny-base"


def test_prompt_contrast_on_the_packaged_model(alpha: httpx.Client, hf_smollm2: tuple[Any, Any]) -> None:
    """The embedded default's preset: SmolLM2 with its chat template against the bare prompt, every greedy step
    checked against transformers' own logits: (1 + a) log p(chat) - a log p(raw), in float64."""
    a, prompt = 0.5, "Name a colour."
    body = alpha.post(
        "/v1/decode/contrastive",
        json={
            "prompt": prompt,
            "preset": {"name": "prompt_contrast", "model": MODEL, "alpha": a},
            "max_tokens": 8,
            "temperature": 0,
            "top_logprobs": 3,
        },
    ).json()
    assert [v["template"] for v in body["views"]] == ["chat", "raw"]
    assert len(body["steps"]) > 0
    model, tokenizer = hf_smollm2
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
    )
    raw = tokenizer(prompt).input_ids
    done: list[int] = []
    for step in body["steps"]:
        with torch.inference_mode():
            views = [
                torch.log_softmax(model(input_ids=torch.tensor([prefix + done])).logits[0, -1].double(), -1)
                for prefix in (list(chat), list(raw))
            ]
        combined = torch.log_softmax((1 + a) * views[0] - a * views[1], -1)
        assert step["id"] == int(combined.argmax())
        assert step["top_logprobs"][0]["logprob"] == pytest.approx(float(combined.max()), abs=1e-4)
        for got, logp in zip(step["views"], views, strict=True):
            assert got["logprob"] == pytest.approx(float(logp[step["id"]]), abs=1e-4)
            assert got["rank"] == int((logp > logp[step["id"]]).sum()) + 1
        done.append(step["id"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": PROMPT}, "missing_input"),
        ({"prompt": PROMPT, "preset": {"name": "ed", "base": "tiny-base"}}, "invalid_preset"),
        ({"prompt": PROMPT, "views": [{"model": "tiny-base"}] * 9}, "too_many_views"),
        ({"prompt": PROMPT, "views": [{"model": "tiny-base"}], "record_view": 3}, "invalid_view"),
        ({"prompt": PROMPT, "views": [{"model": "tiny-base"}], "max_tokens": 100000}, "max_tokens_too_large"),
    ],
)
def test_decode_errors(trio_service: httpx.Client, body: dict[str, Any], code: str) -> None:
    response = trio_service.post("/v1/decode/contrastive", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


def test_unknown_view_model_is_404(trio_service: httpx.Client) -> None:
    response = trio_service.post(
        "/v1/decode/contrastive", json={"prompt": PROMPT, "views": [{"model": "tiny-base"}, {"model": "no-such"}]}
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


EXAMPLES = (
    "The Nile runs north to the sea.\nThe Rhine runs through Basel.\n"  # USCD's standard prompt = examples + task
)


def uscd_step(reference: Reference, completion: list[int], a: float, threshold: float) -> tuple[np.ndarray, bool]:
    """USCD in float64 from full forwards: view 0 (standard prompt) alone where the standard deviation of its
    probabilities exceeds the threshold, else log(p_std - a p_lame) over tokens with p_std >= (2/3) mean p_std."""
    standard, lame = (
        reference.logprobs("tiny-base", list(reference.tokenizer(text).input_ids) + completion, 1.0)
        for text in (EXAMPLES + PROMPT, PROMPT)
    )
    p_std, p_lame = np.exp(standard), np.exp(lame)
    if p_std.std(ddof=1) > threshold:
        return standard, False
    mix = p_std - a * p_lame
    keep = (p_std >= (2 / 3) * p_std.mean()) & (mix > 0)
    score = np.where(keep, np.log(np.where(keep, mix, 1.0)), -np.inf)
    return score - scipy.special.logsumexp(score[keep]), True


def uscd_request(threshold: float, **extra: Any) -> dict[str, Any]:
    preset = {"name": "uscd", "model": "tiny-base", "lame_prompt": PROMPT, "alpha": 0.7, "threshold": threshold}
    return {
        "prompt": EXAMPLES + PROMPT,
        "preset": preset,
        "max_tokens": 8,
        "temperature": 0,
        "top_logprobs": 5,
        **extra,
    }


def test_uscd_contrasts_only_uncertain_steps_and_matches_the_float64_reference(
    trio_service: httpx.Client, reference: Reference
) -> None:
    always = trio_service.post("/v1/decode/contrastive", json=uscd_request(1.0)).json()
    assert all(step["contrasted"] for step in always["steps"])
    # a threshold between the standard view's spreads along that path, so that some steps are contrasted and some not
    spreads, done = [], []
    for step in always["steps"]:
        standard = reference.logprobs("tiny-base", list(reference.tokenizer(EXAMPLES + PROMPT).input_ids) + done, 1.0)
        spreads.append(float(np.exp(standard).std(ddof=1)))
        done.append(step["id"])
    middle = len(spreads) // 2
    threshold = float(np.mean(sorted(spreads)[middle - 1 : middle + 1]))
    for body in (always, trio_service.post("/v1/decode/contrastive", json=uscd_request(threshold)).json()):
        cut = 1.0 if body is always else threshold
        assert [v["template"] for v in body["views"]] == ["raw", "raw"] and body["views"][1]["prompt"] == PROMPT
        completion: list[int] = []
        for step in body["steps"]:
            combined, contrasted = uscd_step(reference, completion, 0.7, cut)
            assert step["contrasted"] is contrasted
            assert step["id"] == int(np.argmax(combined))
            top = [t["logprob"] for t in step["top_logprobs"]]
            np.testing.assert_allclose(top, np.sort(combined[np.isfinite(combined)])[::-1][: len(top)], atol=TOL)
            completion.append(step["id"])
    mixed = [step["contrasted"] for step in body["steps"]]
    assert True in mixed and False in mixed
    # the streamed steps say the same
    with trio_service.stream("POST", "/v1/decode/contrastive", json=uscd_request(threshold, stream=True)) as response:
        streamed = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")][:-1]
    assert [s["contrasted"] for s in streamed] == mixed


@pytest.mark.parametrize(
    ("preset", "fragment"),
    [
        ({"name": "uscd", "model": "tiny-base"}, "lame_prompt"),
        ({"name": "uscd", "model": "tiny-base", "lame_prompt": "x", "uncertainty": "top1"}, "threshold"),
    ],
)
def test_uscd_errors(trio_service: httpx.Client, preset: dict[str, Any], fragment: str) -> None:
    response = trio_service.post("/v1/decode/contrastive", json={"prompt": PROMPT, "preset": preset})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_preset" and fragment in response.json()["error"]["message"]
