"""Faithfulness of ReAGent and occlusion on the packaged SmolLM2: the ReAGent paper's soft-normalised sufficiency
(Soft-NS) and comprehensiveness (Soft-NC), after Zhao & Aletras 2023 ("Incorporating Attribution Importance for
Improving Faithfulness Metrics") as the ReAGent code computes them (casszhao/ReAGent, src/evaluation/evaluator),
for each method and for random importances, side by side.

For each text the target is the model's greedy next token. With importances s scaled to [0, 1] (min-max per
target; or, as the ReAGent code uses its softmax scores, as a distribution over the context), each embedding
element of context token i is kept with probability s_i (sufficiency) or 1 - s_i (comprehensiveness) and zeroed
otherwise; q is the model's next-token distribution on the whole text and q' on
the perturbed one, and H the Hellinger distance:
    suff = 1 - H(q, q'),  suff_0 = suff with every embedding zeroed,  comp = H(q, q'),
    Soft-NS = max(0, suff - suff_0) / (1 - suff_0),  Soft-NC = comp / (1 - suff_0).
Higher is more faithful for both. Each figure is the mean over `--draws` Bernoulli masks (the reference code draws
one). The attributions come from the worker's own code (workers/attribution.py) on the worker's backend.

Usage: python -m bench.attribution_faithfulness [--max-passes 1024] [--draws 20] [--seed 0]
(run with --max-passes 512 --draws 10 for the figures reported; the machine is shared and noisy)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from app.serving.attribution import replacement_ids
from workers.attribution import backend_scorer, occlusion, reagent
from workers.backends.hf import HFBackend
from workers.config import PACKAGED_MODELS, CommonSettings
from workers.contract.jobs import ReagentParams

MODEL = "smollm2-135m-instruct"
TEXTS = [
    "When my flight landed in Thailand, I was staying in the capital city of",
    "The chemical symbol for gold is Au, and the chemical symbol for silver is",
    "She put the milk back in the fridge because it was going to",
    "Paris is the capital of France, and Berlin is the capital of",
    "He played the violin every evening, and his sister played the",
    "After three days of heavy rain, the river finally burst its",
]


def hellinger(p: torch.Tensor, q: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(p.sqrt() - q.sqrt()) / np.sqrt(2.0))


class Perturbed:
    """The model's next-token distribution after token embeddings whose elements are kept with given odds."""

    def __init__(self, model: torch.nn.Module, ids: list[int], draws: int, seed: int) -> None:
        self.model, self.draws = model, draws
        with torch.inference_mode():
            self.embeddings = model.get_input_embeddings()(torch.tensor([ids]))[0]
            self.whole = self._next(self.embeddings[None])[0]
        self.generator = torch.Generator().manual_seed(seed)

    @torch.inference_mode()
    def _next(self, embeds: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(inputs_embeds=embeds).logits[:, -1].double(), -1)

    def distance(self, keep: np.ndarray) -> float:
        """Mean Hellinger distance from the whole text's distribution over `draws` masks."""
        odds = torch.from_numpy(keep).float()[:, None].expand_as(self.embeddings)
        masks = torch.rand((self.draws, *self.embeddings.shape), generator=self.generator) < odds
        out = self._next(self.embeddings[None] * masks)
        return float(np.mean([hellinger(self.whole, row) for row in out]))


def scaled(importance: np.ndarray, scale: str) -> np.ndarray:
    """Importances as keep odds: min-max to [0, 1], or (the ReAGent code's convention, whose scores are a
    softmax) a distribution over the context, negative scores counted as 0."""
    if scale == "minmax":
        return (importance - importance.min()) / max(float(np.ptp(importance)), 1e-12)
    positive = np.clip(importance, 0.0, None)
    return positive / positive.sum() if positive.sum() > 0 else np.full_like(importance, 1 / len(importance))


def soft_scores(perturbed: Perturbed, importance: np.ndarray, scale: str) -> tuple[float, float]:
    scaled_ = scaled(importance, scale)
    suff_0 = 1 - perturbed.distance(np.zeros_like(scaled_))
    suff = 1 - perturbed.distance(scaled_)
    comp = perturbed.distance(1 - scaled_)
    return max(0.0, suff - suff_0) / (1 - suff_0), comp / (1 - suff_0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-passes", type=int, default=1024)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", nargs="+", choices=("minmax", "sum"), default=["minmax"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    backend = HFBackend(PACKAGED_MODELS[MODEL], CommonSettings().data_dir)
    score = backend_scorer(backend)
    rng = np.random.default_rng(args.seed)
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    seconds = {"reagent": 0.0, "occlusion": 0.0}
    passes: dict[str, int] = {}
    print(
        f"{'target':>14} | {'method':>9} | {'scale':>7} | {'Soft-NS':>7} | {'Soft-NC':>7} | passes | conv | top tokens"
    )
    for text in TEXTS:
        prompt = backend.encode(text)
        with torch.inference_mode():
            logits = backend.head.logits(backend.hidden_states(prompt))
        ids = [*prompt, int(logits[-1].argmax())]
        t = len(prompt)
        swaps = replacement_ids(ids, logits.topk(2, dim=-1).indices.numpy())
        perturbed = Perturbed(backend.model, prompt, args.draws, args.seed)
        found = {}
        started = time.perf_counter()
        (found["reagent"],) = reagent(ids, [t], swaps, ReagentParams(), args.seed, args.max_passes, score)
        seconds["reagent"] += time.perf_counter() - started
        started = time.perf_counter()
        (found["occlusion"],) = occlusion(ids, [t], score)
        seconds["occlusion"] += time.perf_counter() - started
        importances = {name: np.asarray(target.importance) for name, target in found.items()}
        importances["random"] = rng.random(t)
        texts = [backend.decode([i]) for i in ids]
        for name, importance in importances.items():
            top = ", ".join(repr(texts[i]) for i in np.argsort(-importance)[:3])
            used = found[name].passes if name in found else 0
            converged = {True: "yes", False: "no", None: "-"}[found[name].converged if name in found else None]
            passes[name] = passes.get(name, 0) + used
            for scale in args.scales:
                ns, nc = soft_scores(perturbed, importance, scale)
                rows.setdefault((name, scale), []).append((ns, nc))
                print(
                    f"{texts[t]!r:>14} | {name:>9} | {scale:>7} | {ns:7.3f} | {nc:7.3f} | {used:6d} | {converged:>4} "
                    f"| {top}"
                )
    print(f"\nmeans over {len(TEXTS)} texts ({MODEL}, {args.draws} masks per figure, seed {args.seed}):")
    for (name, scale), values in rows.items():
        ns, nc = np.mean(values, axis=0)
        random_ns, random_nc = np.mean(rows[("random", scale)], axis=0)
        timing = f"  {passes[name]} passes in {seconds[name]:.1f} s" if name in seconds else ""
        print(
            f"{name:>9} {scale:>7}: Soft-NS {ns:.3f} (log ratio to random {np.log(ns / random_ns):+.2f})  "
            f"Soft-NC {nc:.3f} (log ratio to random {np.log(nc / random_nc):+.2f}){timing}"
        )


if __name__ == "__main__":
    main()
