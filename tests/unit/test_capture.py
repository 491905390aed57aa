"""Per-position statistics against independent float64 references on random distributions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from workers.capture import (
    Unembedding,
    capture_statistics,
    capture_statistics_many,
    logits_statistics,
    rebuild_rows,
    row_statistics,
)


def random_logits(rng: np.random.Generator, n: int, vocab: int, scale: float) -> np.ndarray:
    return (rng.standard_normal((n, vocab)) * scale).astype(np.float32)


def reference(logits: np.ndarray, targets: np.ndarray, k: int) -> dict[str, np.ndarray]:
    x = logits.astype(np.float64)
    logp = x - scipy.special.logsumexp(x, axis=1, keepdims=True)
    p = np.exp(logp)
    chosen = logp[np.arange(len(x)), targets]
    return {
        "logprob": chosen,
        "rank": 1 + (logp > chosen[:, None]).sum(axis=1),
        "entropy": scipy.stats.entropy(p, axis=1),
        "logp_m2": (p * logp**2).sum(axis=1),
        "kurtosis": scipy.stats.kurtosis(p, axis=1, fisher=True, bias=True),
        "logz": scipy.special.logsumexp(x, axis=1),
        "topk_logprobs": -np.sort(-logp, axis=1)[:, :k],
    }


@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0, 12.0])  # near-uniform to very peaked
def test_row_statistics_match_float64_reference(scale: float) -> None:
    rng = np.random.default_rng(int(scale * 100))
    logits = random_logits(rng, 16, 5000, scale)
    targets = rng.integers(0, 5000, 16)
    got = {
        k: v.numpy() for k, v in row_statistics(torch.from_numpy(logits.copy()), torch.from_numpy(targets), 7).items()
    }
    ref = reference(logits, targets, 7)
    np.testing.assert_allclose(got["logprob"], ref["logprob"], atol=2e-5)
    np.testing.assert_array_equal(got["rank"], ref["rank"])
    np.testing.assert_allclose(got["entropy"], ref["entropy"], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(got["logp_m2"], ref["logp_m2"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["kurtosis"], ref["kurtosis"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got["logz"], ref["logz"], atol=2e-5, rtol=1e-6)
    np.testing.assert_allclose(got["topk_logprobs"], ref["topk_logprobs"], atol=2e-5)
    top_ids = got["topk_ids"]
    np.testing.assert_allclose(
        np.take_along_axis(logits, top_ids.astype(np.int64), 1) - ref["logz"][:, None], ref["topk_logprobs"], atol=2e-5
    )


def test_rank_counts_strictly_greater_tokens() -> None:
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0]])
    for target, rank in [(0, 1), (2, 1), (3, 3), (1, 4), (4, 4)]:
        assert int(row_statistics(logits.clone(), torch.tensor([target]), 2)["rank"][0]) == rank


def test_capture_over_chunks_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    head = Unembedding(torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32)))
    hidden = torch.from_numpy(rng.standard_normal((41, 16)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, 300, 42))
    chunked = capture_statistics(hidden, ids, head, 5, chunk_rows=13)  # chunks that split the 8-row passes
    whole = capture_statistics(hidden, ids, head, 5, chunk_rows=1000)
    for name in chunked:  # float32 matmuls of other shapes round differently: a few ulps
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, atol=1e-5)
    logits = (hidden.double() @ head.weight.double().T).numpy()
    ref = reference(logits.astype(np.float32), ids[1:].numpy(), 5)
    np.testing.assert_allclose(chunked["logprob"], ref["logprob"], atol=1e-4)


def test_sequences_captured_together_equal_each_captured_alone() -> None:
    """Several sequences' rows through shared matmuls (chunks that cross from one sequence to the next): each
    sequence's statistics are its own, in its own length, and match the float64 reference."""
    rng = np.random.default_rng(3)
    head = Unembedding(torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32)))
    lengths = [12, 1, 30, 7]
    hidden = [torch.from_numpy(rng.standard_normal((n, 16)).astype(np.float32)) for n in lengths]
    ids = [torch.from_numpy(rng.integers(0, 300, n + 1)) for n in lengths]
    together = capture_statistics_many(hidden, ids, head, 5, chunk_rows=16)
    assert len(together) == len(lengths)
    for states, tokens, stats in zip(hidden, ids, together, strict=True):
        alone = capture_statistics(states, tokens, head, 5)
        for name in alone:
            assert stats[name].shape == alone[name].shape
            np.testing.assert_allclose(stats[name], alone[name], rtol=1e-5, atol=1e-5)
        logits = (states.double() @ head.weight.double().T).numpy()
        ref = reference(logits.astype(np.float32), tokens[1:].numpy(), 5)
        np.testing.assert_allclose(stats["logprob"], ref["logprob"], atol=1e-4)
        np.testing.assert_array_equal(stats["rank"], ref["rank"])
    with pytest.raises(ValueError, match="hidden states"):
        capture_statistics_many(hidden, [ids[1], *ids[1:]], head, 5)


