"""Which context tokens made a model predict a token: ReAGent and leave-one-out occlusion, by forward passes of
perturbed contexts.

ReAGent (Zhao & Shan 2024, "ReAGent: A Model-agnostic Feature Attribution Method for Generative Language Models";
reference code casszhao/ReAGent, `DeltaProbImportanceScoreEvaluator` and `TopKStoppingConditionEvaluator`):
each probe keeps logit-scale importances s (initialised uniformly at random) and repeats

1. replace a random set R of the context (each token with probability `replacing_ratio`) by likely tokens;
2. delta = p(y | x) - p(y | x with R replaced); d_i = delta for i in R, -delta otherwise;
3. s_i += logit(d_i / 2 + 1/2);
4. stop once the target is among the `stop_top_k` most likely tokens when every token but the `keep_top_n`
   most important ones (by softmax(s)) is replaced.

The importance is softmax(s), averaged over the probes that stopped (over all probes when none did within the
budget). The replacements are the analysed model's own likely tokens, from its record: at position i its most
likely token given tokens 0..i-1, or its second most likely where that is token i itself. The paper asks
RoBERTa; the model's own predictions need no second tokenizer and cost no forward pass. Token 0 has no
prediction, so ReAGent never replaces it and gives it importance 0.

Occlusion: the drop p(y | x) - p(y | x without token i), token i deleted (plain leave-one-out).

Every probability of the target comes from the same batched forwards (`Scorer`), in float64 after the model's
own dtype, so the methods compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from workers.backends.base import Backend
from workers.contract.jobs import AttributionTarget, ReagentParams
from workers.lanes import checkpoint

# Log-probabilities of each sequence's target after its last token, and the target's rank (1 = most likely).
Scorer = Callable[[list[list[int]], list[int]], tuple[np.ndarray, np.ndarray]]

BATCH_TOKENS = 512  # padded tokens in one forward: one slice of the heavy lane (a fraction of a second on 2 CPU cores)
BATCH_ROWS = 128  # sequences in one forward (bounds the [rows, V] float64 logits)
DELTA_EPS = 1e-6  # d/2 + 1/2 is kept inside (0, 1) so its logit is finite


def occlusion(token_ids: list[int], positions: list[int], score: Scorer) -> list[AttributionTarget]:
    sequences: list[list[int]] = []
    targets: list[int] = []
    for t in positions:
        context = token_ids[:t]
        sequences += [context] + [context[:i] + context[i + 1 :] for i in range(t)]
        targets += [token_ids[t]] * (t + 1)
    logp, _ = score(sequences, targets)
    out, k = [], 0
    for t in positions:
        whole, left_out = logp[k], logp[k + 1 : k + 1 + t]
        k += t + 1
        importance = np.exp(whole) - np.exp(left_out)
        out.append(AttributionTarget(position=t, logprob=float(whole), importance=importance.tolist(), passes=t + 1))
    return out


@dataclass
class _Probes:
    """ReAGent's probes for one target."""

    position: int
    context: np.ndarray  # token ids 0 .. position-1
    target: int
    free: np.ndarray  # the context indices that can be replaced
    swap: np.ndarray  # their replacements
    rng: np.random.Generator
    scores: np.ndarray  # [probes, len(free)] logit-scale importances
    active: np.ndarray = field(init=False)
    stopped: np.ndarray = field(init=False)
    p_whole: float = 0.0
    logprob: float = 0.0
    passes: int = 1

    def __post_init__(self) -> None:
        self.active = np.ones(self.scores.shape[0], dtype=bool)
        self.stopped = np.zeros(self.scores.shape[0], dtype=bool)

    def replaced(self, mask: np.ndarray) -> list[int]:
        """The context with the free positions where `mask` is true replaced."""
        out = self.context.copy()
        out[self.free[mask]] = self.swap[mask]
        return out.tolist()  # type: ignore[no-any-return]

    def importance(self) -> np.ndarray:
        weights = np.exp(self.scores - self.scores.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        chosen = self.stopped if self.stopped.any() else np.ones_like(self.stopped)
        out = np.zeros(len(self.context))
        out[self.free] = weights[chosen].mean(axis=0)
        return out


def reagent(
    token_ids: list[int],
    positions: list[int],
    replacements: list[int],
    params: ReagentParams,
    seed: int,
    max_passes: int,
    score: Scorer,
) -> list[AttributionTarget]:
    """ReAGent for each target, its probes' rounds batched across probes and targets. Each target gets an equal
    share of `max_passes` (a round costs two passes per active probe) and its own random stream, seeded by
    `seed` and its position, so its answer does not depend on the other targets named with it."""
    swaps = np.asarray(replacements, dtype=np.int64)
    probes = []
    for t in positions:
        free = np.flatnonzero(swaps[:t] >= 0)
        rng = np.random.default_rng([seed, t])
        probes.append(
            _Probes(
                t,
                np.asarray(token_ids[:t], dtype=np.int64),
                token_ids[t],
                free,
                swaps[free],
                rng,
                rng.random((params.num_probes, len(free))),
            )
        )
    logp, _ = score([p.context.tolist() for p in probes], [p.target for p in probes])
    for p, lp in zip(probes, logp, strict=True):
        p.logprob, p.p_whole = float(lp), float(np.exp(lp))
    share = max_passes // len(probes)
    while True:
        running = [p for p in probes if p.active.any() and len(p.free) and p.passes + 2 * p.active.sum() <= share]
        if not running:
            break
        _update(running, params, score)
        _check_stop(running, params, score)
    return [
        AttributionTarget(
            position=p.position,
            logprob=p.logprob,
            importance=p.importance().tolist(),
            passes=p.passes,
            converged=bool(p.stopped.any()) if len(p.free) else None,
        )
        for p in probes
    ]


def _update(running: list[_Probes], params: ReagentParams, score: Scorer) -> None:
    """Steps 1-3 for every active probe."""
    masks, sequences, targets = [], [], []
    for p in running:
        for _ in np.flatnonzero(p.active):
            mask = p.rng.random(len(p.free)) < params.replacing_ratio
            masks.append(mask)
            sequences.append(p.replaced(mask))
            targets.append(p.target)
    logp, _ = score(sequences, targets)
    k = 0
    for p in running:
        for probe in np.flatnonzero(p.active):
            delta = p.p_whole - float(np.exp(logp[k]))
            d = np.where(masks[k], delta, -delta)
            q = np.clip(d * 0.5 + 0.5, DELTA_EPS, 1.0 - DELTA_EPS)
            p.scores[probe] += np.log(q) - np.log1p(-q)
            k += 1
        p.passes += int(p.active.sum())


def _check_stop(running: list[_Probes], params: ReagentParams, score: Scorer) -> None:
    """Step 4: keep only each active probe's most important tokens; stop where the target stays near the top."""
    sequences, targets = [], []
    for p in running:
        keep = min(params.keep_top_n, max(len(p.free) - 1, 0))
        for probe in np.flatnonzero(p.active):
            mask = np.ones(len(p.free), dtype=bool)
            mask[np.argsort(-p.scores[probe], kind="stable")[:keep]] = False
            sequences.append(p.replaced(mask))
            targets.append(p.target)
    _, ranks = score(sequences, targets)
    k = 0
    for p in running:
        active = np.flatnonzero(p.active)
        p.passes += len(active)
        hit = ranks[k : k + len(active)] <= params.stop_top_k
        p.stopped[active[hit]] = True
        p.active[active[hit]] = False
        k += len(active)


def backend_scorer(backend: Backend) -> Scorer:
    """A Scorer from a backend's batched forwards: the last hidden state through its unembedding, or (for
    models whose logits are not W·h) its own rows."""

    @torch.inference_mode()
    def score(sequences: list[list[int]], targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
        logp = np.empty(len(sequences))
        ranks = np.empty(len(sequences), dtype=np.int64)
        for group in _groups(sequences):
            checkpoint()  # a slice: one batched forward
            batch = [sequences[i] for i in group]
            if backend.card.storage == "hidden":
                hidden = backend.hidden_states_batch(batch)
                rows = backend.head.logits(torch.stack([h[-1] for h in hidden])).double()
            else:
                rows = torch.stack([backend.full_rows(s)[-1] for s in batch]).double()
            rows = torch.log_softmax(rows, dim=-1)
            index = torch.tensor([targets[i] for i in group])
            chosen = rows.gather(1, index[:, None])
            logp[group] = chosen[:, 0].numpy()
            ranks[group] = ((rows > chosen).sum(dim=1) + 1).numpy()
        return logp, ranks

    return score


def _groups(sequences: list[list[int]]) -> list[list[int]]:
    """Sequence indices, by length, cut into forwards of at most BATCH_TOKENS padded tokens and BATCH_ROWS rows."""
    groups: list[list[int]] = []
    for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i])):
        width = len(sequences[i])
        if groups and len(groups[-1]) < BATCH_ROWS and width * (len(groups[-1]) + 1) <= BATCH_TOKENS:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
