"""Storage modes on tiny random models that the test builds: exact hidden states (with and without final
logit soft-capping), opt-in lossy float16, and the full-rows fallback for a model whose logits are not W·h
(Falcon-H1 multiplies them by an `lm_head_multiplier` the unembedding does not model; Cohere's `logit_scale` it
does), all served from local HF folders through the real service."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from transformers import AutoModelForCausalLM

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR, hf_logprobs

TEXT = "Tiny random models still give every position a full distribution."


@pytest.fixture(scope="module")
def tiny_service(tiny_models: dict[str, str]) -> Iterator[str]:
    specs = [{"name": name, "source": "hf", "path": path} for name, path in tiny_models.items()]
    specs.append(
        {"name": "tiny-llama-f16", "source": "hf", "path": tiny_models["tiny-llama"], "lossy_hidden_dtype": "float16"}
    )
    env = {"LOGPROBE_MODELS": json.dumps(specs), "LOGPROBE_DATA_DIR": str(DATA_DIR), "LOGPROBE_WORKER_THREADS": "2"}
    with LocalService(env=env, log_dir=ARTIFACTS / "tiny") as service:
        yield service.base_url


def float16_bound(path: str, ids: list[int]) -> np.ndarray:
    """Per position, the most that rounding the final hidden state h to float16 can move any logprob, from the
    model's own weights: each h_j moves by at most |h_j| 2^-11, so logit v by e_v = 2^-11 sum_j |W_vj h_j|, and
    log p(v) = logit_v - logsumexp(logits) by at most e_v + max_u e_u <= 2 max_u e_u."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double()
        weight = model.get_output_embeddings().weight.double()
        per_logit = 2.0**-11 * (hidden.abs() @ weight.abs().T)  # [T, V]
    return 2 * per_logit.max(dim=1).values.numpy()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("name", "path_of", "storage", "tolerance"),
    [
        ("tiny-llama", "tiny-llama", "hidden", 1e-4),
        ("tiny-gemma2", "tiny-gemma2", "hidden", 1e-4),
        ("tiny-cohere", "tiny-cohere", "hidden", 1e-4),
        ("tiny-falcon-h1", "tiny-falcon-h1", "rows", 1e-4),
        ("tiny-llama-f16", "tiny-llama", "hidden", None),
    ],
)
def test_rows_rebuild_the_models_own_logprobs(
    tiny_service: str, tiny_models: dict[str, str], name: str, path_of: str, storage: str, tolerance: float | None
) -> None:
    with httpx.Client(base_url=tiny_service, timeout=120) as client:
        info = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == name)
        assert info["storage"] == storage and info["ready"]
        body = client.post("/v1/score", json={"model": name, "text": TEXT}).json()
        ids = [t["id"] for t in body["tokens"]]
        rows = st_load(client.get(f"/v1/records/{body['record_id']}/logprobs").content)["logprobs"]
    reference = hf_logprobs(tiny_models[path_of], ids)[:-1]
    logprobs = np.array([t["logprob"] for t in body["tokens"][1:]])
    assert np.abs(logprobs - reference[np.arange(len(ids) - 1), ids[1:]]).max() <= 1e-4  # captured exactly
    error = float(np.abs(rows - reference).max())
    if tolerance is None:  # lossy: within the bound that float16 rounding of h allows, and really lossy
        assert info["lossy"] and info["hidden_dtype"] == "float16"
        bound = float16_bound(tiny_models[path_of], ids)[:-1]
        assert error > 0 and (np.abs(rows - reference).max(axis=1) <= bound).all()
        assert info["rebuild_max_abs_error"] > 0
    else:
        assert not info["lossy"] and error <= tolerance


def test_byte_level_is_refused_for_a_model_whose_logits_are_not_w_h(tiny_service: str) -> None:
    """Byte-level scoring reads every cover state's logits from the unembedding (workers/bytelevel/forward.py);
    Falcon-H1's multiplier is not in it, so those would be another model's distributions: refused with a code."""
    with httpx.Client(base_url=tiny_service, timeout=120) as client:
        refused = client.post("/v1/bytes", json={"model": "tiny-falcon-h1", "text": "ab"})
        assert refused.status_code == 501, refused.text
        assert refused.json()["error"]["code"] == "byte_level_unsupported"
        served = client.post("/v1/bytes", json={"model": "tiny-llama", "text": "ab"})
        assert served.status_code == 200, served.text
        assert [row["byte"] for row in served.json()["bytes"]] == list(b"ab")


@pytest.mark.parametrize(
    ("name", "path_of", "dtype"),
    [("tiny-gemma2", "tiny-gemma2", np.float32), ("tiny-llama-f16", "tiny-llama", np.float16)],
)
def test_kept_layers_are_transformers_hidden_states_in_the_stored_dtype(
    tiny_service: str, tiny_models: dict[str, str], name: str, path_of: str, dtype: type
) -> None:
    """Layers on request (#32) on a Gemma-2 (sliding window, soft-capping) and in float16 storage: every kept layer
    is transformers' own hidden_states[L], rounded to the stored dtype."""
    with httpx.Client(base_url=tiny_service, timeout=120) as client:
        body = client.post("/v1/score", json={"model": name, "text": TEXT, "layers": "all"}).json()
        assert body["layers"] == [0, 1, 2]
        ids = [t["id"] for t in body["tokens"]]
        model = AutoModelForCausalLM.from_pretrained(tiny_models[path_of]).eval()
        with torch.inference_mode():
            reference = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in range(3):
            got = st_load(client.get(f"/v1/records/{body['record_id']}/hidden", params={"layer": layer}).content)
            states = got["hidden"]
            assert states.dtype == dtype and states.shape == (len(ids) - 1, 64)
            expected = reference[layer][0, :-1].double().numpy()
            rounding = 0.0 if dtype == np.float32 else 2.0**-10  # float16: within an ulp of transformers' float32
            np.testing.assert_allclose(states.astype(np.float64), expected, atol=1e-5, rtol=rounding)
            assert rounding == 0.0 or not np.array_equal(states.astype(np.float32), expected.astype(np.float32))


def test_layers_are_refused_for_a_model_kept_as_rows(tiny_service: str) -> None:
    with httpx.Client(base_url=tiny_service, timeout=120) as client:
        refused = client.post("/v1/score", json={"model": "tiny-falcon-h1", "text": TEXT, "layers": [1]})
        assert refused.status_code == 501, refused.text
        assert refused.json()["error"]["code"] == "layers_unsupported"
        assert refused.json()["error"]["param"] == "layers"