def test_rebuild_rows_is_log_softmax_of_w_h_with_bias_and_softcap() -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((200, 8))
    bias = rng.standard_normal(200)
    hidden = rng.standard_normal((5, 8))
    head = Unembedding(torch.from_numpy(weight).float(), torch.from_numpy(bias).float(), softcap=3.0)
    rows = rebuild_rows(torch.from_numpy(hidden).float(), head)
    logits = np.tanh((hidden @ weight.T + bias) / 3.0) * 3.0
    ref = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(rows, ref, atol=1e-5)
    assert rows.dtype == np.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (a vLLM worker's device)")
def test_statistics_and_rows_on_the_gpu_match_the_reference() -> None:
    """A GPU worker's unembedding stays on its device: W·h and the statistics run there, whole chunks at a time,
    and come back as the CPU's do."""
    rng = np.random.default_rng(4)
    cpu = Unembedding(torch.from_numpy(rng.standard_normal((3000, 32)).astype(np.float32)))
    gpu = cpu.to("cuda")
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    lengths = [40, 3, 25]
    hidden = [torch.from_numpy(rng.standard_normal((n, 32)).astype(np.float32)) for n in lengths]
    ids = [torch.from_numpy(rng.integers(0, 3000, n + 1)) for n in lengths]
    on_gpu = capture_statistics_many(hidden, ids, gpu, 5, chunk_rows=24)
    on_cpu = capture_statistics_many(hidden, ids, cpu, 5, chunk_rows=24)
    for states, tokens, stats, same in zip(hidden, ids, on_gpu, on_cpu, strict=True):
        logits = (states.double() @ cpu.weight.double().T).numpy()
        ref = reference(logits.astype(np.float32), tokens[1:].numpy(), 5)
        np.testing.assert_allclose(stats["logprob"], ref["logprob"], atol=1e-4)
        np.testing.assert_allclose(stats["entropy"], ref["entropy"], atol=1e-4)
        np.testing.assert_allclose(stats["topk_logprobs"], same["topk_logprobs"], atol=1e-4)
        assert {name: value.dtype for name, value in stats.items()} == {n: v.dtype for n, v in same.items()}
    rows = rebuild_rows(hidden[0], gpu)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, rebuild_rows(hidden[0], cpu), atol=1e-4)
    assert cpu.logits(hidden[0]).device.type == "cpu" and gpu.logits(hidden[0]).device.type == "cpu"


def test_capture_rejects_misaligned_inputs() -> None:
    head = Unembedding(torch.zeros(10, 4))
    with pytest.raises(ValueError, match="hidden states"):
        capture_statistics(torch.zeros(3, 4), torch.arange(3), head, 2)


def test_statistics_spread_over_threads_equal_one_thread_and_restore_the_setting() -> None:
    """Blocks go to a pool, each on one torch thread: the same numbers as all on one thread, in order, and the
    process's thread setting back as it was."""
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(3 * rng.standard_normal((77, 5000)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, 5000, 78))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = logits_statistics(logits, ids, 6)
        torch.set_num_threads(2)
        spread = logits_statistics(logits, ids, 6)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for name in alone:
        np.testing.assert_array_equal(spread[name], alone[name])
