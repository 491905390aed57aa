"""Machine-written text detection from one scoring model's distributions.

Log-likelihood, log-rank and entropy are the zero-shot baselines of DetectGPT (Mitchell et al. 2023);
LRR is DetectLLM's log-likelihood/log-rank ratio (Su et al. 2023); GLTR buckets ranks (Gehrmann et al. 2019);
Fast-DetectGPT's analytic sampling discrepancy (Bao et al. 2024) with the scorer as its own reference.
"""

from __future__ import annotations

import numpy as np

from app.analysis.base import Context, method

MACHINE = "more likely machine-written"
GLTR_EDGES = (10, 100, 1000)


@method("log_likelihood", ("detect",), "sequence", MACHINE, ("logprob",))
def log_likelihood(ctx: Context) -> float:
    """Mean log p(x_t) under the scoring model (DetectGPT's likelihood baseline)."""
    return float(np.mean(ctx.data.logprob))


@method("log_rank", ("detect",), "sequence", MACHINE, ("rank",))
def log_rank(ctx: Context) -> float:
    """-mean log rank(x_t) (DetectGPT's log-rank baseline, negated so that higher means machine)."""
    return float(-np.mean(np.log(ctx.data.rank)))


@method("lrr", ("detect",), "sequence", MACHINE, ("logprob", "rank"))
def lrr(ctx: Context) -> float:
    """Log-likelihood log-rank ratio, -sum log p(x_t) / sum log rank(x_t) (DetectLLM, Su et al. 2023)."""
    total_log_rank = max(float(np.sum(np.log(ctx.data.rank))), 1e-12)
    return float(-np.sum(ctx.data.logprob) / total_log_rank)


@method("gltr", ("detect",), "sequence", "the share of tokens in that rank bucket", ("rank",))
def gltr(ctx: Context) -> dict[str, float]:
    """Fractions of tokens whose rank falls in the top 10, 11-100, 101-1000 and beyond (GLTR, Gehrmann et
    al. 2019); machine text concentrates in the top 10."""
    rank = ctx.data.rank
    lo = 0
    out = {}
    for edge in GLTR_EDGES:
        out[f"top{edge}"] = float(np.mean((rank > lo) & (rank <= edge)))
        lo = edge
    out["rest"] = float(np.mean(rank > lo))
    return out


@method("fast_detectgpt", ("detect",), "sequence", MACHINE, ("logprob", "entropy", "logp_m2"))
def fast_detectgpt(ctx: Context) -> float:
    """Fast-DetectGPT's analytic sampling discrepancy (Bao et al. 2024), scorer p = `model`, reference q =
    `reference_model` (or the scorer itself): (sum_t log p(x_t) - sum_t mu_t) / sqrt(sum_t sigma_t^2) with
    mu_t = sum_v q(v) log p(v) and sigma_t^2 = sum_v q(v) (log p(v))^2 - mu_t^2."""
    d = ctx.data
    if ctx.cross is None:
        mu, var = d.logp_mean, d.logp_var
    else:
        mu = ctx.cross["q_logp_mean"]
        var = ctx.cross["q_logp_m2"] - mu**2
    return float((np.sum(d.logprob) - np.sum(mu)) / np.sqrt(np.sum(var)))


@method(
    "binoculars",
    ("detect",),
    "sequence",
    "more likely human-written (machine text scores low)",
    ("logprob",),
    requires=("cross",),
)
def binoculars(ctx: Context) -> float:
    """Binoculars (Hans et al. 2024): log PPL of the performer p = `model` over the cross-perplexity
    X-PPL = mean_t -sum_v q(v) log p(v) with the observer q = `reference_model`."""
    assert ctx.cross is not None
    return float(-np.mean(ctx.data.logprob) / -np.mean(ctx.cross["q_logp_mean"]))
