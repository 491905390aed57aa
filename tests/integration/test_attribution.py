"""Attribution through the real service on a tiny Llama whose weights are set by hand so that one context token
alone decides the target: " dog" is likely exactly when " cat" appears anywhere before it (uniform attention
carries the presence of " cat" to the last position, the unembedding reads it). Both ReAGent and occlusion must
put the most importance on " cat"; occlusion is checked against a float64 recomputation with transformers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, _save_with_smollm2_tokenizer

TEXT = "The red bird saw a cat near the old dog"  # SmolLM2 tokens: The, red, bird, saw, a, cat, near, the, old, dog
KEY, TARGET = 2644, 2767  # " cat", " dog"
KEY_POSITION, TARGET_POSITION = 5, 9
PASS_LIMIT = 5000
TOKEN_LIMIT = 40_000  # passes x context tokens: 4,000 passes for the target's context of 10 tokens


def decisive_model() -> LlamaForCausalLM:
    """One layer, one head, queries zero (so attention is uniform over the prefix), no MLP. The value of " cat"
    (its embedding's dimension 1) lands in dimension 2 of every later position; only " dog" reads dimension 2,
    every other token reads the constant dimension 0."""
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        vocab_size=49152,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "norm" in name else 0.0)
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.embed_tokens.weight[KEY, 1] = 5.0
        attention = model.model.layers[0].self_attn
        attention.v_proj.weight[2, 1] = 20.0
        attention.o_proj.weight[2, 2] = 1.0
        model.lm_head.weight[:, 0] = 1.0  # every other token beats " dog" when " cat" is absent (no ties)
        model.lm_head.weight[TARGET] = 0.0
        model.lm_head.weight[TARGET, 2] = 5.0
    return model.eval()


STAND_IN = 42  # the token the stand-in model always finds most likely


def stand_in_model() -> LlamaForCausalLM:
    """A second model with the same tokenizer whose most likely next token is STAND_IN everywhere."""
    model = decisive_model()
    with torch.no_grad():
        model.lm_head.weight[STAND_IN, 0] = 2.0
        model.lm_head.weight[STAND_IN, 2] = 10.0  # above " dog" also after " cat"
    return model.eval()


@pytest.fixture(scope="module")
def decisive_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _save_with_smollm2_tokenizer(tmp_path_factory.mktemp("decisive") / "model", decisive_model())


@pytest.fixture(scope="module")
def client(decisive_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    stand_in = _save_with_smollm2_tokenizer(tmp_path_factory.mktemp("stand-in") / "model", stand_in_model())
    specs = [
        {"name": "tiny-decisive", "source": "hf", "path": decisive_path},
        {"name": "tiny-stand-in", "source": "hf", "path": stand_in},
    ]
    env = {
        "LOGPROBE_MODELS": json.dumps(specs),
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_WORKER_THREADS": "2",
        "LOGPROBE_MAX_ATTRIBUTION_PASSES": str(PASS_LIMIT),
        "LOGPROBE_MAX_ATTRIBUTION_TOKENS": str(TOKEN_LIMIT),
    }
    with (
        LocalService(env=env, log_dir=ARTIFACTS / "attribution") as service,
        httpx.Client(base_url=service.base_url, timeout=300) as http,
    ):
        yield http


def attribute(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"model": "tiny-decisive", "text": TEXT, "positions": [TARGET_POSITION], **fields}
    response = client.post("/v1/analysis/attribution", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "occlusion"},
        {"method": "reagent"},
        {"method": "reagent", "reagent": {"keep_top_n": 1, "stop_top_k": 1, "num_probes": 4}},
    ],
    ids=["occlusion", "reagent", "reagent-strict"],
)
def test_the_deciding_token_is_the_most_important(client: httpx.Client, fields: dict[str, Any]) -> None:
    body = attribute(client, **fields)
    assert [t["id"] for t in body["tokens"]][KEY_POSITION] == KEY
    (target,) = body["targets"]
    assert target["position"] == TARGET_POSITION and target["id"] == TARGET
    assert np.exp(target["logprob"]) > 0.99
    importance = np.asarray(target["importance"])
    assert importance.shape == (TARGET_POSITION,)
    assert int(np.argmax(importance)) == KEY_POSITION == target["top"][0]
    others = np.delete(importance, KEY_POSITION)
    if "reagent" in fields:  # keeping only the top token passes the stopping test only when it is " cat"
        assert importance[KEY_POSITION] > 0.5 and importance[KEY_POSITION] > 5 * others.max()
    if fields["method"] == "occlusion":  # leaving " cat" out takes nearly all of p(" dog") away
        assert importance[KEY_POSITION] > 0.99 and np.abs(others).max() < 1e-3
    assert target["passes"] <= body["max_passes"] and body["passes"] == target["passes"]
    if fields["method"] == "reagent":
        assert target["converged"] is True
        assert importance[0] == 0.0 and body["replacements"][0] is None  # token 0 is never replaced
        assert body["replacements"][KEY_POSITION]["id"] != KEY
        assert importance.sum() == pytest.approx(1.0)


def test_reagent_takes_its_stand_ins_from_a_second_model(client: httpx.Client) -> None:
    body = attribute(client, method="reagent", replacement_model="tiny-stand-in")
    assert [r["id"] for r in body["replacements"][1:]] == [STAND_IN] * (len(body["tokens"]) - 1)
    (target,) = body["targets"]
    assert int(np.argmax(target["importance"])) == KEY_POSITION and target["converged"] is True
    own = attribute(client, method="reagent")
    assert own["replacements"][1:] != body["replacements"][1:]
    unknown = client.post(
        "/v1/analysis/attribution",
        json={"model": "tiny-decisive", "text": TEXT, "positions": [TARGET_POSITION], "replacement_model": "nope"},
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_reagent_is_reproducible_with_a_seed(client: httpx.Client) -> None:
    fields = {"method": "reagent", "positions": [7, TARGET_POSITION], "max_passes": 400}
    first = attribute(client, seed=3, **fields)
    again = attribute(client, seed=3, **fields)
    other = attribute(client, seed=4, **fields)
    assert first["targets"] == again["targets"]
    assert first["targets"][1]["importance"] != other["targets"][1]["importance"]
    assert first["passes"] <= 400
    # a target's answer does not depend on the other targets named with it (its own random stream)
    alone = attribute(client, seed=3, method="reagent", positions=[TARGET_POSITION], max_passes=200)
    assert alone["targets"][0]["passes"] == first["targets"][1]["passes"]
    np.testing.assert_allclose(alone["targets"][0]["importance"], first["targets"][1]["importance"], atol=1e-6)


def test_occlusion_matches_a_float64_recomputation(client: httpx.Client, decisive_path: str) -> None:
    positions = [3, 7, TARGET_POSITION]
    body = attribute(client, method="occlusion", positions=positions)
    ids = [t["id"] for t in body["tokens"]]
    model = AutoModelForCausalLM.from_pretrained(Path(decisive_path)).double().eval()

    def p_last(context: list[int], target: int) -> float:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([context])).logits[0, -1]
        return float(torch.softmax(logits, -1)[target])

    assert body["passes"] == sum(t + 1 for t in positions)
    for target in body["targets"]:
        t = target["position"]
        whole = p_last(ids[:t], ids[t])
        expected = [whole - p_last(ids[:i] + ids[i + 1 : t], ids[t]) for i in range(t)]
        np.testing.assert_allclose(target["importance"], expected, atol=1e-5)
        assert target["logprob"] == pytest.approx(np.log(whole), abs=1e-4)
        assert target["converged"] is None


def test_a_stored_record_is_attributed_by_id(client: httpx.Client) -> None:
    scored = client.post("/v1/score", json={"model": "tiny-decisive", "text": TEXT}).json()
    by_id = client.post(
        "/v1/analysis/attribution",
        json={"record_id": scored["record_id"], "positions": [TARGET_POSITION], "method": "occlusion"},
    ).json()
    by_text = attribute(client, method="occlusion")
    assert by_id["record_id"] == by_text["record_id"] == scored["record_id"]
    assert by_id["targets"] == by_text["targets"]


def test_work_is_bounded_by_tokens_read_as_well_as_passes(client: httpx.Client) -> None:
    def occlusion(position: int, max_passes: int) -> httpx.Response:
        body = {"model": "tiny-decisive", "text": TEXT, "positions": [position], "method": "occlusion"}
        return client.post("/v1/analysis/attribution", json={**body, "max_passes": max_passes})

    assert occlusion(7, 4500).status_code == 200  # a context of 8 tokens: 5,000 passes (the pass limit)
    refused = occlusion(TARGET_POSITION, 4500)  # 10 tokens: 4,000 passes
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "max_passes_too_large"
    assert "at most 4000" in refused.json()["error"]["message"]
    assert occlusion(TARGET_POSITION, 4000).status_code == 200


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"positions": [1]}, "invalid_positions"),
        ({"positions": [10]}, "invalid_positions"),
        ({"positions": [9, 9]}, "invalid_positions"),
        ({"max_passes": PASS_LIMIT + 1}, "max_passes_too_large"),
        ({"method": "occlusion", "max_passes": 5}, "max_passes_too_small"),
        ({"method": "reagent", "max_passes": 20}, "max_passes_too_small"),
        ({"text": None}, "missing_input"),
    ],
)
def test_bad_requests_get_machine_codes(client: httpx.Client, fields: dict[str, Any], code: str) -> None:
    body = {"model": "tiny-decisive", "text": TEXT, "positions": [TARGET_POSITION], **fields}
    response = client.post("/v1/analysis/attribution", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
