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
from workers.lanes import checkpoint


def ancestor_rows(parents: np.ndarray, rows: slice) -> np.ndarray:
    """bool [len(rows), rows.stop]: row r is True at node rows.start + r and at each of its ancestors (parents
    come before their children, so no key of a row lies past it). Built a block of rows at a time: the whole
    [N, N] mask would be a gigabyte at the largest plans."""
    mask = np.zeros((rows.stop - rows.start, rows.stop), dtype=bool)
    for r, node in enumerate(range(rows.start, rows.stop)):
        while node >= 0:
            mask[r, node] = True
            node = int(parents[node])
    return mask


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
def tree_hidden(model: Any, plan: CoverPlan, chunk: int = 128) -> torch.Tensor:
    """Final hidden states [N, d] of every node of the plan, from the model's decoder: one forward, or for large
    plans one forward per `chunk` nodes through a cache of full (never windowed) layers, so that attention
    memory stays chunk x N."""
    decoder = model.base_model
    depths = torch.from_numpy(plan.depths)
    tokens = torch.from_numpy(plan.tokens)
    cache = DynamicCache() if plan.size > chunk else None
    parts = []
    for lo in range(0, plan.size, chunk):
        checkpoint()  # a slice: one chunk of the tree
        rows = slice(lo, min(plan.size, lo + chunk))
        parts.append(
            decoder(
                input_ids=tokens[rows][None],
                position_ids=depths[rows][None],
                attention_mask=prepared_masks(
                    model, torch.from_numpy(ancestor_rows(plan.parents, rows)), depths[rows], depths[: rows.stop]
                ),
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state[0]
        )
    return torch.cat(parts)


def head_rows(hidden: torch.Tensor, head: Unembedding) -> RowsFn:
    """Next-token log-probabilities of the nodes (float64 arrays), computed chunk by chunk from their hidden states
    in the model's precision: float64 for a float64 model, float32 otherwise (as token scoring computes them)."""

    def rows(nodes: np.ndarray) -> np.ndarray:
        logits = head.logits(hidden[torch.from_numpy(nodes)], keep_float64=True)
        out: np.ndarray = torch.log_softmax(logits, dim=-1).numpy().astype(np.float64)
        return out

    return rows
