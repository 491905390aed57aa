"""What a worker publishes about each model it serves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from workers.contract.names import Retain


class ModelCard(BaseModel):
    """What a worker publishes about a loaded model, so the gateway can tokenize and validate."""

    name: str
    fingerprint: str
    backend: Literal["hf", "vllm"]
    dtype: str
    vocab_size: int
    hidden_size: int
    context_length: int
    add_bos: bool
    bos_token_id: int | None
    eos_token_ids: list[int]
    chat_template: str | None
    special_tokens: dict[str, str] = Field(default_factory=dict)
    storage: Literal["hidden", "rows"]
    hidden_dtype: str
    rebuild_max_abs_error: float
    lossy: bool = False
    max_new_tokens: int
    retain: Retain = "full"  # what its records keep unless a request says otherwise
    # Decoder layers whose states a lens reads (transformers' hidden_states: layers + 1 entries, 0 = embeddings);
    # None: this backend does not expose intermediate layers.
    layers: int | None = None
