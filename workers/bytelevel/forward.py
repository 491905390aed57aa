"""One forward over a whole cover plan: tree attention over the trie of token sequences.

The plan's nodes are laid out as one sequence; node i sits at position depths[i] and attends to exactly its
ancestors and itself, so its hidden state is the one a plain forward of its own token sequence would give (the
same keys, values and positions), while the prefixes that sequences share are computed once. The mask goes to
transformers as a prepared 4D mask (returned as is by its mask builders); models with sliding-window layers get
their window applied to the tree's depths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from workers.bytelevel.covers import CoverPlan, RowsFn
from workers.capture import Unembedding


def ancestor_mask(parents: np.ndarray) -> np.ndarray:
    """bool [N, N]: row i is True at i and at every ancestor of i (parents come before their children)."""
    size = parents.shape[0]
    mask = np.zeros((size, size), dtype=bool)
    for i in range(size):
        if parents[i] >= 0:
            mask[i] = mask[parents[i]]
        mask[i, i] = True
    return mask


def _attention_masks(model: Any, allowed: torch.Tensor, depths: torch.Tensor, rows: slice) -> Any:
    """The prepared 4D mask(s) for the queries `rows` over keys [0, rows.stop): one mask, or one per layer type."""
    return prepared_masks(model, allowed[rows, : rows.stop], depths[rows], depths[: rows.stop])


def prepared_masks(model: Any, mask: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor) -> Any:
    """The prepared 4D mask(s) for a block of queries over keys (bool [q, k], True where attended), as transformers
    takes them as is: one mask, or one per layer type, with any sliding window applied by position."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or [])
    eager = getattr(config, "_attn_implementation", "sdpa") == "eager"
    dtype = next(model.parameters()).dtype

    def prepared(mask: torch.Tensor) -> torch.Tensor:
        if not eager:
            return mask[None, None]
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)[None, None]

    if not layer_types:
        return prepared(mask)
    masks = {kind: prepared(mask) for kind in layer_types}
    if window and "sliding_attention" in layer_types:
        near = (query_positions[:, None] - key_positions[None, :]) < window
        masks["sliding_attention"] = prepared(mask & near)
    return masks


@torch.inference_mode()
def tree_hidden(model: Any, plan: CoverPlan, chunk: int = 1024) -> torch.Tensor:
    """Final hidden states [N, d] of every node of the plan, from the model's decoder: one forward, or for large
    plans one forward per `chunk` nodes through a cache of full (never windowed) layers, so that attention
    memory stays chunk x N."""
    decoder = model.base_model
    allowed = torch.from_numpy(ancestor_mask(plan.parents))
    depths = torch.from_numpy(plan.depths)
    tokens = torch.from_numpy(plan.tokens)
    cache = DynamicCache() if plan.size > chunk else None
    parts = []
    for lo in range(0, plan.size, chunk):
        rows = slice(lo, min(plan.size, lo + chunk))
        parts.append(
            decoder(
                input_ids=tokens[rows][None],
                position_ids=depths[rows][None],
                attention_mask=_attention_masks(model, allowed, depths, rows),
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state[0]
        )
    return torch.cat(parts)


def head_rows(hidden: torch.Tensor, head: Unembedding) -> RowsFn:
    """Next-token log-probabilities of the nodes (float64 arrays), computed chunk by chunk from their hidden states
    in the model's precision: float64 for a float64 model, float32 otherwise (as token scoring computes them)."""

    def rows(nodes: np.ndarray) -> np.ndarray:
        h = hidden[torch.from_numpy(nodes)].to(head.weight.dtype)
        logits = torch.nn.functional.linear(h, head.weight, head.bias)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        if head.softcap is not None:
            logits = torch.tanh(logits / head.softcap) * head.softcap
        out: np.ndarray = torch.log_softmax(logits, dim=-1).numpy().astype(np.float64)
        return out

    return rows
