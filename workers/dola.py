"""DoLa: decoding by contrasting layers (Chuang et al. 2024, "DoLa: Decoding by Contrasting Layers Improves
Factuality in Large Language Models", ICLR; code voidism/DoLa, ported to transformers' core `_dola_decoding`
up to 4.55).

At each step the final layer's next-token distribution q_N is contrasted with a premature layer's q_M, the
layer M picked among the candidates as the one farthest from q_N by the code's Jensen-Shannon measure
0.5 (KL(m || q_N) + KL(m || q_j)) / V with m = (q_N + q_j) / 2 (the paper writes JSD with KL(q || m); the
code, and transformers after it, take KL(m || q)). The next token is drawn from

    log q_N(x) - log q_M(x)   over the tokens with q_N(x) >= 0.1 max q_N   (the adaptive plausibility cut)

(the other tokens dropped). A premature layer's logits are the output head applied to that layer's output as
transformers' `hidden_states` gives it (no final norm: the reference's choice, kept so that greedy decodings
agree token for token); layer 0 is the embeddings.

`LayerStreams` makes a model's decoding streams DoLa streams: every step reads the candidate layers' states
at the last position (forward hooks on the decoder layers) and hands `decoding.Contrast` the contrast scores as
its one view's logits, so that DoLa runs, streams and is stopped like any other contrastive decoding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F

RELATIVE_TOP = 0.1  # the plausibility cut: keep tokens with q_N >= 0.1 max q_N
BASE_FILTER = -1e-3  # what the reference puts in the premature log-probabilities of cut tokens

LayerChoice = Literal["low", "high"] | list[int]


def candidate_layers(choice: LayerChoice, num_layers: int, tied: bool) -> list[int]:
    """The premature layers to pick from, as transformers' `dola_layers`: "low" every second layer of the lower
    half, "high" of the upper half (of the first or last 20 layers past 40 layers), starting past the embeddings
    (layer 2) when the output head is tied to them; a list, its layers below the final one."""
    if isinstance(choice, list):
        return [layer for layer in choice if layer < num_layers]
    start = 0 if not tied else 2 if num_layers > 2 else 1 if num_layers == 2 else 0
    if choice == "low":
        if start == num_layers // 2:
            return [start]
        return list(range(start, num_layers // 2 if num_layers <= 40 else 20, 2))
    return list(range(num_layers // 2, num_layers, 2) if num_layers <= 40 else range(num_layers - 20, num_layers, 2))


def dola_contrast(final: torch.Tensor, premature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DoLa's scores [B, V] from the final layer's logits [B, V] and the candidate layers' [B, L, V], and the
    index [B] of the premature layer each row contrasted (float32, as the reference computes them)."""
    final, premature = final.float(), premature.float()
    if premature.shape[1] == 1:
        picked = torch.zeros(final.shape[0], dtype=torch.long)
    else:
        mature_logp, premature_logp = F.log_softmax(final, dim=-1)[:, None], F.log_softmax(premature, dim=-1)
        middle = 0.5 * (F.softmax(final, dim=-1)[:, None] + F.softmax(premature, dim=-1))
        kl_mature = F.kl_div(mature_logp, middle, reduction="none").mean(-1)
        kl_premature = F.kl_div(premature_logp, middle, reduction="none").mean(-1)
        picked = (0.5 * (kl_mature + kl_premature)).argmax(-1)
    base = premature[torch.arange(final.shape[0]), picked]
    final_logp, base_logp = final.log_softmax(dim=-1), base.log_softmax(dim=-1)
    threshold = final_logp.max(dim=-1, keepdim=True).values + math.log(RELATIVE_TOP)
    cut = final_logp < threshold
    base_logp[cut] = BASE_FILTER
    final_logp[cut] = -math.inf
    return final_logp - base_logp, picked


class LayerStreams:
    """A transformers backend's decoding streams whose logits are DoLa's scores over `layers`: `prefill` and
    `feed` hand back, per row, the candidate layers' states and the final one stacked [L + 1, d];
    `next_logits` contrasts them. Everything else is the backend's (its card, tokenizer, stream batching)."""

    def __init__(self, inner: Any, layers: list[int]) -> None:
        self.inner, self.layers = inner, layers
        self.premature: list[int] = []  # per row of the latest scores: the premature layer DoLa contrasted
        self.lm_head = inner.model.get_output_embeddings()
        self.blocks = inner.decoder.layers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextmanager
    def _reading(self) -> Iterator[dict[int, torch.Tensor]]:
        """While open: each candidate layer's state at the last position of the latest forward [B, d] (layer 0
        the embeddings as the first decoder layer reads them, layer i the output of decoder layer i - 1)."""
        seen: dict[int, torch.Tensor] = {}
        handles = []

        def keep(layer: int, state: Any) -> None:
            seen[layer] = (state[0] if isinstance(state, tuple) else state)[:, -1]

        for layer in self.layers:
            if layer == 0:
                handles.append(
                    self.blocks[0].register_forward_pre_hook(
                        lambda _m, args, kwargs: keep(0, args[0] if args else kwargs["hidden_states"]),
                        with_kwargs=True,
                    )
                )
            else:
                handles.append(
                    self.blocks[layer - 1].register_forward_hook(lambda _m, _a, out, layer=layer: keep(layer, out))
                )
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()

    def prefill(self, prefixes: list[list[int]]) -> tuple[Any, list[torch.Tensor]]:
        with self._reading() as seen:
            streams, states = self.inner.prefill(prefixes)
        return streams, [self._stacked(seen, row, hidden[-1])[None] for row, hidden in enumerate(states)]

    def feed(self, state: Any, tokens: list[int]) -> torch.Tensor:
        with self._reading() as seen:
            hidden = self.inner.feed(state, tokens)
        return torch.stack([self._stacked(seen, row, hidden[row]) for row in range(hidden.shape[0])])

    def _stacked(self, seen: dict[int, torch.Tensor], row: int, last: torch.Tensor) -> torch.Tensor:
        return torch.stack([*(seen[layer][row] for layer in self.layers), last])

    @torch.inference_mode()
    def next_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """DoLa's scores [B, V] from the stacked states [B, L + 1, d]."""
        final = self.inner.next_logits(hidden[:, -1])
        scores, picked = dola_contrast(final, self.lm_head(hidden[:, :-1]))
        self.premature = [self.layers[i] for i in picked.tolist()]
        return scores

    def start(self, prefixes: list[list[int]]) -> tuple[Any, torch.Tensor]:
        streams, states = self.prefill(prefixes)
        return streams, self.next_logits(torch.cat([hidden[-1:] for hidden in states]))

    def step(self, state: Any, tokens: list[int]) -> torch.Tensor:
        return self.next_logits(self.feed(state, tokens))


def dola_streams(backend: Any, choice: LayerChoice) -> LayerStreams:
    """`backend`'s DoLa streams over the candidate layers `choice` names (ValueError: none, or a backend that
    does not expose its layers)."""
    decoder = getattr(backend, "decoder", None)
    if decoder is None or not hasattr(decoder, "layers") or backend.card.layers is None:
        raise ValueError(f"{backend.card.name!r} does not expose its layers")
    config = backend.model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    layers = candidate_layers(choice, int(config.get_text_config().num_hidden_layers), tied)
    if not layers:
        raise ValueError("no candidate layer below the final one")
    return LayerStreams(backend, layers)
