"""Machine-written text detection from one scoring model's distributions.

Log-likelihood, log-rank and entropy are the zero-shot baselines of DetectGPT (Mitchell et al. 2023);
LRR is DetectLLM's log-likelihood/log-rank ratio (Su et al. 2023); GLTR buckets ranks (Gehrmann et al. 2019);
Fast-DetectGPT's analytic sampling discrepancy (Bao et al. 2024) with the scorer as its own reference.
"""

from __future__ import annotations

import numpy as np

from app.analysis.base import Context, method, variance_is_zero
from app.analysis.uncertainty import DETECTGPT, GLTR

MACHINE = "more likely machine-written"
GLTR_EDGES = (10, 100, 1000)
XENT_ATOL = 1e-6  # nats: a mean cross-entropy below this is 0 within the rounding of float32 log-probabilities

DETECTLLM = (
    "DetectLLM: Leveraging Log Rank Information for Zero-Shot Detection of Machine-Generated Text "
    "(Su et al. 2023), arXiv:2306.05540"
)
FAST_DETECTGPT = (
    "Fast-DetectGPT: Efficient Zero-Shot Detection of Machine-Generated Text via Conditional Probability "
    "Curvature (Bao et al. 2024), arXiv:2310.05130"
)
BINOCULARS = (
    "Spotting LLMs With Binoculars: Zero-Shot Detection of Machine-Generated Text (Hans et al. 2024), arXiv:2401.12070"
)


@method("log_likelihood", ("detect",), "sequence", MACHINE, ("logprob",), paper=DETECTGPT)
def log_likelihood(ctx: Context) -> float:
    """Mean log p(x_t) under the scoring model (DetectGPT's likelihood baseline)."""
    return float(np.mean(ctx.data.logprob))


@method("log_rank", ("detect",), "sequence", MACHINE, ("rank",), paper=DETECTGPT)
def log_rank(ctx: Context) -> float:
    """-mean log rank(x_t) (DetectGPT's log-rank baseline, negated so that higher means machine)."""
    return float(-np.mean(np.log(ctx.data.rank)))


@method(
    "lrr",
    ("detect",),
    "sequence",
    MACHINE,
    ("logprob", "rank"),
    paper=DETECTLLM,
    undefined="every token has rank 1, so the sum of log-ranks (the denominator) is 0",
)
def lrr(ctx: Context) -> float:
    """Log-likelihood log-rank ratio, -sum log p(x_t) / sum log rank(x_t). Ranks are integers, so the
    denominator is 0 (every token ranked first) or at least log 2."""
    total_log_rank = float(np.sum(np.log(ctx.data.rank)))
    if total_log_rank < np.log(2) / 2:
        return float("nan")
    return float(-np.sum(ctx.data.logprob) / total_log_rank)


@method("gltr", ("detect",), "sequence", "the share of tokens in that rank bucket", ("rank",), paper=GLTR)
def gltr(ctx: Context) -> dict[str, float]:
    """Fractions of tokens whose rank falls in the top 10, 11-100, 101-1000 and beyond; machine text
    concentrates in the top 10."""
    rank = ctx.data.rank
    lo = 0
    out = {}
    for edge in GLTR_EDGES:
        out[f"top{edge}"] = float(np.mean((rank > lo) & (rank <= edge)))
        lo = edge
    out["rest"] = float(np.mean(rank > lo))
    return out


@method(
    "fast_detectgpt",
    ("detect",),
    "sequence",
    MACHINE,
    ("logprob", "entropy", "logp_m2"),
    paper=FAST_DETECTGPT,
    undefined="the reference's variances of log p sum to 0 (within rounding): every distribution is a point "
    "mass, or flat over the tokens it gives mass to",
)
def fast_detectgpt(ctx: Context) -> float:
    """Analytic sampling discrepancy with scorer p = `model` and reference q = `reference_model` (or the
    scorer itself): (sum_t log p(x_t) - sum_t mu_t) / sqrt(sum_t sigma_t^2) with mu_t = sum_v q(v) log p(v)
    and sigma_t^2 = sum_v q(v) (log p(v))^2 - mu_t^2."""
    d = ctx.data
    if ctx.cross is None:
        mu, m2, var = d.logp_mean, d.logp_m2, d.logp_var
    else:
        mu, m2 = ctx.cross["q_logp_mean"], ctx.cross["q_logp_m2"]
        var = m2 - mu**2
    total_var = float(np.sum(var))
    if variance_is_zero(total_var, float(np.sum(m2))):
        return float("nan")
    return float((np.sum(d.logprob) - np.sum(mu)) / np.sqrt(total_var))


@method(
    "binoculars",
    ("detect",),
    "sequence",
    "more likely human-written (machine text scores low)",
    ("logprob",),
    paper=BINOCULARS,
    requires=("cross",),
    undefined="the cross-perplexity (the denominator) is 0: observer and performer put all their mass on the "
    "same token at every position",
)
def binoculars(ctx: Context) -> float:
    """log PPL of the performer p = `model` over the cross-perplexity X-PPL = mean_t -sum_v q(v) log p(v) with
    the observer q = `reference_model`."""
    assert ctx.cross is not None
    cross_entropy = float(-np.mean(ctx.cross["q_logp_mean"]))
    if cross_entropy < XENT_ATOL:
        return float("nan")
    return float(-np.mean(ctx.data.logprob) / cross_entropy)
