"""A tree-shaped forward that grows: a prompt read once, then trie nodes added a few at a time (byte-level decoding,
workers.bytelevel.stepping), each new node computed once against one KV cache of everything before it.

Node 0 is the prompt itself (its row: the next-token distribution after the whole prompt); node i > 0 is its
parent's token sequence followed by one token, at position (prompt length - 1 + its depth below the prompt). A node
attends to the whole prompt, to its own ancestors among the nodes and to itself, so its hidden state is the one a
plain forward of prompt + its tokens would give (the mask and positions of workers.bytelevel.forward, sliding
windows included). The cache keeps every layer in full: the window is applied by the mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from workers.bytelevel.forward import head_rows, prepared_masks
from workers.capture import Unembedding


class TreeStream:
    """The growing forward of one model over one prompt; `rows` for new nodes, the prompt's row as `root_row`."""

    def __init__(self, model: Any, head: Unembedding, prompt_ids: list[int]) -> None:
        self.model, self.head = model, head
        self.cache = DynamicCache()
        self.prompt = len(prompt_ids)
        self.positions: list[int] = list(range(self.prompt))  # per cache entry
        self.chains: list[list[int]] = [[]]  # per node: the cache entries of its ancestors below the prompt and itself
        self.depths: list[int] = [0]
        causal = torch.ones(self.prompt, self.prompt, dtype=torch.bool).tril()
        self.root_row: np.ndarray = self._forward(prompt_ids, causal, list(range(self.prompt)))[-1]

    @property
    def size(self) -> int:
        """Nodes so far, the prompt (node 0) included."""
        return len(self.chains)

    @torch.inference_mode()
    def _forward(self, tokens: list[int], mask: torch.Tensor, positions: list[int]) -> np.ndarray:
        hidden = self.model.base_model(
            input_ids=torch.tensor([tokens]),
            position_ids=torch.tensor([positions]),
            attention_mask=prepared_masks(
                self.model, mask, torch.tensor(positions), torch.tensor(self.positions[: mask.shape[1]])
            ),
            past_key_values=self.cache,
            use_cache=True,
        ).last_hidden_state[0]
        return head_rows(hidden, self.head)(np.arange(len(tokens)))

    def rows(self, tokens: list[int], parents: list[int]) -> np.ndarray:
        """Add nodes (each a parent node, earlier or among these, followed by a token), in one forward; their
        next-token log-probabilities [k, V] (float64)."""
        first_entry = len(self.positions)
        new_positions = []
        for i, parent in enumerate(parents):
            entry = first_entry + i
            self.chains.append([*self.chains[parent], entry])
            self.depths.append(self.depths[parent] + 1)
            new_positions.append(self.prompt - 1 + self.depths[-1])
        self.positions += new_positions
        mask = torch.zeros(len(tokens), len(self.positions), dtype=torch.bool)
        mask[:, : self.prompt] = True
        for i, chain in enumerate(self.chains[-len(tokens) :]):
            mask[i, chain] = True
        return self._forward(tokens, mask, new_positions)
