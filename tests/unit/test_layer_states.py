"""The transformers backend's layers on request (#32): one forward gives the final states and any layers' raw
states, equal to transformers' own `output_hidden_states`, also when a long input is prefilled in chunks through the
KV cache (the chunk size lowered here so that a short text takes several)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import DATA_DIR
from workers.backends import hf
from workers.backends.hf import HFBackend
from workers.config import ModelSpec


@pytest.mark.parametrize("chunk", [8, 2048])
def test_states_with_layers_equal_transformers_hidden_states(
    tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(hf, "PREFILL_CHUNK", chunk)
    backend = HFBackend(ModelSpec(name="tiny-llama", source="hf", path=tiny_models["tiny-llama"]), DATA_DIR)
    assert backend.card.layers == 2
    ids = backend.encode("The lighthouse keeper counted the ships that passed the harbour every night. " * 2)
    assert len(ids) > 2 * 8
    final, states = backend.states_with_layers(ids, [0, 1, 2])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"]).eval()
    with torch.inference_mode():
        reference = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer, state in enumerate(states):
        assert state.shape == (len(ids), 64)
        torch.testing.assert_close(state, reference[layer][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(final, reference[2][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(final, backend.hidden_states(ids), atol=1e-5, rtol=0)
    assert (states[1] - states[2]).abs().max() > 0.1  # the layers differ: the checks could fail
