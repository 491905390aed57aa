"""The tuned lens's parts (Belrose et al. 2023) against a float64 transcription of the `tuned-lens` package (0.2.0:
nn/lenses.py TunedLens, scripts/train_loop.py's KL loss, scripts/ingredients.py's optimiser and schedule) on random
small tensors; training on a synthetic model whose layers are known distortions of the final state lowers the
held-out KL at every layer; the stored float16 translators read as trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.heads.tuned_lens import (
    LensData,
    Translators,
    from_stored,
    held_out_split,
    layer_kl,
    lens_kl,
    lens_optimizer,
    stored,
    train_translators,
)

D, V = 8, 50


def _reference_kl(final: np.ndarray, lens: np.ndarray) -> float:
    """tuned-lens' loss in float64: labels = log_softmax(final); sum(exp(labels) * (labels - log_softmax(lens)))
    over the vocabulary, the mean over positions."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # type: ignore[no-any-return]

    labels = log_softmax(final)
    return float(np.mean(np.sum(np.exp(labels) * (labels - log_softmax(lens)), axis=-1)))


def test_the_objective_is_tuned_lens_kl_in_float64() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 8.0):
        final, lens = rng.normal(size=(2, 7, V)) * scale
        ours = float(lens_kl(torch.from_numpy(final), torch.from_numpy(lens)))
        assert ours == pytest.approx(_reference_kl(final, lens), abs=1e-12, rel=1e-12)
        assert ours > 1e-3  # two random rows differ: the check could fail
    assert float(lens_kl(torch.from_numpy(final), torch.from_numpy(final))) == pytest.approx(0.0, abs=1e-12)


def test_translators_start_as_the_identity_so_the_lens_starts_as_the_logit_lens() -> None:
    """TunedLens.__init__: each translator a Linear(d, d) with zeroed weight and bias, added residually."""
    translators = Translators(3, D)
    assert not translators.weight.any() and not translators.bias.any()
    h = torch.randn(5, D, dtype=torch.float64)
    reference = torch.nn.Linear(D, D, dtype=torch.float64)
    reference.weight.data.zero_()
    reference.bias.data.zero_()
    for layer in range(3):
        out = translators.double()(h, layer)
        torch.testing.assert_close(out, h + reference(h), rtol=0, atol=0)
    with torch.no_grad():  # and any translator is h + W h + b
        translators.weight.normal_()
        translators.bias.normal_()
        torch.testing.assert_close(
            translators(h, 1), h + h @ translators.weight[1].T + translators.bias[1], rtol=1e-12, atol=1e-12
        )


def test_sgd_steps_equal_nesterov_sgd_with_tuned_lens_lr_decay_and_weight_decay() -> None:
    """ingredients.Optimizer (SGD, the default): lr = lr_scale * (1 - momentum), Nesterov, weight decay; the LR decays
    linearly to zero over the steps (get_linear_schedule_with_warmup with no warm-up), written out in float64."""
    steps, momentum, wd, lr_scale = 5, 0.9, 1e-3, 1.0
    rng = np.random.default_rng(1)
    start = rng.normal(size=(4, 3))
    param = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt, schedule = lens_optimizer([param], steps, "sgd", lr_scale, momentum, wd)
    p, buf = start.copy(), None
    for k in range(steps):
        grad = rng.normal(size=(4, 3))
        param.grad = torch.from_numpy(grad.copy())
        opt.step()
        schedule.step()
        lr = lr_scale * (1 - momentum) * (steps - k) / steps
        g = grad + wd * p
        buf = g if buf is None else momentum * buf + g
        p = p - lr * (g + momentum * buf)
        np.testing.assert_allclose(param.detach().numpy(), p, rtol=1e-12, atol=1e-12)
    assert opt.param_groups[0]["lr"] == 0.0


