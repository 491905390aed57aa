"""The load-time check that stored hidden states rebuild the model's own log-probabilities."""

from __future__ import annotations

import logging

import torch

from workers.backends.base import Backend
from workers.capture import rebuild_rows

log = logging.getLogger(__name__)

PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1887, the committee met in Geneva to discuss "
    "whether the new railway should reach the mountain villages before winter."
)
EXACT_TOLERANCE = 1e-3
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rebuild_error(backend: Backend, token_ids: list[int], stored_dtype: str) -> float:
    """max |log_softmax(W·h) - model logprobs| over the whole vocabulary and every probe position."""
    hidden = backend.hidden_states(token_ids).to(STORAGE_DTYPES[stored_dtype])
    rebuilt = torch.from_numpy(rebuild_rows(hidden, backend.head))
    return float((rebuilt - backend.reference_logprobs(token_ids)).abs().max())


def verify_rebuild(backend: Backend, token_ids: list[int]) -> None:
    """Set the card's storage mode: hidden states when they rebuild exactly, else full rows.

    With an opt-in lossy dtype the card reports that dtype's error; the exact path is still verified.
    """
    card = backend.card
    exact_error = rebuild_error(backend, token_ids, card.dtype)
    if not exact_error <= EXACT_TOLERANCE:  # NaN too: a model whose numbers break on the probe (its card stays valid)
        log.warning("%s: hidden states rebuild with error %.2e; storing full rows", card.name, exact_error)
        card.storage, card.hidden_dtype, card.lossy, card.rebuild_max_abs_error = "rows", "float32", False, 0.0
        return
    card.rebuild_max_abs_error = rebuild_error(backend, token_ids, card.hidden_dtype) if card.lossy else exact_error
    log.info(
        "%s: rebuild from %s hidden states, max |Δ logprob| %.2e",
        card.name,
        card.hidden_dtype,
        card.rebuild_max_abs_error,
    )
