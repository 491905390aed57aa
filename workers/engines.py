"""The worker's loaded models, and the checks every job makes against them before it runs."""

from __future__ import annotations

from workers.backends.base import Backend
from workers.contract.jobs import Sampling
from workers.outcomes import JobFailed


class Engines:
    """The backends a worker serves, by model name."""

    def __init__(self, backends: dict[str, Backend]) -> None:
        self.backends = backends

    def backend_for(self, model: str, fingerprint: str) -> Backend:
        backend = self.backends.get(model)
        if backend is None:
            raise JobFailed("model_not_served", f"this worker does not serve {model!r}", 503)
        if fingerprint != backend.card.fingerprint:
            raise JobFailed("model_changed", f"{model!r} was reloaded with other weights; retry", 409)
        return backend


def check_ids(token_ids: list[int], backend: Backend) -> None:
    card = backend.card
    if len(token_ids) > card.context_length:
        raise JobFailed("context_length_exceeded", f"{len(token_ids)} tokens > context {card.context_length}")
    if min(token_ids) < 0 or max(token_ids) >= card.vocab_size:
        raise JobFailed("invalid_token_ids", f"token ids must lie in [0, {card.vocab_size})")


def completion_budget(sampling: Sampling, prefixes: list[tuple[Backend, list[int]]]) -> int:
    """max_tokens, bounded by every model's limit and the room left in its context."""
    budget = min(
        [sampling.max_tokens] + [min(b.card.max_new_tokens, b.card.context_length - len(ids)) for b, ids in prefixes]
    )
    if budget < 1:
        raise JobFailed("context_length_exceeded", "no room left in the context for a completion")
    return budget
