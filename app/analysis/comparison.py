"""Comparing two distributions over the same text: two models, or one model with and without a context.

p is the model under study (`model`, or the model with the context), q the reference (`reference_model`, or
the model without the context). Per-token KL and JS; URIAL's token shift (Lin et al. 2024, "The Unlocking
Spell on Base LLMs"); CK-PLUG's confidence gain (Bi et al. 2025, "Parameters vs. Context"); drift as per-turn
KL (Dongre et al. 2025, "Drift No More? Context Equilibria in Multi-Turn LLM Interactions").
"""

from __future__ import annotations

import numpy as np

from app.analysis.base import Context, method

APART = "p and q disagree more"
CROSS = ("cross",)

KL = "On Information and Sufficiency (Kullback and Leibler 1951)"
JS = "Divergence Measures Based on the Shannon Entropy (Lin 1991)"
URIAL = (
    "The Unlocking Spell on Base LLMs: Rethinking Alignment via In-Context Learning (Lin et al. 2024), arXiv:2312.01552"
)
CK_PLUG = (
    "Parameters vs. Context: Fine-Grained Control of Knowledge Reliance in Language Models (Bi et al. 2025), "
    "arXiv:2503.15888"
)
DRIFT = "Drift No More? Context Equilibria in Multi-Turn LLM Interactions (Dongre et al. 2025), arXiv:2510.07777"


def _cross(ctx: Context, name: str) -> np.ndarray:
    assert ctx.cross is not None
    return ctx.cross[name]


@method("kl", ("compare",), "token", APART, (), paper=KL, requires=CROSS)
def kl(ctx: Context) -> np.ndarray:
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)) at each position."""
    return _cross(ctx, "kl_pq")


@method("reverse_kl", ("compare",), "token", APART, (), paper=KL, requires=CROSS)
def reverse_kl(ctx: Context) -> np.ndarray:
    """KL(q || p)."""
    return _cross(ctx, "kl_qp")


@method("js", ("compare",), "token", APART, (), paper=JS, requires=CROSS)
def js(ctx: Context) -> np.ndarray:
    """Jensen-Shannon divergence (nats): (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2."""
    return _cross(ctx, "js")


@method("mean_kl", ("compare",), "sequence", APART, (), paper=KL, requires=CROSS)
def mean_kl(ctx: Context) -> float:
    """Mean over positions of KL(p || q)."""
    return float(np.mean(_cross(ctx, "kl_pq")))


@method("mean_js", ("compare",), "sequence", APART, (), paper=JS, requires=CROSS)
def mean_js(ctx: Context) -> float:
    """Mean over positions of the Jensen-Shannon divergence."""
    return float(np.mean(_cross(ctx, "js")))


@method(
    "shift_rank",
    ("compare",),
    "token",
    "p's choice is more foreign to q",
    (),
    paper=URIAL,
    requires=CROSS,
    integer=True,
)
def shift_rank(ctx: Context) -> np.ndarray:
    """URIAL token shift: the rank under q (the base model) of p's (the aligned model's) most likely token."""
    return _cross(ctx, "rank_ptop_in_q")


@method(
    "urial_shift", ("compare",), "sequence", "the share of positions in that class", (), paper=URIAL, requires=CROSS
)
def urial_shift(ctx: Context) -> dict[str, float]:
    """URIAL's classes of token shift: unshifted (rank 1 under the base model), marginal (rank 2-3),
    shifted (beyond)."""
    rank = _cross(ctx, "rank_ptop_in_q")
    return {
        "unshifted": float(np.mean(rank == 1)),
        "marginal": float(np.mean((rank >= 2) & (rank <= 3))),
        "shifted": float(np.mean(rank > 3)),
    }


@method(
    "confidence_gain",
    ("compare",),
    "token",
    "the context made the model more confident",
    ("entropy",),
    paper=CK_PLUG,
    requires=("reference",),
)
def confidence_gain(ctx: Context) -> np.ndarray:
    """CK-PLUG confidence gain H(q) - H(p) = H(p(.|x)) - H(p(.|c, x)): the entropy the context removed."""
    assert ctx.reference is not None
    return np.asarray(ctx.reference.entropy - ctx.data.entropy)


@method(
    "mean_confidence_gain",
    ("compare",),
    "sequence",
    "the context made the model more confident",
    ("entropy",),
    paper=CK_PLUG,
    requires=("reference",),
)
def mean_confidence_gain(ctx: Context) -> float:
    """Mean CK-PLUG confidence gain over positions."""
    return float(np.mean(np.asarray(confidence_gain(ctx))))


@method(
    "drift",
    ("compare",),
    "sequence",
    "the test model drifts further from the reference",
    (),
    paper=DRIFT,
    requires=("cross", "turns"),
    undefined="no chat turn holds a position of the span",
)
def drift(ctx: Context) -> dict[str, float | list[float]]:
    """Per-turn drift: the mean KL(p_test || p_ref) over each chat message's tokens (a message's turn runs from
    the end of the previous message's rendering to the end of its own, so the template's default system prompt
    belongs to the first turn); `mean` averages the turns that hold positions, `per_turn` lists them
    (null-free: turns without positions are left out)."""
    assert ctx.turns is not None
    kl_pq = _cross(ctx, "kl_pq")
    per_turn = [float(np.mean(kl_pq[a:b])) for a, b in ctx.turns if b > a]
    return {"mean": float(np.mean(per_turn)) if per_turn else float("nan"), "per_turn": per_turn}
