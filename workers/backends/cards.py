"""The model card every backend publishes, built the same way whatever engine runs the model."""

from __future__ import annotations

from typing import Any

from workers.capture import Unembedding
from workers.config import ModelSpec
from workers.contract.cards import ModelCard


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts <bos> in front of a plain text."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def eos_ids(tokenizer: Any, generation_eos: int | list[int] | None) -> list[int]:
    """End-of-sequence ids: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    for source in (generation_eos, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    return sorted(ids)


def build_card(
    spec: ModelSpec,
    tokenizer: Any,
    head: Unembedding,
    *,
    backend: str,
    dtype: str,
    fingerprint: str,
    context_length: int,
    generation_eos: int | list[int] | None,
    layers: int | None = None,
) -> ModelCard:
    """The card of a model whose hidden states rebuild its rows (the load-time probe may change that)."""
    return ModelCard(
        name=spec.name,
        fingerprint=fingerprint,
        backend=backend,  # type: ignore[arg-type]
        dtype=dtype,
        vocab_size=head.vocab_size,
        hidden_size=int(head.weight.shape[1]),
        context_length=context_length,
        add_bos=adds_bos(tokenizer) if spec.add_bos is None else spec.add_bos,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=eos_ids(tokenizer, generation_eos),
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        special_tokens={
            k: v
            for k, v in {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}.items()
            if isinstance(v, str)
        },
        storage="hidden",
        hidden_dtype=spec.lossy_hidden_dtype or dtype,
        rebuild_max_abs_error=0.0,
        lossy=spec.lossy_hidden_dtype is not None,
        max_new_tokens=spec.max_new_tokens,
        retain=spec.retain,
        layers=layers,
    )
