"""Layers on request: which hidden_states a scoring keeps beside the final ones (checked against the model and the
deployment's bound), and reading one kept layer back for export."""

from __future__ import annotations

from typing import Literal

import numpy as np

from app.platform.errors import ApiError
from app.serving.scoring import card_of, scored_record
from app.serving.services import Services
from workers.contract.cards import ModelCard
from workers.contract.heads import probe_layers
from workers.contract.keys import record_key
from workers.contract.names import ProtocolError, Retain, as_bytes
from workers.contract.records import RecordMeta, hidden_float32, layer_field

ITEMSIZES = {"float32": 4, "float16": 2, "bfloat16": 2}


def kept_layers_bytes(card: ModelCard, layers: list[int], n_tokens: int) -> int:
    """The bytes the states of `layers` add to a record of `n_tokens` tokens (the final layer's are its `hidden`)."""
    extra = sum(1 for layer in layers if layer != card.layers)
    return extra * (n_tokens - 1) * card.hidden_size * ITEMSIZES.get(card.hidden_dtype, 4)


def keeps_layers(card: ModelCard, param: str, hint: str = "") -> int:
    """The model's layer count; 501 layers_unsupported where its backend keeps no layers' states (vLLM, models
    kept as rows)."""
    if card.layers is None or card.storage != "hidden":
        raise ApiError(
            501,
            "layers_unsupported",
            f"{card.name!r} runs on {card.backend}, which does not keep its layers' states{hint}",
            param,
        )
    return card.layers


def scoring_layers(
    asked: list[int] | Literal["all"] | None, card: ModelCard, n_tokens: int, retain: Retain | None, max_bytes: int
) -> list[int]:
    """The sorted hidden_states indices a scoring keeps (`all`: 0, the embeddings, .. the model's layer count, the
    final states): 501 layers_unsupported where the backend keeps none, 422 invalid_layers out of range,
    layers_need_full with retain 'stats', layers_too_large past the deployment's bytes per record."""
    if asked is None or asked == []:
        return []
    n_layers = keeps_layers(card, "layers")
    layers = list(range(n_layers + 1)) if asked == "all" else sorted(asked)
    if len(set(layers)) != len(layers) or layers[-1] > n_layers:
        raise ApiError(
            422,
            "invalid_layers",
            f"layers are distinct and lie in [0, {n_layers}] ({card.name!r} has {n_layers} layers)",
            "layers",
        )
    if retain == "stats":
        raise ApiError(
            422, "layers_need_full", "kept layers are hidden states: ask with retain 'full' (or no retain)", "retain"
        )
    size = kept_layers_bytes(card, layers, n_tokens)
    if size > max_bytes:
        raise ApiError(
            422,
            "layers_too_large",
            f"{len(layers)} layers of {n_tokens - 1} positions take {size} bytes; this deployment keeps at most "
            f"{max_bytes} bytes of layers per record: ask for fewer layers or a shorter text",
            "layers",
        )
    return layers


async def layer_blob(services: Services, tenant: str, meta: RecordMeta, layer: int) -> bytes:
    """A kept layer's stored states (safetensors `hidden`, the model's dtype, one row per position); 409
    layer_not_stored for a layer the record did not keep."""
    if layer not in meta.layers or meta.n_layers is None:
        kept = f"keeps layers {meta.layers}" if meta.layers else "keeps no layers"
        raise ApiError(
            409,
            "layer_not_stored",
            f"record {meta.record_id} {kept}; score its text with `layers` including {layer} to keep it",
            "layer",
        )
    blob = as_bytes(await services.redis.hget(record_key(tenant, meta.record_id), layer_field(layer, meta.n_layers)))
    if blob is None:
        raise ApiError(404, "record_not_found", f"record {meta.record_id!r} not found", "record_id")
    return blob


def head_layers(kind: str, params: dict[str, float | int | str], card: ModelCard) -> list[int] | None:
    """The layers a head's records must keep: a probe on a layer (params.layer) that layer's, every one for "best";
    None for a head on the final states. 501 where the model's backend keeps no layers, 422 past its last."""
    layer = params.get("layer", "final")
    if kind != "probe" or layer == "final":
        return None
    n_layers = keeps_layers(card, "params", ": probe the final layer")
    if layer != "best" and int(layer) > n_layers:
        message = f"layer lies in [0, {n_layers}] ({card.name!r} has {n_layers} layers)"
        raise ApiError(422, "invalid_params", message, "params")
    return probe_layers(layer, n_layers)


async def layer_states(services: Services, tenant: str, meta: RecordMeta, layer: int) -> np.ndarray:
    """Layer `layer`'s states of a record as float32 [positions, D]: its own kept ones, else those of the same tokens
    scored with that layer (one forward, kept as a record of its own), as a probe on that layer reads them."""
    card = await card_of(services, meta)
    if layer == card.layers:
        return await services.store.hidden(tenant, meta)
    source = meta
    if layer not in meta.layers:
        layers = scoring_layers([layer], card, len(meta.token_ids), "full", services.settings.max_layer_bytes)
        source, _, _ = await scored_record(services, tenant, card, meta.token_ids, "full", layers=layers)
    try:
        states = hidden_float32(await layer_blob(services, tenant, source, layer))
    except ProtocolError as exc:
        raise ApiError(500, "record_corrupt", "the stored record failed validation") from exc
    if states.shape != (len(meta.token_ids) - 1, meta.hidden_size) or not np.isfinite(states).all():
        raise ApiError(500, "record_corrupt", "the stored record failed validation")
    return states
