"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens"): per
layer below the last an affine translator, added residually to the layer's raw state, then the model's own final
norm and unembedding; trained to minimise KL(final || lens) at the same position.

Objective, initialisation and optimiser as the `tuned-lens` package (0.2.0) has them: translators start at zero (the
lens starts as the logit lens), the loss is `sum(p_final * (log p_final - log_softmax(lens)))` averaged over
positions (token shift 0), SGD with Nesterov momentum 0.9 at lr 1 * (1 - 0.9), weight decay 1e-3, the gradient
clipped to norm 1 over all translators, the learning rate decayed linearly to zero (no warm-up for SGD; Adam, the
package's other choice, gets amsgrad, lr 1e-3 and a fifth of the steps of warm-up). Unlike the package, which trains
on 2^18 tokens a step in bfloat16, a step here is a seeded mini-batch of positions, in float32."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers.lanes import checkpoint

LensReadout = Callable[[torch.Tensor], torch.Tensor]  # states [n, d] -> logits [n, V]


class Translators(nn.Module):
    """One affine map per layer, zero at the start: layer L's state h is read as h + W_L h + b_L."""

    def __init__(self, n_layers: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layers, hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(n_layers, hidden_size))

    def forward(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        return states + nn.functional.linear(states, self.weight[layer], self.bias[layer])


def lens_kl(final_logits: torch.Tensor, lens_logits: torch.Tensor) -> torch.Tensor:
    """KL(final || lens) in nats, the mean over rows: tuned-lens' training loss (LossChoice.KL, shift 0)."""
    labels = final_logits.log_softmax(dim=-1)  # (the package: .float() of bfloat16 logits; ours are float32)
    return torch.sum(labels.exp() * (labels - lens_logits.log_softmax(-1)), dim=-1).mean()


def lens_optimizer(
    params: list[nn.Parameter], steps: int, optimizer: str, lr_scale: float, momentum: float, weight_decay: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """tuned-lens' optimiser and schedule (scripts/ingredients.py `Optimizer`): SGD with Nesterov momentum at an LR
    of lr_scale * (1 - momentum) (undoing PyTorch's 1 / (1 - momentum) gain), or Adam (amsgrad, lr_scale * 1e-3);
    the LR decays linearly to zero after a warm-up (none for SGD, min(1000, steps // 5) for Adam)."""
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=lr_scale * (1 - momentum), momentum=momentum, nesterov=True, weight_decay=weight_decay
        )
        warmup = 0
    else:
        opt = torch.optim.Adam(
            params, amsgrad=True, betas=(momentum, 0.999), lr=lr_scale * 1e-3, weight_decay=weight_decay
        )
        warmup = min(1000, steps // 5)
    decay = steps - warmup  # transformers' get_linear_schedule_with_warmup(opt, warmup, steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (decay - step) / max(1, decay - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class LensData:
    """Positions' states: raw layer states [L, n, d] (layers 0..L-1) and the final states [n, d] (the decoder's
    output, already through its final norm), float32; `final_readout` gives the final states' logits (the
    unembedding alone) and `readout` a layer's (the final norm, then the unembedding)."""

    states: torch.Tensor
    final: torch.Tensor

    @property
    def n_positions(self) -> int:
        return int(self.final.shape[0])


def layer_kl(
    translators: Translators | None, data: LensData, readout: LensReadout, final_readout: LensReadout, chunk: int
) -> list[float]:
    """Per layer the mean KL(final || lens) over the data's positions: the tuned lens, or the logit lens (None)."""
    n_layers, n = int(data.states.shape[0]), data.n_positions
    sums = [0.0] * n_layers
    with torch.no_grad():
        for lo in range(0, n, chunk):
            final = final_readout(data.final[lo : lo + chunk])
            for layer in range(n_layers):
                h = data.states[layer, lo : lo + chunk]
                h = h if translators is None else translators(h, layer)
                sums[layer] += float(lens_kl(final, readout(h))) * int(h.shape[0])
                checkpoint()  # a slice: one chunk of one layer
    return [s / n for s in sums]


def train_translators(
    data: LensData,
    readout: LensReadout,
    final_readout: LensReadout,
    steps: int,
    batch_positions: int,
    seed: int,
    optimizer: str = "sgd",
    lr_scale: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    progress: Callable[[int], None] | None = None,
) -> Translators:
    """`steps` optimiser steps, each on a seeded mini-batch of positions, every layer's loss backpropagated in turn
    (as the package does, layer by layer), then the gradient clipped to norm 1 over all translators."""
    n_layers, hidden_size = int(data.states.shape[0]), int(data.states.shape[2])
    torch.manual_seed(seed)
    translators = Translators(n_layers, hidden_size)
    opt, schedule = lens_optimizer(list(translators.parameters()), steps, optimizer, lr_scale, momentum, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    size = min(batch_positions, data.n_positions)
    for step in range(steps):
        rows = torch.randperm(data.n_positions, generator=gen)[:size]
        with torch.no_grad():
            final = final_readout(data.final[rows])
        for layer in range(n_layers):
            loss = lens_kl(final, readout(translators(data.states[layer, rows], layer)))
            loss.backward()  # type: ignore[no-untyped-call]
            checkpoint()  # a slice: one layer of one step
        nn.utils.clip_grad_norm_(translators.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        schedule.step()
        if progress is not None:
            progress(step + 1)
    return translators


def stored(translators: Translators) -> dict[str, np.ndarray]:
    """The translators as kept: float16 (their values are small offsets from the identity)."""
    return {
        "weight": translators.weight.detach().to(torch.float16).numpy(),
        "bias": translators.bias.detach().to(torch.float16).numpy(),
    }


def from_stored(weights: dict[str, np.ndarray]) -> Translators:
    weight, bias = (torch.from_numpy(weights[k].astype(np.float32)) for k in ("weight", "bias"))
    if weight.ndim != 3 or weight.shape[1] != weight.shape[2] or bias.shape != weight.shape[:2]:
        raise ValueError(f"a tuned lens's translators of shapes {list(weight.shape)} and {list(bias.shape)}")
    translators = Translators(int(weight.shape[0]), int(weight.shape[1]))
    with torch.no_grad():
        translators.weight.copy_(weight)
        translators.bias.copy_(bias)
    return translators.requires_grad_(False)


def held_out_split(n_texts: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Texts for training and texts held out (a seeded `fraction`, at least one of each)."""
    order = np.random.default_rng(seed).permutation(n_texts)
    n_held = min(max(1, math.floor(fraction * n_texts + 0.5)), n_texts - 1)
    return sorted(order[n_held:].tolist()), sorted(order[:n_held].tolist())
