"""Quality of the analysis methods on labelled sets, each figure with a 95% bootstrap interval.

Membership (`--case membership`): AUROC of every membership method with SmolLM2-135M-Instruct as the target, and
beside it a blind baseline that reads no model (Das et al. 2024, "Blind Baselines Beat Membership Inference
Attacks for Foundation Models", arXiv:2406.16201): a bag-of-words classifier (multinomial naive Bayes over word
unigrams and bigrams, add-one smoothing) scored out of fold by 5-fold cross-validation.

The set, built offline and kept in bench/data/membership_dev.jsonl: members are the module docstrings of
CPython's standard library (public for decades, in every code corpus; SmolLM2's training mix holds The Stack and
Python documentation, so "seen" is near certain but not verified), non-members the module docstrings of this
project (written in 2026, after SmolLM2's release in late 2024: certainly unseen). Both are technical English
about Python modules, cut to their first WORDS words; the two still differ in style, which a blind baseline can
read. ReCaLL's non-member prefix and Con-ReCall's member prefix are PREFIX_SHOTS docstrings of each class held out
of the test set.

Usage: python -m bench.quality [--n 16] [--rebuild]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import itertools
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from app.analysis.calibration import auroc
from app.launcher.local_service import LocalService
from bench.detection_auroc import bootstrap_interval, finite

TARGET = "smollm2-135m-instruct"
MEMBERSHIP_SET = Path(__file__).parent / "data" / "membership_dev.jsonl"
ROOT = Path(__file__).parent.parent
WORDS = 64
PREFIX_SHOTS = 3
FOLDS = 5
SKIPPED_STDLIB = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "test", "pydoc_data"}


def stdlib_docstrings() -> list[str]:
    """Module docstrings of the standard library, at least WORDS words long."""
    found = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIPPED_STDLIB:
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # platform-only or deprecated modules that do not import here
            continue
        found.append(inspect.getdoc(module) or "")
    return [d for d in found if len(d.split()) >= WORDS]


def project_docstrings() -> list[str]:
    """Module docstrings of this project's own code, at least WORDS words long."""
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.parts[len(ROOT.parts)] in ("app", "workers", "client", "bench"):
            found.append(ast.get_docstring(ast.parse(path.read_text())) or "")
    return [d for d in found if len(d.split()) >= WORDS]


def build_membership_set() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for label, texts in ((1, stdlib_docstrings()), (0, project_docstrings())):
        rows += [{"label": label, "text": " ".join(t.split()[:WORDS])} for t in texts]
    random.Random(0).shuffle(rows)
    MEMBERSHIP_SET.parent.mkdir(exist_ok=True)
    MEMBERSHIP_SET.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def words(text: str) -> list[str]:
    tokens = re.findall(r"[a-z0-9_]+|[^\sa-z0-9_]", text.lower())
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


def blind_scores(texts: list[str], labels: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold log-odds of "member" from multinomial naive Bayes over word uni- and bigrams (add-one)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(texts), dtype=np.int64)
    for label in (0, 1):  # stratified: each fold holds its share of each class
        members = rng.permutation(np.flatnonzero(labels == label))
        fold[members] = np.arange(members.size) % folds
    bags = [Counter(words(t)) for t in texts]
    scores = np.empty(len(texts))
    for k in range(folds):
        train = np.flatnonzero(fold != k)
        counts = {label: Counter[str]() for label in (0, 1)}
        for i in train:
            counts[int(labels[i])].update(bags[i])
        vocabulary = set(counts[0]) | set(counts[1])
        totals = {label: sum(c.values()) + len(vocabulary) for label, c in counts.items()}
        prior = np.log(np.mean(labels[train] == 1)) - np.log(np.mean(labels[train] == 0))
        for i in np.flatnonzero(fold == k):
            scores[i] = prior + sum(
                n * (np.log((counts[1][w] + 1) / totals[1]) - np.log((counts[0][w] + 1) / totals[0]))
                for w, n in bags[i].items()
                if w in vocabulary
            )
    return scores


def membership(client: httpx.Client, n: int, rebuild: bool) -> None:
    rows = (
        build_membership_set()
        if rebuild or not MEMBERSHIP_SET.exists()
        else [json.loads(line) for line in MEMBERSHIP_SET.read_text().splitlines()]
    )
    by_label = {label: [str(r["text"]) for r in rows if r["label"] == label] for label in (0, 1)}
    prefix = {label: texts[:PREFIX_SHOTS] for label, texts in by_label.items()}
    test = [(label, text) for label in (1, 0) for text in by_label[label][PREFIX_SHOTS : PREFIX_SHOTS + n]]
    labels = np.array([label for label, _ in test])
    body = {"model": TARGET, "prefix": " ".join(prefix[0]) + "\n\n", "member_prefix": " ".join(prefix[1]) + "\n\n"}
    scores: dict[str, list[float | None]] = {}
    for i, (_, text) in enumerate(test):
        answer = client.post("/v1/analysis/membership", json={**body, "text": text})
        answer.raise_for_status()
        for name, value in answer.json()["sequence"].items():
            scores.setdefault(name, []).append(value)
        if (i + 1) % 10 == 0:
            print(f"  scored {i + 1}/{len(test)}", flush=True)
    scores["blind_bag_of_words"] = list(blind_scores([t for _, t in test], labels))
    print(
        f"membership set: {int(labels.sum())} members (CPython stdlib module docstrings) and {int((1 - labels).sum())} "
        f"non-members (this project's module docstrings, 2026), {WORDS} words each; target {TARGET}; "
        f"prefixes: {PREFIX_SHOTS} held-out docstrings of each class"
    )
    print(f"{'method':22s} {'AUROC':>7s} {'[95% bootstrap]':>17s}   (member positive; blind: {FOLDS}-fold out of fold)")
    for name, values in scores.items():
        array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        member, non_member = finite(list(array[labels == 1])), finite(list(array[labels == 0]))
        low, high = bootstrap_interval(member, non_member)
        print(f"{name:22s} {auroc(member, non_member):7.3f}  [{low:.3f}-{high:.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=["membership"], default="membership")
    parser.add_argument("--n", type=int, default=16, help="test texts per class")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    env = {"LOGPROBE_MODELS": TARGET, "LOGPROBE_WORKER_THREADS": "2"}
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=600) as client:
        membership(client, args.n, args.rebuild)


if __name__ == "__main__":
    main()
