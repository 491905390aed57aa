"""DoLa's step (workers/dola.py) against an independent float64 reference of the paper's code (voidism/DoLa,
transformers' `_dola_select_contrast`), and its candidate layers against transformers' `dola_layers`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.dola import candidate_layers, dola_contrast


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def reference(final: np.ndarray, premature: np.ndarray) -> tuple[np.ndarray, int]:
    """One row in float64: the layer j maximising 0.5 (KL(m || q_N) + KL(m || q_j)) / V, m = (q_N + q_j) / 2, then
    log q_N - log q_j over the tokens with q_N >= 0.1 max q_N (-inf elsewhere)."""
    log_n = _log_softmax(final)
    divergences = []
    for logits in premature:
        log_j = _log_softmax(logits)
        m = 0.5 * (np.exp(log_n) + np.exp(log_j))
        kl = [float(np.sum(m * (np.log(m) - lp)) / len(m)) for lp in (log_n, log_j)]
        divergences.append(0.5 * sum(kl))
    picked = int(np.argmax(divergences))
    keep = np.exp(log_n) >= 0.1 * np.exp(log_n).max()
    scores = np.where(keep, log_n - _log_softmax(premature[picked]), -np.inf)
    return scores, picked


@pytest.mark.parametrize("layers", [1, 4])
def test_contrast_matches_float64_reference(layers: int) -> None:
    rng = np.random.default_rng(layers)
    rows, vocab = 6, 500
    final = rng.normal(0, 3, (rows, vocab))
    premature = rng.normal(0, 3, (rows, layers, vocab)) + rng.normal(0, 2, (rows, layers, 1)) * final[:, None]
    scores, picked = dola_contrast(
        torch.tensor(final, dtype=torch.float32), torch.tensor(premature, dtype=torch.float32)
    )
    for row in range(rows):
        want, want_layer = reference(final[row], premature[row])
        assert int(picked[row]) == want_layer
        kept = np.isfinite(want)
        assert 1 <= kept.sum() < vocab
        assert np.array_equal(np.isfinite(scores[row].numpy()), kept)
        np.testing.assert_allclose(scores[row].numpy()[kept], want[kept], atol=1e-4)
    assert len(set(picked.tolist())) > 1 or layers == 1  # rows pick their own layers


def test_a_layer_far_from_the_final_one_is_picked() -> None:
    final = torch.tensor([[4.0, 1.0, 0.0, -1.0]])
    near, far = final + 0.01, torch.tensor([[-1.0, 0.0, 1.0, 4.0]])
    _, picked = dola_contrast(final, torch.stack([near, far, near], dim=1))
    assert picked.tolist() == [1]


def test_candidate_layers_as_transformers() -> None:
    # SmolLM2-135M: 30 layers, head tied to the embeddings; Gemma-3-270M: 18, tied
    assert candidate_layers("low", 30, True) == [2, 4, 6, 8, 10, 12, 14]
    assert candidate_layers("high", 30, True) == [15, 17, 19, 21, 23, 25, 27, 29]
    assert candidate_layers("low", 18, True) == [2, 4, 6, 8]
    assert candidate_layers("low", 18, False) == [0, 2, 4, 6, 8]
    assert candidate_layers("high", 48, False) == list(range(28, 48, 2))
    assert candidate_layers("low", 48, True) == list(range(2, 20, 2))
    assert candidate_layers("low", 2, True) == [1]
    assert candidate_layers([0, 5, 30], 30, True) == [0, 5]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma2"])
def test_layer_streams_read_the_layers_transformers_reports(name: str, tiny_models: dict[str, str]) -> None:
    """DoLa streams over a batch of two prefixes (left-padded, KV-cached), a step after the prefill included: each
    row's scores are DoLa's from transformers' own full forward of that row alone (`output_hidden_states`, the
    head applied to the candidate layers' outputs as transformers' `_dola_decoding` does)."""
    from tests.conftest import DATA_DIR
    from workers.backends.hf import HFBackend
    from workers.config import ModelSpec
    from workers.dola import dola_streams

    backend = HFBackend(ModelSpec(name=name, source="hf", path=tiny_models[name]), DATA_DIR)
    streams = dola_streams(backend, [0, 1])
    prefixes = [[1, 520, 33, 901, 7], [1, 88, 4000]]
    state, first = streams.start(prefixes)
    first_picked = list(streams.premature)
    following = streams.step(state, [12, 77])
    following_picked = list(streams.premature)
    head = backend.model.get_output_embeddings()
    for row, prefix in enumerate(prefixes):
        for ids, got, picked in (
            (prefix, first[row], first_picked[row]),
            ([*prefix, [12, 77][row]], following[row], following_picked[row]),
        ):
            with torch.inference_mode():
                out = backend.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
                premature = torch.stack([head(out.hidden_states[layer][0, -1]) for layer in (0, 1)])
                want, want_picked = dola_contrast(out.logits[:, -1], premature[None])
            assert picked == [0, 1][int(want_picked[0])]  # the premature layer each step reports (#32)
            kept = torch.isfinite(want[0])
            assert torch.equal(torch.isfinite(got), kept)
            torch.testing.assert_close(got[kept], want[0][kept], atol=1e-4, rtol=0)
