"""lm-evaluation-harness, unchanged, on a multiple-choice task through logprobe and through vLLM's own OpenAI
server (`python -m vllm.entrypoints.openai.api_server`, same model and dtype, same machine), side by side in one
run: `local-completions` with its defaults (tokenized requests, the tokenizer found remotely), the same
`--batch_size` and `num_concurrent` for both.

The servers run in turns (one at a time on the machine). Reported per server: the harness's wall time (its own
start-up included, the same for both), log-likelihood requests per second, accuracy, and for logprobe the
records it kept (every scored prompt's full distributions, in Redis); then the largest difference between the
two servers' per-choice log-likelihoods.

The task is synthetic and deterministic (bench/texts.py's passage, a different window per document, four
one-word continuations), `--docs` documents of about `--context-tokens` tokens.

Usage: python -m bench.lm_eval_throughput [--docs 500] [--context-tokens 64] [--batch-size 8]
       [--num-concurrent 4] [--backend hf|vllm] [--worker-threads 2] [--skip-vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from app.launcher.local_service import ROOT, LocalService, free_port
from bench.concurrency import start_vllm_server, wait_up
from bench.texts import PASSAGE
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.models import safetensors_dir

MODEL = "smollm2-135m-instruct"
KV_BYTES = 1 << 30


def write_task(folder: Path, docs: int, context_words: int) -> tuple[int, int]:
    """A multiple-choice task of `docs` documents; the log-likelihood requests it makes, and how many distinct
    (context, choice) pairs they score (a document may offer one word twice)."""
    words = (PASSAGE * 4).split()
    lines, requests, distinct = [], 0, set()
    for i in range(docs):
        start = (i * 7) % (len(words) // 2)
        window = words[start : start + context_words]
        answer = words[start + context_words]
        distractors = [w for w in (words[(start + 13 * k) % len(words)] for k in (1, 2, 3, 4, 5)) if w != answer][:3]
        choices = [answer, *distractors]
        rotation = i % len(choices)
        choices = choices[rotation:] + choices[:rotation]
        lines.append(
            json.dumps(
                {
                    "id": i,
                    "context": f"Passage {i}. " + " ".join(window),
                    "choices": choices,
                    "answer": choices.index(answer),
                }
            )
        )
        requests += len(choices)
        distinct.update((i, c) for c in choices)
    data = folder / "lp_bench_mc.jsonl"
    data.write_text("\n".join(lines) + "\n")
    (folder / "lp_bench_mc.yaml").write_text(
        "task: lp_bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    return requests, len(distinct)


def run_harness(base: str, tasks: Path, out: Path, args: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    """lm-eval's CLI against a server; its wall time and logged samples."""
    env = {**os.environ, "OPENAI_API_KEY": "unused", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "local-completions",
        "--model_args",
        f"model={MODEL},base_url={base}/v1/completions,num_concurrent={args.num_concurrent},max_retries=3",
        "--batch_size",
        str(args.batch_size),
        "--tasks",
        "lp_bench_mc",
        "--include_path",
        str(tasks),
        "--log_samples",
        "--output_path",
        str(out),
    ]
    started = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    if "remote tokenizer" not in run.stderr.lower():
        raise RuntimeError("the harness did not find the server's tokenizer")
    samples = sorted(out.rglob("samples_*.jsonl"))[-1]
    return wall, [json.loads(line) for line in samples.read_text().splitlines()]


def summary(name: str, wall: float, requests: int, samples: list[dict[str, Any]]) -> str:
    accuracy = sum(s["acc"] for s in samples) / len(samples)
    return f"{name:24s} {wall:8.1f} s {requests / wall:9.1f} req/s  acc {accuracy:.3f}"


def loglikelihoods(samples: list[dict[str, Any]]) -> dict[tuple[int, int], float]:
    return {(s["doc_id"], j): float(r[0][0]) for s in samples for j, r in enumerate(s["resps"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--context-tokens", type=int, default=64, help="about this many tokens per context")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-concurrent", type=int, default=4)
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="logprobe's worker backend")
    parser.add_argument("--skip-vllm", action="store_true", help="logprobe only")
    parser.add_argument("--worker-threads", type=int, default=2, help="torch threads of logprobe's worker")
    args = parser.parse_args()
    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], CommonSettings().data_dir)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        requests, distinct = write_task(root, args.docs, max(8, args.context_tokens * 3 // 4))
        print(
            f"{args.docs} documents, {requests} log-likelihood requests ({distinct} distinct); "
            f"batch_size {args.batch_size}, num_concurrent {args.num_concurrent}; logprobe backend {args.backend}",
            flush=True,
        )
        spec: dict[str, Any] = {"name": MODEL, "backend": args.backend}
        if args.backend == "vllm":
            spec["engine"] = {"max_model_len": 2048, "kv_cache_memory_bytes": KV_BYTES, "dtype": "float32"}
        env = {
            "LOGPROBE_MODELS": json.dumps([spec]),
            "LOGPROBE_WORKER_THREADS": str(args.worker_threads),
            "LOGPROBE_WORKER_BATCH_JOBS": "16",
        }
        with LocalService(env=env, log_dir=ROOT / "artifacts") as ours:
            wall, ours_samples = run_harness(ours.base_url, root, root / "ours", args)
            kept = sum(1 for _ in redis.Redis.from_url(ours.redis_url).scan_iter(match="lp:rec:*", count=1000))
        print(summary("logprobe", wall, requests, ours_samples) + f"  records kept {kept}", flush=True)
        if args.skip_vllm:
            return
        port = free_port()
        with open(ROOT / "artifacts" / "vllm-serve.log", "ab") as log:
            server = start_vllm_server(
                str(folder),
                port,
                log,
                "--dtype",
                "float32",  # logprobe's transformers worker computes in float32: the same numbers on both sides
                "--max-model-len",
                "2048",
                "--enable-tokenizer-info-endpoint",  # lm-eval finds the remote tokenizer through it, as through ours
            )
            try:
                wait_up(f"http://127.0.0.1:{port}/health", server)
                their_wall, theirs = run_harness(f"http://127.0.0.1:{port}", root, root / "vllm", args)
            finally:
                server.terminate()
                server.wait(timeout=60)
        print(summary("vLLM OpenAI server", their_wall, requests, theirs), flush=True)
        a, b = loglikelihoods(ours_samples), loglikelihoods(theirs)
        print(
            f"logprobe / vLLM throughput: {their_wall / wall:.2f}x; "
            f"max |Δ log-likelihood| over {len(a)} choices: {max(abs(a[k] - b[k]) for k in a):.2e}"
        )


if __name__ == "__main__":
    main()
