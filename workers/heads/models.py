"""The three kinds of head as small torch modules. Inputs arrive normalised by buffers the module carries, so the
stored weights (its state dict) are everything the gateway's numpy forward needs.

Both pooled kinds pass each position's normalised inputs on beside the MLP's output (a linear path: the mean of a
token statistic, the zero-shot baselines' shape, is then one weight away).

- PAWN (arXiv 2501.03940): per-token features -> MLP; a gate from the projected hidden states of the current and
  next position and the position -> softmax over the sequence -> weighted sum of the token features -> logit. The
  read-out also sees the gate-weighted Fast-DetectGPT criterion (Bao et al. 2024, arXiv 2310.05130), a ratio of
  sums that no linear read-out of pooled means can form (`weighted_criterion`); training starts from a logistic
  fit of the read-out at uniform weights, where that input is the zero-shot criterion itself (workers/heads/train).
- LOS: each position's sorted top-k probabilities and the actual token's probability (and their logarithms) -> a
  position-wise MLP ->
  attention and mean pooling over positions -> logit.
- probe: a logistic probe on the mean (or last) hidden state of the span, standardised.
- stack: the same logistic model over analysis methods' sequence values, an undefined value read as `fill` (the
  feature's mean over the training examples).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workers.contract.head_features import CRITERION_COLUMNS, CRITERION_FLOOR

POSITION_SCALE = 8.0  # the gate sees log(1 + t) / POSITION_SCALE


def position_feature(positions: torch.Tensor) -> torch.Tensor:
    return torch.log1p(positions.to(torch.float32)) / POSITION_SCALE


def weighted_criterion(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Fast-DetectGPT's analytic criterion with position weights w_t (zero where masked): sum_t w_t (lp_t + H_t) /
    sqrt(sum_t w_t^2 sigma_t^2), the standardised weighted sum of each token's log-probability above its expectation
    (mu_t = -H_t, variance sigma_t^2) under the model's own distribution. Uniform weights give the paper's
    sum_t (lp_t + H_t) / sqrt(sum_t sigma_t^2) (but for the floor), whatever the weights' scale.
    feats [B, T, F] raw, weights [B, T] -> [B]."""
    lp, entropy, std = (feats[..., c] for c in CRITERION_COLUMNS)
    numerator = (weights * (lp + entropy)).sum(dim=-1)
    w2 = weights * weights
    return numerator / torch.sqrt((w2 * (std * std + CRITERION_FLOOR)).sum(dim=-1))


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = logits.masked_fill(~mask, -math.inf)
    return torch.softmax(logits, dim=-1)


class Pawn(nn.Module):
    """The read-out's inputs: the gate-weighted token features (normalised inputs, then the MLP's outputs) and the
    gate-weighted criterion, standardised by `crit_mean`/`crit_std` (fitted as the zero-shot criterion's)."""

    feat_mean: torch.Tensor
    feat_std: torch.Tensor
    hid_mean: torch.Tensor
    hid_proj: torch.Tensor
    crit_mean: torch.Tensor
    crit_std: torch.Tensor

    def __init__(self, n_features: int, hidden_size: int, gate_dims: int, width: int, gate_width: int) -> None:
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(n_features))
        self.register_buffer("feat_std", torch.ones(n_features))
        self.register_buffer("hid_mean", torch.zeros(hidden_size))
        self.register_buffer("hid_proj", torch.zeros(hidden_size, gate_dims))
        self.register_buffer("crit_mean", torch.zeros(1))
        self.register_buffer("crit_std", torch.ones(1))
        self.f1 = nn.Linear(n_features, width)
        self.f2 = nn.Linear(width, width)
        self.g1 = nn.Linear(2 * gate_dims + 1, gate_width)
        self.g2 = nn.Linear(gate_width, 1)
        self.out = nn.Linear(n_features + width + 1, 1)  # the criterion last
        self.dropout = nn.Dropout(0.0)
        nn.init.zeros_(self.g2.weight)  # training starts from the plain mean over positions
        nn.init.zeros_(self.g2.bias)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., D] onto the gate's principal directions [..., r]."""
        return (hidden - self.hid_mean) @ self.hid_proj

    def forward(
        self,
        feats: torch.Tensor,  # [B, T, F]
        current: torch.Tensor,  # [B, T, r] projected hidden state that predicted token t
        following: torch.Tensor,  # [B, T, r] projected hidden state at token t (zeros where there is none)
        positions: torch.Tensor,  # [B, T] position t
        mask: torch.Tensor,  # [B, T] bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = (feats - self.feat_mean) / self.feat_std
        token = torch.cat([x, torch.relu(self.f2(self.dropout(torch.relu(self.f1(x)))))], dim=-1)
        gate_in = torch.cat([current, following, position_feature(positions).unsqueeze(-1)], dim=-1)
        gate = self.g2(torch.relu(self.g1(gate_in))).squeeze(-1)
        weights = _masked_softmax(gate, mask)
        pooled = self.dropout((weights.unsqueeze(-1) * token).sum(dim=1))
        criterion = (weighted_criterion(feats, weights) - self.crit_mean) / self.crit_std
        return self.out(torch.cat([pooled, criterion.unsqueeze(-1)], dim=-1)).squeeze(-1), weights


LOS_LOG_FLOOR = 1e-12


def los_inputs(feats: torch.Tensor) -> torch.Tensor:
    """The output signature as the network reads it: the probabilities and their logarithms side by side."""
    return torch.cat([feats, torch.log(feats.clamp(min=LOS_LOG_FLOOR))], dim=-1)


class Los(nn.Module):
    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, n_features: int, width: int) -> None:
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(2 * n_features))
        self.register_buffer("feat_std", torch.ones(2 * n_features))
        self.e1 = nn.Linear(2 * n_features, width)
        self.e2 = nn.Linear(width, width)
        self.attn = nn.Linear(2 * n_features + width, 1)
        self.out = nn.Linear(2 * (2 * n_features + width), 1)
        self.dropout = nn.Dropout(0.0)
        nn.init.zeros_(self.attn.weight)
        nn.init.zeros_(self.attn.bias)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (los_inputs(feats) - self.feat_mean) / self.feat_std
        enc = torch.cat([x, torch.relu(self.e2(self.dropout(torch.relu(self.e1(x)))))], dim=-1)
        weights = _masked_softmax(self.attn(enc).squeeze(-1), mask)
        m = mask.unsqueeze(-1).to(enc.dtype)
        mean = (enc * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        pooled = torch.cat([(weights.unsqueeze(-1) * enc).sum(dim=1), mean], dim=-1)
        return self.out(self.dropout(pooled)).squeeze(-1), weights


class Probe(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))
        self.lin = nn.Linear(hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        logit: torch.Tensor = self.lin((pooled - self.mean) / self.std).squeeze(-1)
        return logit


class Stack(Probe):
    """A probe over a stack head's features; `fill` stands in for an undefined (NaN) value."""

    fill: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__(n_features)
        self.register_buffer("fill", torch.zeros(n_features))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.where(torch.isnan(pooled), self.fill, pooled))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
