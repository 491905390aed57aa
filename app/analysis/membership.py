"""Pretraining-data (membership) detection: was this text in the model's training data?

Min-K% Prob (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models"), Min-K%++ (Zhang et al.
2024) and DC-PDD ("Pretraining Data Detection for Large Language Models: A Divergence-based Calibration
Method", Zhang et al. 2024); ReCaLL (Xie et al. 2024) and Con-ReCall (Wang et al. 2024), which score the text
again after a prefix of non-member (and member) text. All point the same way: higher means more likely a member.
"""

from __future__ import annotations

import numpy as np

from app.analysis.base import Context, Param, lowest_fraction_mean, method, variance_is_zero

MEMBER = "more likely in the training data"
K = Param("k", 0.2, "fraction of lowest-scoring tokens averaged", 0.0001, 1.0)

MIN_K = "Detecting Pretraining Data from Large Language Models (Shi et al. 2024), arXiv:2310.16789"
MIN_K_PLUS_PLUS = (
    "Min-K%++: Improved Baseline for Detecting Pre-Training Data from Large Language Models (Zhang et al. 2024), "
    "arXiv:2404.02936"
)
DC_PDD = (
    "Pretraining Data Detection for Large Language Models: A Divergence-based Calibration Method "
    "(Zhang et al. 2024), arXiv:2409.14781"
)
RECALL = "ReCaLL: Membership Inference via Relative Conditional Log-Likelihoods (Xie et al. 2024), arXiv:2406.15968"
CON_RECALL = (
    "Con-ReCall: Detecting Pre-training Data in LLMs via Contrastive Decoding (Wang et al. 2024), arXiv:2409.03363"
)
NO_LIKELIHOOD = "the mean log-likelihood of the text on its own (the denominator) is 0"
FLAT = (
    "sigma_t is 0 (within rounding): log p is the same for every token the distribution gives mass to "
    "(a point mass, or flat over its support)"
)


@method("min_k", ("membership",), "sequence", MEMBER, ("logprob",), paper=MIN_K, params=(K,))
def min_k(ctx: Context) -> float:
    """Min-K% Prob: mean of the lowest k fraction of log p(x_t)."""
    return lowest_fraction_mean(ctx.data.logprob, ctx.params["k"])


@method(
    "min_k_zscore",
    ("membership",),
    "token",
    MEMBER,
    ("logprob", "entropy", "logp_m2"),
    paper=MIN_K_PLUS_PLUS,
    undefined=FLAT,
)
def min_k_zscore(ctx: Context) -> np.ndarray:
    """Min-K%++'s per-token score (log p(x_t) - mu_t) / sigma_t, with mu_t = sum p log p and
    sigma_t^2 = sum p (log p)^2 - mu_t^2."""
    d = ctx.data
    var = d.logp_var
    z = (d.logprob - d.logp_mean) / np.sqrt(var)
    return np.asarray(np.where(variance_is_zero(var, d.logp_m2), np.nan, z))


@method(
    "min_k_plus_plus",
    ("membership",),
    "sequence",
    MEMBER,
    ("logprob", "entropy", "logp_m2"),
    paper=MIN_K_PLUS_PLUS,
    params=(K,),
    undefined=f"at every position {FLAT}",
)
def min_k_plus_plus(ctx: Context) -> float:
    """Min-K%++: mean of the lowest k fraction of the per-token z-scores (log p(x_t) - mu_t) / sigma_t, over
    the positions where sigma_t is not 0."""
    z = np.asarray(min_k_zscore(ctx))
    z = z[np.isfinite(z)]
    return lowest_fraction_mean(z, ctx.params["k"]) if z.size else float("nan")


@method(
    "dc_pdd",
    ("membership",),
    "sequence",
    MEMBER,
    ("logprob",),
    paper=DC_PDD,
    params=(Param("a", 0.01, "cap on each token's calibrated score", 1e-9, 1e9),),
    requires=("frequencies",),
)
def dc_pdd(ctx: Context) -> float:
    """DC-PDD: mean over first occurrences of each token of min(p(x_t) * log(1 / f(x_t)), a), where f is the
    token's frequency in a reference corpus with add-one smoothing."""
    assert ctx.frequencies is not None
    d = ctx.data
    _, first = np.unique(d.token_ids, return_index=True)
    first.sort()
    calibrated = np.exp(d.logprob[first]) * -np.log(ctx.frequencies[d.token_ids[first]])
    return float(np.mean(np.minimum(calibrated, ctx.params["a"])))


def _prefixed_mean(ctx: Context, name: str) -> float:
    assert ctx.prefixed is not None
    return float(np.mean(ctx.prefixed[name].logprob))


@method(
    "recall",
    ("membership",),
    "sequence",
    MEMBER,
    ("logprob",),
    paper=RECALL,
    requires=("prefix",),
    undefined=NO_LIKELIHOOD,
)
def recall(ctx: Context) -> float:
    """ReCaLL: LL(x | P) / LL(x), the mean log p(x_t) with the non-member `prefix` P before the text over the
    mean without it, over the same positions (the reference code's conditional mean also counts the text's first
    token, predicted from P alone; a span has no position for it)."""
    alone = float(np.mean(ctx.data.logprob))
    return _prefixed_mean(ctx, "prefix") / alone if alone < 0 else float("nan")


@method(
    "con_recall",
    ("membership",),
    "sequence",
    MEMBER,
    ("logprob",),
    paper=CON_RECALL,
    params=(Param("gamma", 0.5, "weight of the member-prefix log-likelihood (the paper sweeps 0.1-1.0)", 0.0, 10.0),),
    requires=("prefix", "member_prefix"),
    undefined=NO_LIKELIHOOD,
)
def con_recall(ctx: Context) -> float:
    """Con-ReCall: (LL(x | P_non) - gamma LL(x | P_mem)) / LL(x), with the non-member `prefix` P_non and the
    `member_prefix` P_mem, over the same positions as ReCaLL."""
    alone = float(np.mean(ctx.data.logprob))
    if alone >= 0:
        return float("nan")
    return (_prefixed_mean(ctx, "prefix") - ctx.params["gamma"] * _prefixed_mean(ctx, "member_prefix")) / alone
