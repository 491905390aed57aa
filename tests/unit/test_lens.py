"""The logit lens's arithmetic (workers/lens.py) on a tiny random Gemma-2 (its own RMSNorm with 1 + weight, scaled
embeddings, soft-capped logits), against transformers' modules applied by hand in float64."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workers.backends import load_backend
from workers.config import ModelSpec
from workers.lens import layer_readings


@pytest.fixture(scope="module")
def gemma(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = ModelSpec(name="tiny-gemma2", source="hf", path=tiny_models["tiny-gemma2"])
    return load_backend(spec, Path(tmp_path_factory.mktemp("data")))


def test_layers_read_through_the_final_norm_and_the_soft_capped_unembedding(gemma: Any) -> None:
    ids = [1, 504, 3218, 314, 77, 78, 79, 80]
    n = gemma.card.layers
    assert n == gemma.model.config.num_hidden_layers == 2
    *states, final = gemma.layer_states(ids, [0, 1, 2, n])
    readings = layer_readings([*states], final, ids, gemma.head, top_k=4)
    model = gemma.model
    with torch.inference_mode():
        hidden = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        cap = model.config.final_logit_softcapping
        rows = []
        for layer in range(n + 1):
            read = hidden[layer][0] if layer == n else model.model.norm(hidden[layer][0])
            logits = read.double() @ model.lm_head.weight.double().T
            rows.append(torch.log_softmax(torch.tanh(logits / cap) * cap, dim=-1).numpy()[:-1])
        own = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1).numpy()[:-1]
    np.testing.assert_allclose(rows[n], own, atol=1e-5)  # the hand-made reference is the model's own at the end
    targets = np.asarray(ids[1:])
    for layer, reading in enumerate(readings):
        logp = rows[layer]
        np.testing.assert_allclose(reading.logprob, logp[np.arange(len(targets)), targets], atol=1e-5)
        np.testing.assert_allclose(reading.entropy, -(np.exp(logp) * logp).sum(axis=1), atol=1e-5)
        kl = (np.exp(rows[n]) * (rows[n] - logp)).sum(axis=1)
        np.testing.assert_allclose(reading.kl_to_final, kl, atol=1e-5)
        np.testing.assert_allclose(
            np.take_along_axis(logp, np.asarray(reading.top_ids), 1), reading.top_logprobs, atol=1e-5
        )
        assert reading.top1 == [row[0] for row in reading.top_ids]
    assert max(readings[-1].kl_to_final) <= 1e-6 and max(readings[0].kl_to_final) > 1e-3