def test_adam_has_tuned_lens_amsgrad_and_a_fifth_of_the_steps_of_warmup() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    opt, schedule = lens_optimizer([param], 10, "adam", 2.0, 0.9, 1e-3)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adam) and group["amsgrad"] and group["betas"] == (0.9, 0.999)
    lrs = []
    for _ in range(10):
        lrs.append(group["lr"])
        param.grad = torch.ones(2)
        opt.step()
        schedule.step()
    # warm-up over 2 steps, then transformers' linear decay to zero at steps - warm-up (the package passes
    # num_training_steps = steps - warm-up): factor (8 - k) / 6 from step 2
    assert lrs[:3] == pytest.approx([0.0, 1e-3, 2e-3])
    assert lrs[3:] == pytest.approx([2e-3 * (8 - k) / 6 for k in range(3, 8)] + [0.0, 0.0])


def _synthetic(n: int, layers: int, seed: int, readout_w: torch.Tensor) -> LensData:
    """Layer L's state is a fixed random linear distortion of the pre-norm final state (stronger for early layers);
    the final states are that state through the norm."""
    gen = torch.Generator().manual_seed(seed)
    pre = torch.randn(n, D, generator=gen) * 2
    maps = torch.Generator().manual_seed(99)
    states = []
    for layer in range(layers):
        distortion = torch.randn(D, D, generator=maps) * (0.6 / (layer + 1))
        states.append(pre @ (torch.eye(D) + distortion).T + 0.3 * torch.randn(D, generator=maps))
    return LensData(torch.stack(states), torch.nn.functional.layer_norm(pre, (D,)))


def test_training_lowers_the_held_out_kl_at_every_layer() -> None:
    readout_w = torch.randn(V, D, generator=torch.Generator().manual_seed(3))

    def readout(h: torch.Tensor) -> torch.Tensor:  # a layer's: the final norm, then the unembedding
        return torch.nn.functional.layer_norm(h, (D,)) @ readout_w.T

    def final_readout(h: torch.Tensor) -> torch.Tensor:  # the final states: normed already
        return h @ readout_w.T

    train, held = _synthetic(400, 3, 0, readout_w), _synthetic(200, 3, 1, readout_w)
    translators = train_translators(train, readout, final_readout, steps=150, batch_positions=64, seed=0)
    logit = layer_kl(None, held, readout, final_readout, 64)
    tuned = layer_kl(translators, held, readout, final_readout, 64)
    assert all(t < 0.5 * g for t, g in zip(tuned, logit, strict=True)), (tuned, logit)
    again = train_translators(train, readout, final_readout, steps=150, batch_positions=64, seed=0)  # seeded
    torch.testing.assert_close(again.weight, translators.weight, rtol=0, atol=0)
    # the stored float16 translators read as the trained ones
    kept = from_stored(stored(translators))
    np.testing.assert_allclose(layer_kl(kept, held, readout, final_readout, 64), tuned, rtol=1e-2)
    assert stored(translators)["weight"].dtype == np.float16


def test_held_out_split_keeps_one_text_on_each_side() -> None:
    for n in (2, 3, 10, 50):
        train, held = held_out_split(n, 0.2, 7)
        assert sorted(train + held) == list(range(n)) and train and held
    assert len(held_out_split(50, 0.2, 7)[1]) == 10
    assert held_out_split(10, 0.2, 7) == held_out_split(10, 0.2, 7)


@pytest.mark.parametrize(("optimizer", "steps"), [("sgd", 7), ("adam", 10), ("adam", 23)])
def test_the_schedule_is_transformers_linear_schedule_as_tuned_lens_calls_it(optimizer: str, steps: int) -> None:
    from transformers import get_linear_schedule_with_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    opt, schedule = lens_optimizer([param], steps, optimizer, 1.0, 0.9, 1e-3)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    warmup = steps // 5 if optimizer == "adam" else 0
    reference = get_linear_schedule_with_warmup(plain, warmup, steps - warmup)  # as ingredients.py calls it
    for _ in range(steps):
        assert schedule.get_last_lr()[0] / opt.defaults["lr"] == pytest.approx(
            reference.get_last_lr()[0], rel=1e-12, abs=1e-15
        )
        opt.step()
        plain.step()
        schedule.step()
        reference.step()
