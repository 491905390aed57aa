"""The tuned lens (#32; Belrose et al. 2023) against the logit lens on held-out text: a `lens` head trained through
the service on plot summaries that ship in a package (`app.serving.corpus`), its metrics' held-out mean KL(final ||
lens) per layer for the tuned lens (the stored float16 translators) and the logit lens, the training time and the
stored bytes.

Usage: python -m bench.tuned_lens [--texts 24] [--words 120] [--steps 30] [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import httpx
import redis

from app.launcher.local_service import LocalService
from app.serving import corpus
from workers.contract.keys import head_key

MODEL = "smollm2-135m-instruct"
SHOWN = (0, 1, 5, 10, 15, 20, 25, 28, 29)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=24)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    texts = [{"text": " ".join(p.split()[: args.words])} for p in corpus.plots()[: args.texts]]
    params = {"steps": args.steps, "batch_positions": args.batch, "val_fraction": 0.25}
    env = {"LOGPROBE_MODELS": MODEL, "LOGPROBE_WORKER_THREADS": "2"}
    with LocalService(env=env) as service, httpx.Client(base_url=service.base_url, timeout=300) as client:
        body = {"model": MODEL, "name": "bench_lens", "kind": "lens", "examples": texts, "params": params}
        head = client.post("/v1/heads", json=body).json()
        while head["status"] not in ("succeeded", "failed"):
            time.sleep(2)
            head = client.get(f"/v1/heads/{head['id']}").json()
        assert head["status"] == "succeeded", head
        with redis.Redis.from_url(service.redis_url) as store:
            weights = store.hstrlen(head_key("public", head["id"]), "weights")  # keys off: one tenant
    m = head["metrics"]
    print(f"{m['train_texts']} training texts ({m['train_positions']} positions), {m['held_out_texts']} held out "
          f"({m['held_out_positions']} positions); {m['steps']} steps of {args.batch} positions; "
          f"training {head['training_time_s']:.0f} s; weights {weights / 2**20:.1f} MiB")  # fmt: skip
    print("| layer | logit lens KL | tuned lens KL |")
    print("|---|---|---|")
    for layer in SHOWN:
        print(f"| {layer} | {m['kl_logit'][str(layer)]:.2f} | {m['kl_tuned'][str(layer)]:.2f} |")
    print(f"| mean (all {len(m['kl_logit'])}) | {m['mean_kl_logit']:.2f} | {m['mean_kl_tuned']:.2f} |")
    print(f"layers improved: {m['layers_improved']} of {len(m['kl_logit'])}")


if __name__ == "__main__":
    main()
