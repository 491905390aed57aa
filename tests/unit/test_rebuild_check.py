"""The load-time rebuild check (workers/probe.py) on a model whose numbers break: a NaN error fails the check like
a large one (full-row storage, error 0), and the card stays one the gateway can read; before, NaN passed the
`error > tolerance` test and the card's null error made every request for the model a 500."""

from __future__ import annotations

import math

import torch

from tests.conftest import DATA_DIR
from workers.backends.hf import HFBackend
from workers.config import ModelSpec
from workers.contract.cards import ModelCard
from workers.probe import rebuild_error, verify_rebuild


def test_a_nan_rebuild_error_fails_the_check(tiny_models: dict[str, str]) -> None:
    backend = HFBackend(ModelSpec(name="tiny-llama", source="hf", path=tiny_models["tiny-llama"]), DATA_DIR)
    ids = backend.encode("The cat sat on the mat, and the dog lay by the door.")
    with torch.no_grad():
        backend.model.model.embed_tokens.weight[ids[3]] = float("nan")  # one broken token in the probe
    assert math.isnan(rebuild_error(backend, ids, backend.card.dtype))
    verify_rebuild(backend, ids)
    assert (backend.card.storage, backend.card.rebuild_max_abs_error) == ("rows", 0.0)
    assert ModelCard.model_validate_json(backend.card.model_dump_json()) == backend.card
