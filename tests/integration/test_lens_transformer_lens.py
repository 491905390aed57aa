"""POST /v1/analysis/lens against a second, independent reference: TransformerLens's logit lens on the packaged
SmolLM2 (`cache.accumulated_resid()` through `ln_final` and `unembed`), recorded by tests/data/lens_tl/make_reference.py
in a reference venv of its own (TransformerLens 3.9.0, no weight processing, so the logits are the model's own).

Layer indexing: TransformerLens's accumulated_resid entry L is blocks.L.hook_resid_pre for L < n_layers, which is
transformers' hidden_states[L] (entry 0: the embeddings); its last entry (n_layers) is the last block's
hook_resid_post, which is transformers' hidden_states[n_layers] before the final norm (transformers applies the norm
to its last entry). TransformerLens's lens applies ln_final to every entry, ours to every layer below the last: so
entry L is our layer L at every L, the last included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import MODEL

pytestmark = pytest.mark.slow

REFERENCE = Path(__file__).parents[1] / "data" / "lens_tl" / "reference.json"
TOL = 1e-4
TOP = 5


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return dict(json.loads(REFERENCE.read_text()))


def test_the_lens_equals_transformer_lens_at_every_layer(alpha: httpx.Client, recorded: dict[str, Any]) -> None:
    response = alpha.post(
        "/v1/analysis/lens", json={"model": MODEL, "text": recorded["text"], "layers": "all", "top_logprobs": TOP}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [p["id"] for p in answer["positions"]] == recorded["token_ids"]
    assert [layer["layer"] for layer in answer["layers"]] == [layer["layer"] for layer in recorded["layers"]]
    assert len(recorded["layers"]) == answer["n_layers"] + 1
    for ours, theirs in zip(answer["layers"], recorded["layers"], strict=True):
        tokens = ours["tokens"][1:]
        np.testing.assert_allclose([t["logprob"] for t in tokens], theirs["logprob"], atol=TOL, rtol=0)
        top_logprobs = [[alt["logprob"] for alt in t["top_logprobs"]] for t in tokens]
        np.testing.assert_allclose(top_logprobs, theirs["top_logprobs"], atol=TOL, rtol=0)
        for t, ids, values in zip(tokens, theirs["top_ids"], theirs["top_logprobs"], strict=True):
            # the same top-5 ids, in order, wherever neighbouring logprobs are apart by more than the tolerance
            gaps = np.abs(np.diff(values))
            clear = np.concatenate([[True], gaps > 2 * TOL]) & np.concatenate([gaps > 2 * TOL, [True]])
            got = [alt["id"] for alt in t["top_logprobs"]]
            assert [g for g, c in zip(got, clear, strict=True) if c] == [
                i for i, c in zip(ids, clear, strict=True) if c
            ]
