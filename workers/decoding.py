"""One decoding loop for plain generation and for contrastive decoding over several views.

Each view is a model reading its own prefix, with its own KV cache, so a step costs one single-token forward
per view and never a re-prefill. The next token is drawn from

    log_softmax( sum_i w_i * log_softmax(logits_i / tau_i) )

optionally restricted to the tokens a chosen view finds plausible (p >= alpha * max p). With one view of
weight 1 this is ordinary sampling. The presets are Emulated Disalignment (Zhou et al. 2024,
"Emulated Disalignment: Safety Alignment for Large Language Models May Backfire!"), contrastive decoding
(Li et al. 2023), context-aware decoding (Shi et al. 2024), proxy-tuning (Liu et al. 2024) and prompt
contrast (USCD's lame prompt, Wang et al. 2024); the gateway expands them into views. DoLa (Chuang et al. 2024)
is one view whose backend's logits are already the contrast of its layers (workers/dola.py).

Selective contrast (USCD, Wang et al. 2024, "USCD: Improving Code Generation of LLMs by Uncertainty-Aware
Selective Contrastive Decoding"; reference code alphadl/CodeGen-USCD, `EnsembleLogitsProcessor`): at a step
where view 0 (the standard prompt) is confident, its own distribution; where it is uncertain, the views'
probabilities mixed, log(sum_i w_i p_i) (weights 1 and -0.7 there), over the tokens with p_0 >= min_ratio * the
mean of p_0 (0.666667 x 1/V there), every other token and any whose mix is not positive dropped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workers.backends.base import Backend, sample_next, stop_hit
from workers.contract.jobs import DecodeStep, Plausibility, Sampling, Selective


@dataclass
class View:
    backend: Backend
    prefix_ids: list[int]
    weight: float = 1.0
    temperature: float = 1.0


@dataclass
class Decoded:
    completion: list[int]
    finish_reason: str
    steps: list[DecodeStep]


def combine(view_logprobs: list[torch.Tensor], weights: list[float], plausibility: Plausibility | None) -> torch.Tensor:
    """The combined next-token log-distribution (float64) from each view's log-probabilities."""
    score = torch.zeros_like(view_logprobs[0])
    for logp, weight in zip(view_logprobs, weights, strict=True):
        if weight != 0.0:
            score.add_(logp, alpha=weight)
    if plausibility is not None:
        anchor = view_logprobs[plausibility.view]
        score.masked_fill_(anchor < math.log(plausibility.alpha) + anchor.max(), -math.inf)
    return torch.log_softmax(score, dim=-1)


def uncertain(logp: torch.Tensor, rule: Selective) -> bool:
    """Whether a view's next-token distribution is uncertain under USCD's rule: the standard deviation of its V
    probabilities (unbiased, as torch.std) at most the threshold (the paper's measure), its top probability
    below it, or its entropy above it."""
    p = logp.exp()
    if rule.measure == "std":
        return float(p.std()) <= rule.threshold
    if rule.measure == "top1":
        return float(p.max()) < rule.threshold
    return float(-(p * logp).nansum()) > rule.threshold


def selective(view_logprobs: list[torch.Tensor], weights: list[float], rule: Selective) -> tuple[torch.Tensor, bool]:
    """USCD's step: the combined log-distribution (float64) and whether it is a contrast. A contrast that leaves no
    token (every kept token's mix not positive) falls back to view 0's own distribution."""
    standard = view_logprobs[0]
    if not uncertain(standard, rule):
        return standard, False
    probs = [logp.exp() for logp in view_logprobs]
    mix = torch.zeros_like(standard)
    for p, weight in zip(probs, weights, strict=True):
        mix.add_(p, alpha=weight)
    keep = (probs[0] >= rule.min_ratio * probs[0].mean()) & (mix > 0)
    if not keep.any():
        return standard, False
    score = torch.full_like(standard, -math.inf)
    score[keep] = mix[keep].log()
    return torch.log_softmax(score, dim=-1), True


def rank_of(logp: torch.Tensor, token: int) -> int:
    return int((logp > logp[token]).sum()) + 1


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def seeded(sampling: Sampling) -> torch.Generator:
    """The job's random stream: its seed, or a fresh one."""
    seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
    return torch.Generator().manual_seed(seed)


def top_finite(combined: torch.Tensor, topk: int) -> list[tuple[int, float]]:
    """The `topk` most likely ids of a log-distribution and their logprobs, leaving out those it drops (-inf)."""
    if not topk:
        return []
    top = combined.topk(min(topk, combined.shape[0]))
    return [(i, v) for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True) if math.isfinite(v)]


def premature_layer(views: list[View]) -> int | None:
    """DoLa: the premature layer the first DoLa view contrasted at this step (its streams hold one decoding's row:
    workers.handlers.contrast gives each job its own), else None."""
    for view in views:
        premature = getattr(view.backend, "premature", None)
        if premature is not None and len(premature) == 1:
            return int(premature[0])
    return None


def decode_step(
    token: int,
    combined: torch.Tensor,
    view_logprobs: list[torch.Tensor],
    contrasted: bool | None,
    topk: int,
    **extra: Any,
) -> DecodeStep:
    """A step as answers and streams report it: the token, the combined distribution's top-k and the token's
    logprob in it, each view's logprob and rank of the token."""
    finite = top_finite(combined, topk)
    return DecodeStep(
        token=token,
        top_ids=[i for i, _ in finite],
        top_logprobs=[v for _, v in finite],
        view_logprobs=[float(lp[token]) for lp in view_logprobs],
        view_ranks=[rank_of(lp, token) for lp in view_logprobs],
        contrasted=contrasted,
        logprob=finite_or_none(float(combined[token])),
        **extra,
    )


