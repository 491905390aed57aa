"""A contrastive job's view at the byte level: a model's cover states after its own prompt, stepping by bytes (the
decoding itself is workers.handlers.contrast.byte_contrast)."""

from __future__ import annotations

from typing import Any

from workers.bytelevel.decoding import ByteView
from workers.bytelevel.incremental import TreeStream
from workers.bytelevel.job import encoder, hf_parts
from workers.bytelevel.stepping import ByteStates


def byte_view(backend: Any, prefix_ids: list[int], weight: float, temperature: float, max_states: int) -> ByteView:
    """A view of an hf backend's model after its prompt tokens, stepping by bytes (501 on other backends)."""
    model, tokenizer, vocab = hf_parts(backend)
    encode = encoder(tokenizer)
    states = ByteStates(
        TreeStream(model, backend.head, prefix_ids),
        vocab,
        lambda text: encode([text])[0],
        backend.card.eos_token_ids,
        max_states=max_states,
    )
    return ByteView(states, weight, temperature)
