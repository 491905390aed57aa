"""Machine-written text detection from one scoring model's distributions.

Log-likelihood, log-rank and entropy are the zero-shot baselines of DetectGPT (Mitchell et al. 2023);
LRR is DetectLLM's log-likelihood/log-rank ratio (Su et al. 2023); GLTR buckets ranks (Gehrmann et al. 2019);
Fast-DetectGPT's analytic sampling discrepancy (Bao et al. 2024) with the scorer as its own reference; Lastde's
multiscale diversity entropy of the log-probability series (Xu et al. 2025); DNA-DetectLLM's repair effort toward
the most probable sequence (Zhu et al. 2025).
"""

from __future__ import annotations

import numpy as np

from app.analysis.base import Context, Param, method, variance_is_zero
from app.analysis.diversity_entropy import multiscale_diversity_entropy, shortest_series
from app.analysis.uncertainty import DETECTGPT, GLTR
from workers.contract.jobs import MAX_TOKEN_SAMPLES

MACHINE = "more likely machine-written"
GLTR_EDGES = (10, 100, 1000)
SPREAD_RTOL = 1e-12  # a spread of the samples' Lastde below this fraction of their mean is rounding: none at all
XENT_ATOL = 1e-6  # nats: a mean cross-entropy below this is 0 within the rounding of float32 log-probabilities

