"""Layers on request (#32): what keeping every layer costs, and what a probe on a middle layer gives.

1. Speed: POST /v1/score with `layers: "all"` (through the gateway and a worker, every hidden state stored in Redis)
   against a bare transformers forward with `output_hidden_states=True` over the same texts in this process (the same
   weights, the same thread count), and against a plain /v1/score; each text salted so that nothing is cached, the
   three interleaved text by text so that a busy machine weighs on all alike. Tokens per second over all texts.
2. Bytes: per position and per kept layer, the stored field's length (HSTRLEN) over the record's positions.
3. Probes: the bench's correctness set (bench/heads.py (c): capital-city questions answered rightly and wrongly,
   label 1 = wrong, span completion, split by question), a probe on the middle layer, on the final layer and on
   layer "best", trained from texts; test AUROC with a 95% interval (bootstrap over questions), and the paired
   difference middle - final.

Usage: python -m bench.layers [--texts 8] [--tokens 256] [--questions 126]
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import httpx
import numpy as np
import redis
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.launcher.local_service import LocalService
from bench.heads import CAPITALS, area, bootstrap_differences, question_set, wait_head
from bench.texts import text_of_tokens
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.models import safetensors_dir

MODEL = "smollm2-135m-instruct"


def speed(client: httpx.Client, folder: Any, texts: int, tokens: int, r: redis.Redis) -> dict[str, float]:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.set_num_threads(2)
    timings = {"bare": 0.0, "layers_all": 0.0, "plain": 0.0}
    n_tokens, field_bytes, positions = 0, [], 0
    for i in range(texts + 1):  # the first of each: a warm-up, not counted
        text = text_of_tokens(tokens, tokenizer.encode, salt=f"{uuid.uuid4().hex[:8]} {i}")
        started = time.perf_counter()
        kept = client.post("/v1/score", json={"model": MODEL, "text": text, "layers": "all", "top_logprobs": 0})
        layers_all = time.perf_counter() - started
        assert kept.status_code == 200 and not kept.json()["cached"], kept.text
        started = time.perf_counter()
        plain = client.post("/v1/score", json={"model": MODEL, "text": text, "top_logprobs": 0})
        plain_s = time.perf_counter() - started
        assert plain.status_code == 200 and not plain.json()["cached"], plain.text
        ids = [t["id"] for t in kept.json()["tokens"]]  # the very tokens the service scored
        started = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        bare = time.perf_counter() - started
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1
        if i == 0:
            continue
        timings["bare"] += bare
        timings["layers_all"] += layers_all
        timings["plain"] += plain_s
        n_tokens += len(ids)
        key = f"lp:rec:public:{kept.json()['record_id']}"
        field_bytes += [int(r.hstrlen(key, f"layer:{layer}")) for layer in range(model.config.num_hidden_layers)]
        positions += len(ids) - 1
        print(f"  text {i}: {len(ids)} tokens, bare {bare:.3f}s, layers all {layers_all:.3f}s, plain {plain_s:.3f}s")
    layers = model.config.num_hidden_layers
    per_position_layer = sum(field_bytes) / (positions * layers)
    rates = {k: n_tokens / v for k, v in timings.items()}
    return {
        **{f"{k}_tok_s": v for k, v in rates.items()},
        "layers_all_over_bare": rates["layers_all"] / rates["bare"],
        "plain_over_bare": rates["plain"] / rates["bare"],
        "bytes_per_position_per_layer": per_position_layer,
        "raw_bytes_per_position_per_layer": model.config.hidden_size * 4,
        "tokens": n_tokens,
    }


def probes(client: httpx.Client, questions: int, seed: int, best: bool) -> dict[str, Any]:
    q_train, q_test = question_set(questions, seed)
    examples = [{"messages": r["messages"], "label": r["label"]} for r in q_train]
    middle = 15  # SmolLM2-135M: 30 layers
    heads = {}
    for name, layer in (("final", "final"), ("middle", middle), ("best", "best"))[: 3 if best else 2]:
        body = {"name": f"probe_{name}", "kind": "probe", "model": MODEL, "family": "uncertainty"}
        body |= {"span": "completion", "examples": examples, "seed": 0, "params": {"layer": layer}}
        started = time.perf_counter()
        response = client.post("/v1/heads", json=body)
        response.raise_for_status()
        heads[name] = wait_head(client, response.json()["id"])
        m = heads[name]["metrics"]
        print(
            f"  probe on {name}: layer {m['layer']}, CV AUROC {m['auroc']:.3f}, "
            f"{time.perf_counter() - started:.0f}s with scoring"
        )
    scores: dict[str, list[float]] = {name: [] for name in heads}
    for row in q_test:
        body = {"model": MODEL, "messages": row["messages"], "heads": [h["id"] for h in heads.values()]}
        response = client.post("/v1/analysis/uncertainty", json={**body, "span": "completion", "methods": []})
        response.raise_for_status()
        for name in heads:
            scores[name].append(response.json()["sequence"][f"probe_{name}"])
    labels = np.array([r["label"] for r in q_test])
    groups = [r["group"] for r in q_test]
    arrays = {k: np.array(v) for k, v in scores.items()}
    # each probe's own interval: its AUROC minus a constant score's (0.5), resampled over questions
    constant = np.zeros(len(labels))
    own = bootstrap_differences(arrays, constant, labels, groups)
    others = {name: arrays[name] for name in ("middle", "best") if name in arrays}
    paired = bootstrap_differences(others, arrays["final"], labels, groups)
    out: dict[str, Any] = {"n_train": len(q_train), "n_test": len(q_test)}
    for name, values in arrays.items():
        low, high = own[name]
        out[name] = {
            "layer": heads[name]["metrics"]["layer"],
            "cv_auroc": heads[name]["metrics"]["auroc"],
            "test_auroc": area(list(values), labels),
            "ci95": (0.5 + low, 0.5 + high),
        }
    out["minus_final_ci95"] = paired
    out["best_layer_auroc"] = heads["best"]["metrics"]["layer_auroc"] if best else {}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--questions", type=int, default=len(CAPITALS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma-separated: speed,probes,best (the probe on layer best)")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], CommonSettings().data_dir)
    env = {"LOGPROBE_MODELS": MODEL, "LOGPROBE_WORKER_THREADS": "2"}
    started = time.perf_counter()
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=600) as client:
        r = redis.Redis.from_url(service.redis_url)
        if "speed" not in skip:
            s = speed(client, folder, args.texts, args.tokens, r)
            print(
                f"\n| route | tokens/s | over bare forward |\n|---|---:|---:|\n"
                f"| transformers forward, output_hidden_states | {s['bare_tok_s']:.0f} | 1.00 |\n"
                f'| /v1/score layers "all" (31 states stored) | {s["layers_all_tok_s"]:.0f} | '
                f"{s['layers_all_over_bare']:.2f} |\n"
                f"| /v1/score (final state only) | {s['plain_tok_s']:.0f} | {s['plain_over_bare']:.2f} |\n"
                f"bytes per position per kept layer: {s['bytes_per_position_per_layer']:.1f} "
                f"(raw float32 {s['raw_bytes_per_position_per_layer']}), over {s['tokens']} tokens"
            )
        if "probes" not in skip:
            p = probes(client, args.questions, args.seed, "best" not in skip)
            print(f"\ncorrectness set: {p['n_train']} train / {p['n_test']} test chats")
            print("| probe | layer | CV AUROC | test AUROC (95% interval) |\n|---|---:|---:|---|")
            for name in [k for k in ("final", "middle", "best") if k in p]:
                q = p[name]
                print(
                    f"| {name} | {q['layer'] if q['layer'] is not None else 30} | {q['cv_auroc']:.3f} | "
                    f"{q['test_auroc']:.3f} ({q['ci95'][0]:.3f}-{q['ci95'][1]:.3f}) |"
                )
            for name, (low, high) in p["minus_final_ci95"].items():
                print(f"{name} minus final, test AUROC, paired bootstrap over questions: {low:+.3f} to {high:+.3f}")
            print("best's per-layer CV AUROC:", {k: round(v, 3) for k, v in p["best_layer_auroc"].items()})
    print(f"\nbench ran {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
