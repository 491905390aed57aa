"""Decoding samples from the model's own logits: W·h where the probe found the unembedding to rebuild the model's
rows, else the model's own output head (a tiny Falcon-H1, whose `lm_head_multiplier` the unembedding does not model,
sampled from unscaled W·h before: the wrong temperature)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DATA_DIR
from workers.backends.hf import HFBackend
from workers.config import ModelSpec
from workers.probe import verify_rebuild


def _own(backend: HFBackend, prefix: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return backend.model(input_ids=torch.tensor([prefix])).logits[0, -1].float()


@pytest.mark.parametrize(("name", "storage"), [("tiny-falcon-h1", "rows"), ("tiny-llama", "hidden")])
def test_start_and_step_give_the_models_own_logits(tiny_models: dict[str, str], name: str, storage: str) -> None:
    backend = HFBackend(ModelSpec(name=name, source="hf", path=tiny_models[name]), DATA_DIR)
    ids = backend.encode("The cat sat on the mat, and the dog lay by the door.")
    verify_rebuild(backend, ids)
    assert backend.card.storage == storage
    prefixes = [ids, ids[:5]]  # two lengths: one left-padded batch
    streams, first = backend.start(prefixes)
    torch.testing.assert_close(first, torch.stack([_own(backend, p) for p in prefixes]), atol=1e-4, rtol=1e-4)
    following = backend.step(streams, [11, 12])
    expected = torch.stack([_own(backend, [*ids, 11]), _own(backend, [*ids[:5], 12])])
    torch.testing.assert_close(following, expected, atol=1e-4, rtol=1e-4)
    w_h = backend.head.logits(backend.hidden_states(ids)[-1:])[0]
    gap = float((w_h - first[0]).abs().max())
    assert gap > 0.01 if storage == "rows" else gap < 1e-4  # W·h is not this model's logits / is
    assert type(backend.decoder).forward is backend.decoder.forward.__func__  # the decoder's own forward again