DETECTLLM = (
    "DetectLLM: Leveraging Log Rank Information for Zero-Shot Detection of Machine-Generated Text "
    "(Su et al. 2023), arXiv:2306.05540"
)
FAST_DETECTGPT = (
    "Fast-DetectGPT: Efficient Zero-Shot Detection of Machine-Generated Text via Conditional Probability "
    "Curvature (Bao et al. 2024), arXiv:2310.05130"
)
LASTDE = (
    "Training-free LLM-generated Text Detection by Mining Token Probability Sequences (Xu et al. 2025, ICLR), "
    "arXiv:2410.06072"
)
DNA_DETECTLLM = (
    "DNA-DetectLLM: Unveiling AI-Generated Text via a DNA-Inspired Mutation-Repair Paradigm (Zhu et al. 2025, "
    "NeurIPS), arXiv:2509.15550"
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


LASTDE_PARAMS = (
    Param("embed_size", 3, "orbit length s: consecutive values compared as one vector", 2, 64, "int"),
    Param("epsilon", 10.0, "intervals of [-1, 1] per position: epsilon * n bins for a span of n positions", 0.01, 1e3),
    Param("tau_prime", 5, "scales tau = 1..tau_prime of the moving average", 2, 64, "int"),
)


@method(
    "lastde",
    ("detect",),
    "sequence",
    MACHINE,
    ("logprob",),
    paper=LASTDE,
    params=LASTDE_PARAMS,
    undefined="the span is shorter than tau_prime + embed_size positions, or the multiscale diversity entropy "
    "is 0 (every scale's cosine similarities fall in the same intervals)",
)
def lastde(ctx: Context) -> float:
    """Lastde: mean log p(x_t) over the multiscale diversity entropy (MDE) of the series log p(x_t): the sample
    std over scales tau = 1..tau_prime of the diversity entropy of the tau-wide moving average, whose orbits of
    embed_size values are compared by neighbouring cosine similarity binned into int(epsilon * n) intervals of
    [-1, 1]. Defaults are the reference code's for open-source scorers (s = 3, epsilon = 10, tau' = 5); Lastde++ is
    `lastde_plusplus`."""
    series = ctx.data.logprob
    p = ctx.params
    embed, tau_max = int(p["embed_size"]), int(p["tau_prime"])
    bins = int(p["epsilon"] * series.size)
    if series.size < shortest_series(embed, tau_max) or bins < 1:
        return float("nan")
    mde = float(multiscale_diversity_entropy(series, embed, bins, tau_max))
    return float(np.mean(series) / mde) if mde > 0 else float("nan")


def lastde_columns(series: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Lastde of each column of series [T, n]: mean over MDE, NaN where the MDE is 0 or the span too short."""
    embed, tau_max = int(params["embed_size"]), int(params["tau_prime"])
    bins = int(params["epsilon"] * series.shape[0])
    if series.shape[0] < shortest_series(embed, tau_max) or bins < 1:
        return np.full(series.shape[1], np.nan)
    mde = multiscale_diversity_entropy(series, embed, bins, tau_max)
    return np.where(mde > 0, np.mean(series, axis=0) / np.where(mde > 0, mde, 1.0), np.nan)


LASTDE_PLUSPLUS_PARAMS = (
    Param("embed_size", 4, "orbit length s: consecutive values compared as one vector", 2, 64, "int"),
    Param("epsilon", 8.0, "intervals of [-1, 1] per position: epsilon * n bins for a span of n positions", 0.01, 1e3),
    Param("tau_prime", 15, "scales tau = 1..tau_prime of the moving average", 2, 64, "int"),
    Param("n_samples", 100, "sampled series: their Lastde gives the mean and spread", 2, MAX_TOKEN_SAMPLES, "int"),
    Param("seed", 0, "the draws' seed: the same seed, the same samples and value", 0, 2**32 - 1, "int"),
)


@method(
    "lastde_plusplus",
    ("detect",),
    "sequence",
    MACHINE,
    ("logprob",),
    paper=LASTDE,
    params=LASTDE_PLUSPLUS_PARAMS,
    requires=("token_samples",),
    undefined="the span is shorter than tau_prime + embed_size positions, the text's or a sample's multiscale "
    "diversity entropy is 0, or the samples' Lastde does not vary",
)
def lastde_plusplus(ctx: Context) -> float:
    """Lastde++: the text's Lastde standardised by Lastde over series sampled from the scorer itself, (Lastde(x) -
    mean_j Lastde(x~_j)) / std_j Lastde(x~_j) (n - 1 in the std), each x~_j a token drawn independently at every
    position from that position's distribution (Fast-DetectGPT's sampling) and scored by its log p. The worker that
    rebuilds the rows draws them (seeded: `seed`, `n_samples`). Defaults are the reference code's
    (lastde_doubleplus.py: s = 4, epsilon = 8, tau' = 15, 100 samples). Named only: it costs a pass over the rows."""
    assert ctx.token_samples is not None
    text = lastde_columns(ctx.data.logprob[:, None], ctx.params)[0]
    sampled = lastde_columns(ctx.token_samples, ctx.params)
    centre, spread = float(np.mean(sampled)), float(np.std(sampled, ddof=1))
    if not (np.isfinite(text) and np.all(np.isfinite(sampled))) or spread <= SPREAD_RTOL * abs(centre):
        return float("nan")
    return float((text - centre) / spread)


@method(
    "dna_detectllm",
    ("detect",),
    "sequence",
    "more likely human-written (machine text scores low)",
    ("logprob", "topk_logprobs", "entropy"),
    paper=DNA_DETECTLLM,
    undefined="the cross-entropy (the denominator) is 0: the observer puts all its mass on the performer's "
    "most likely token at every position",
)
def dna_detectllm(ctx: Context) -> float:
    """DNA-DetectLLM's score (its reference code's compute_score): (mean_t -log p(x_t) + mean_t -log max_v p(v))
    over 2 X-PPL, with X-PPL = mean_t -sum_v q(v) log p(v): the text's loss plus the loss of the fully repaired
    (argmax) sequence, relative to the cross-perplexity. p is the performer (`model`), q the observer
    (`reference_model`); without one the scorer observes itself (X-PPL = mean entropy)."""
    d = ctx.data
    cross_entropy = float(-np.mean(d.logp_mean if ctx.cross is None else ctx.cross["q_logp_mean"]))
    if cross_entropy < XENT_ATOL:
        return float("nan")
    repaired = -np.mean(d.top_logprobs[:, 0])
    return float((-np.mean(d.logprob) + repaired) / (2.0 * cross_entropy))