class StepSink:
    """Hands steps to `on_step` in order, each once, as far as the caller says they are settled."""

    def __init__(self, on_step: Callable[[DecodeStep], Any] | None) -> None:
        self.on_step, self.sent = on_step, 0

    def emit(self, steps: list[DecodeStep], upto: int) -> None:
        if self.on_step is not None:
            for step in steps[self.sent : upto]:
                self.on_step(step)
        self.sent = max(self.sent, upto)


def tokens_before_stop(completion: list[int], detokenize: Callable[[list[int]], str], stops: list[str]) -> int:
    """How many tokens of `completion` lie wholly before the first stop string in its text.

    A completion that hit a stop reports, counts and stores only these: its text then ends where its tokens do
    (a token in which a stop string begins is dropped with the stop)."""
    text = detokenize(completion)
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return _tokens_within(completion, detokenize, min(cuts)) if cuts else len(completion)


def _settled(completion: list[int], detokenize: Callable[[list[int]], str], stops: list[str]) -> int:
    """How many tokens no later stop string can take back: those before a tail of the text that could still
    grow into a stop (vLLM holds back the same tail before it streams)."""
    text = detokenize(completion)
    return _tokens_within(completion, detokenize, len(text) - held_back(text, stops))


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could still grow into a stop string."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def _tokens_within(completion: list[int], detokenize: Callable[[list[int]], str], chars: int) -> int:
    """The longest prefix of `completion` whose text is at most `chars` characters long."""
    keep = len(completion)
    while keep > 0 and len(detokenize(completion[:keep])) > chars:
        keep -= 1
    return keep


class Contrast:
    """One decoding between its steps: the views' rule, its random stream, the completion and the steps so far.
    `decode` runs one alone; `workers/contrasts.py` runs several side by side, their views' streams batched per
    model across requests. Either way `take` makes each step from the same numbers."""

    def __init__(
        self,
        views: list[View],
        sampling: Sampling,
        *,
        plausibility: Plausibility | None = None,
        rule: Selective | None = None,
        topk: int = 0,
        eos_ids: set[int] | None = None,
        detokenize: Callable[[list[int]], str] | None = None,
        on_step: Callable[[DecodeStep], Any] | None = None,
    ) -> None:
        self.views, self.sampling, self.plausibility, self.rule, self.topk = views, sampling, plausibility, rule, topk
        self.generator = seeded(sampling)
        self.eos = eos_ids if eos_ids is not None else set(views[0].backend.card.eos_token_ids)
        self.detokenize = detokenize
        self.stops = sampling.stop if detokenize is not None else []
        self.weights = [view.weight for view in views]
        self.plain = (
            len(views) == 1
            and self.weights == [1.0]
            and views[0].temperature == 1.0
            and plausibility is None
            and rule is None
        )
        self.completion: list[int] = []
        self.steps: list[DecodeStep] = []
        self.sink = StepSink(on_step)

    def take(self, logits: list[torch.Tensor]) -> Decoded | None:
        """One step from each view's next-token logits: the token drawn and its step kept (and sent once no stop
        string can take it back); the decoding, if this step ended it."""
        views, completion, steps = self.views, self.completion, self.steps
        view_logprobs = [
            torch.log_softmax(raw.double() / view.temperature, dim=-1) for raw, view in zip(logits, views, strict=True)
        ]
        contrasted = None
        if self.rule is None:
            combined = combine(view_logprobs, self.weights, self.plausibility)
        else:
            combined, contrasted = selective(view_logprobs, self.weights, self.rule)
        # Plain sampling works on the raw logits as vLLM's sampler does (a repetition penalty depends on their sign).
        scores = logits[0].double() if self.plain else combined
        token = sample_next(scores, self.sampling, self.generator, views[0].prefix_ids, completion)
        premature = premature_layer(views)
        extra = {} if premature is None else {"premature_layer": premature}
        steps.append(decode_step(token, combined, view_logprobs, contrasted, self.topk, **extra))
        completion.append(token)
        if self.stops and self.detokenize is not None:
            if stop_hit(self.detokenize(completion), self.stops):
                keep = tokens_before_stop(completion, self.detokenize, self.stops)
                self.sink.emit(steps, keep)
                return Decoded(completion[:keep], "stop", steps[:keep])
            self.sink.emit(steps, _settled(completion, self.detokenize, self.stops))
        else:
            self.sink.emit(steps, len(steps))
        if token in self.eos or len(completion) >= self.sampling.max_tokens:
            self.sink.emit(steps, len(steps))
            return Decoded(completion, "stop" if token in self.eos else "length", steps)
        return None


@torch.inference_mode()
def decode(views: list[View], sampling: Sampling, **options: Any) -> Decoded:
    """Run one decoding (`Contrast`, with its options) until max_tokens, an end-of-sequence token of the first
    view, or a stop string; one forward per model per step.

    With stop strings, a step reaches `on_step` only once no stop can take it back, and a completion that hit a
    stop ends before it (`tokens_before_stop`): streamed steps, the answer's steps and its tokens all agree."""
    contrast = Contrast(views, sampling, **options)
    groups: dict[int, list[int]] = {}  # the views of one model decode as one batch
    for i, view in enumerate(views):
        groups.setdefault(id(view.backend), []).append(i)
    streams = []
    logits: list[torch.Tensor] = [torch.empty(0)] * len(views)
    for members in groups.values():
        backend = views[members[0]].backend
        state, first = backend.start([views[i].prefix_ids for i in members])
        streams.append((backend, state, members))
        for row, i in enumerate(members):
            logits[i] = first[row]
    while (decoded := contrast.take(logits)) is None:
        token = contrast.completion[-1]
        for backend, state, members in streams:
            following = backend.step(state, [token] * len(members))
            for row, i in enumerate(members):
                logits[i] = following[row]
    return decoded
