"""What every backend offers the job runner, and the sampling rule they share (`workers.sampling`)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from workers.capture import Unembedding
from workers.contract.cards import ModelCard
from workers.sampling import sample_next

__all__ = ["Backend", "StreamSteps", "sample_next", "stop_hit"]


class Backend(Protocol):
    card: ModelCard
    head: Unembedding

    def hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        """Final hidden states [T, d] (after the final norm), in the model's dtype."""
        ...

    def hidden_states_batch(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """`hidden_states` of several sequences at once (one batched forward where the backend can), each
        exactly as alone: padding never reaches a real position."""
        ...

    def reference_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """The model's own float32 log-probabilities [T, V], computed its usual way (for the exactness probe)."""
        ...

    def full_rows(self, token_ids: list[int]) -> torch.Tensor:
        """float32 log-probabilities [T, V] to store when hidden states do not rebuild them (storage "rows"),
        computed on the worker's own device, never through a per-token dict."""
        ...

    def start(self, prefixes: list[list[int]]) -> tuple[Any, torch.Tensor]:
        """Prefill one decoding stream per prefix, batched into one forward; a state holding their KV caches,
        and the float32 logits [B, V] after each prefix."""
        ...

    def step(self, state: Any, tokens: list[int]) -> torch.Tensor:
        """Feed one token to each stream of `state` in one forward; the float32 logits [B, V] after it."""
        ...

    def decode(self, token_ids: list[int]) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def tokenizer_json(self) -> str:
        """The tokenizer as `tokenizers` JSON, published for the gateway."""
        ...


class _Streams(Protocol):
    def prefill(self, prefixes: list[list[int]]) -> tuple[Any, list[torch.Tensor]]: ...

    def feed(self, streams: Any, tokens: list[int]) -> torch.Tensor: ...

    def next_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


class StreamSteps:
    """`Backend.start` and `Backend.step` of a backend whose streams take `prefill`, `feed` and `next_logits`
    (both backends; `workers.generations.JoinableStreams`)."""

    def start(self: _Streams, prefixes: list[list[int]]) -> tuple[Any, torch.Tensor]:
        streams, states = self.prefill(prefixes)
        return streams, self.next_logits(torch.stack([hidden[-1] for hidden in states]))

    def step(self: _Streams, state: Any, tokens: list[int]) -> torch.Tensor:
        return self.next_logits(self.feed(state, tokens))


def stop_hit(text: str, stops: list[str]) -> bool:
    return any(s in text for s in stops)
