"""Uncertainty of a model on a text: per-token confidence and sequence summaries.

Definitions follow "Visualizing Uncertainty in Translation Tasks" (geometric/arithmetic mean token
probability, mean kurtosis), SwiReasoning (block-wise entropy trend) and the usual token statistics.
"""

from __future__ import annotations

import numpy as np

from app.analysis.base import Context, Param, method

MORE_CONFIDENT = "the model was more confident"
MORE_UNCERTAIN = "the model was more uncertain"

GLTR = (
    "GLTR: Statistical Detection and Visualization of Generated Text (Gehrmann, Strobelt and Rush 2019), "
    "arXiv:1906.04043"
)
TRANSLATION_UQ = (
    "Visualizing Uncertainty in Translation Tasks: An Evaluation of LLM Performance and Confidence Metrics "
    "(Park et al. 2025), arXiv:2501.17187"
)
LM_POLYGRAPH = "LM-Polygraph: Uncertainty Estimation for Language Models (Fadeeva et al. 2023), arXiv:2311.07383"
SWIREASONING = (
    "SwiReasoning: Switch-Thinking in Latent and Explicit for Pareto-Superior Reasoning LLMs (Shi et al. 2025), "
    "arXiv:2510.05069"
)
DETECTGPT = (
    "DetectGPT: Zero-Shot Machine-Generated Text Detection using Probability Curvature (Mitchell et al. 2023), "
    "arXiv:2301.11305"
)
UNIFORM = "the distribution is uniform (its entropy is log V), so its V probability values have no variance"


@method("logprob", ("uncertainty",), "token", MORE_CONFIDENT, ("logprob",), paper=GLTR)
def logprob(ctx: Context) -> np.ndarray:
    """log p(x_t): the log-probability the model gave the observed token."""
    return ctx.data.logprob


@method("rank", ("uncertainty",), "token", MORE_UNCERTAIN, ("rank",), paper=GLTR, integer=True)
def rank(ctx: Context) -> np.ndarray:
    """1 + the number of tokens the model found strictly more likely than the observed one (an integer)."""
    return ctx.data.rank


@method("entropy", ("uncertainty",), "token", MORE_UNCERTAIN, ("entropy",), paper=GLTR)
def entropy(ctx: Context) -> np.ndarray:
    """Entropy (nats) of the next-token distribution, -sum_v p(v) log p(v)."""
    return ctx.data.entropy


@method(
    "margin",
    ("uncertainty",),
    "token",
    MORE_CONFIDENT,
    ("topk_logprobs",),
    paper="Active Hidden Markov Models for Information Extraction (Scheffer, Decomain and Wrobel 2001): margin",
)
def margin(ctx: Context) -> np.ndarray:
    """p_1 - p_2: the gap between the two most likely tokens' probabilities."""
    top = np.exp(ctx.data.top_logprobs[:, :2])
    return np.asarray(top[:, 0] - top[:, 1])


@method("kurtosis", ("uncertainty",), "token", MORE_CONFIDENT, ("kurtosis",), paper=TRANSLATION_UQ, undefined=UNIFORM)
def kurtosis(ctx: Context) -> np.ndarray:
    """Fisher kurtosis of the V probability values of the distribution (peaked distributions score high);
    undefined for a uniform distribution, whose values do not vary."""
    return np.where(ctx.data.uniform, np.nan, ctx.data.kurtosis)


@method("geometric_mean_prob", ("uncertainty",), "sequence", MORE_CONFIDENT, ("logprob",), paper=TRANSLATION_UQ)
def geometric_mean_prob(ctx: Context) -> float:
    """exp(mean_t log p(x_t)): geometric mean token probability."""
    return float(np.exp(np.mean(ctx.data.logprob)))


@method("arithmetic_mean_prob", ("uncertainty",), "sequence", MORE_CONFIDENT, ("logprob",), paper=TRANSLATION_UQ)
def arithmetic_mean_prob(ctx: Context) -> float:
    """mean_t p(x_t): arithmetic mean token probability."""
    return float(np.mean(np.exp(ctx.data.logprob)))


@method(
    "mean_kurtosis",
    ("uncertainty",),
    "sequence",
    MORE_CONFIDENT,
    ("kurtosis",),
    paper=TRANSLATION_UQ,
    undefined=f"at every position {UNIFORM}",
)
def mean_kurtosis(ctx: Context) -> float:
    """Mean over positions of the distributions' Fisher kurtosis (positions where it is undefined, uniform
    distributions, are left out)."""
    values = np.asarray(kurtosis(ctx))
    defined = values[np.isfinite(values)]
    return float(np.mean(defined)) if defined.size else float("nan")


@method(
    "perplexity",
    ("uncertainty",),
    "sequence",
    MORE_UNCERTAIN,
    ("logprob",),
    paper="Perplexity - a measure of the difficulty of speech recognition tasks (Jelinek, Mercer, Bahl and Baker 1977)",
)
def perplexity(ctx: Context) -> float:
    """exp(-mean_t log p(x_t))."""
    return float(np.exp(-np.mean(ctx.data.logprob)))


@method(
    "mean_entropy",
    ("uncertainty", "detect"),
    "sequence",
    MORE_UNCERTAIN,
    ("entropy",),
    paper=f"{LM_POLYGRAPH}; as a detector, the entropy baseline of {DETECTGPT}",
)
def mean_entropy(ctx: Context) -> float:
    """Mean predictive entropy over positions (also the "entropy" zero-shot detector of the DetectGPT
    baselines, where machine text scores lower)."""
    return float(np.mean(ctx.data.entropy))


@method("max_entropy", ("uncertainty",), "sequence", MORE_UNCERTAIN, ("entropy",), paper=LM_POLYGRAPH)
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
    paper=SWIREASONING,
    params=(Param("block_size", 16, "positions per block", 1, 65536, kind="int"),),
    undefined="the span fits in one block of `block_size` positions, and a slope needs at least two blocks",
)
def entropy_trend(ctx: Context) -> dict[str, float | list[float]]:
    """Block-wise mean entropy and its least-squares slope per block (SwiReasoning's block confidence from
    entropy trends). `slope` is in nats per block (undefined for a single block); `blocks` lists the block means."""
    blocks = block_means(ctx.data.entropy, int(ctx.params["block_size"]))
    slope = float(np.polyfit(np.arange(len(blocks)), blocks, 1)[0]) if len(blocks) > 1 else float("nan")
    return {"slope": slope, "blocks": blocks.tolist()}
