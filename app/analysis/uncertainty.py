"""Uncertainty of a model on a text: per-token confidence and sequence summaries.

Definitions follow "Visualizing Uncertainty in Translation Tasks" (geometric/arithmetic mean token
probability, mean kurtosis), SwiReasoning (block-wise entropy trend) and the usual token statistics.
"""

from __future__ import annotations

import numpy as np

from app.analysis.base import Context, Param, method

MORE_CONFIDENT = "the model was more confident"
MORE_UNCERTAIN = "the model was more uncertain"


@method("logprob", ("uncertainty",), "token", MORE_CONFIDENT, ("logprob",))
def logprob(ctx: Context) -> np.ndarray:
    """log p(x_t): the log-probability the model gave the observed token."""
    return ctx.data.logprob


@method("rank", ("uncertainty",), "token", MORE_UNCERTAIN, ("rank",))
def rank(ctx: Context) -> np.ndarray:
    """1 + the number of tokens the model found strictly more likely than the observed one."""
    return ctx.data.rank


@method("entropy", ("uncertainty",), "token", MORE_UNCERTAIN, ("entropy",))
def entropy(ctx: Context) -> np.ndarray:
    """Entropy (nats) of the next-token distribution, -sum_v p(v) log p(v)."""
    return ctx.data.entropy


@method("margin", ("uncertainty",), "token", MORE_CONFIDENT, ("topk_logprobs",))
def margin(ctx: Context) -> np.ndarray:
    """p_1 - p_2: the gap between the two most likely tokens' probabilities."""
    top = np.exp(ctx.data.top_logprobs[:, :2])
    return np.asarray(top[:, 0] - top[:, 1])


@method("kurtosis", ("uncertainty",), "token", MORE_CONFIDENT, ("kurtosis",))
def kurtosis(ctx: Context) -> np.ndarray:
    """Fisher kurtosis of the V probability values of the distribution (peaked distributions score high);
    "Visualizing Uncertainty in Translation Tasks" (Translation-UQ)."""
    return ctx.data.kurtosis


@method("geometric_mean_prob", ("uncertainty",), "sequence", MORE_CONFIDENT, ("logprob",))
def geometric_mean_prob(ctx: Context) -> float:
    """exp(mean_t log p(x_t)): geometric mean token probability (Translation-UQ)."""
    return float(np.exp(np.mean(ctx.data.logprob)))


@method("arithmetic_mean_prob", ("uncertainty",), "sequence", MORE_CONFIDENT, ("logprob",))
def arithmetic_mean_prob(ctx: Context) -> float:
    """mean_t p(x_t): arithmetic mean token probability (Translation-UQ)."""
    return float(np.mean(np.exp(ctx.data.logprob)))


@method("mean_kurtosis", ("uncertainty",), "sequence", MORE_CONFIDENT, ("kurtosis",))
def mean_kurtosis(ctx: Context) -> float:
    """Mean over positions of the distributions' Fisher kurtosis (Translation-UQ)."""
    return float(np.mean(ctx.data.kurtosis))


@method("perplexity", ("uncertainty",), "sequence", MORE_UNCERTAIN, ("logprob",))
def perplexity(ctx: Context) -> float:
    """exp(-mean_t log p(x_t))."""
    return float(np.exp(-np.mean(ctx.data.logprob)))


@method("mean_entropy", ("uncertainty", "detect"), "sequence", MORE_UNCERTAIN, ("entropy",))
def mean_entropy(ctx: Context) -> float:
    """Mean predictive entropy over positions (also the "entropy" zero-shot detector of the DetectGPT
    baselines, where machine text scores lower)."""
    return float(np.mean(ctx.data.entropy))


@method("max_entropy", ("uncertainty",), "sequence", MORE_UNCERTAIN, ("entropy",))
def max_entropy(ctx: Context) -> float:
    """The largest predictive entropy over positions."""
    return float(np.max(ctx.data.entropy))


def block_means(values: np.ndarray, block: int) -> np.ndarray:
    """Means over consecutive blocks of `block` positions (the last block may be shorter)."""
    return np.array([values[i : i + block].mean() for i in range(0, len(values), block)])


@method(
    "entropy_trend",
    ("uncertainty",),
    "sequence",
    "entropy rises along the text",
    ("entropy",),
    params=(Param("block_size", 16, "positions per block", 1, 65536),),
)
def entropy_trend(ctx: Context) -> dict[str, float | list[float]]:
    """Block-wise mean entropy and its least-squares slope per block (SwiReasoning's block confidence from
    entropy trends). `slope` is in nats per block; `blocks` lists the block means."""
    blocks = block_means(ctx.data.entropy, int(ctx.params["block_size"]))
    slope = float(np.polyfit(np.arange(len(blocks)), blocks, 1)[0]) if len(blocks) > 1 else 0.0
    return {"slope": slope, "blocks": blocks.tolist()}
