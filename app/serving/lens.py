"""The logit lens over a record: a worker reads every asked layer through the model's final norm and unembedding
(workers/lens.py), or through a trained tuned lens's translators first (a `lens` head, Belrose et al. 2023); this
side checks the request, charges it, and shapes the answer."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.platform.errors import ApiError
from app.platform.limits import charge
from app.serving.heads import load_head
from app.serving.jobs import new_job_id, raise_for_outcome
from app.serving.scoring import card_of, record_for
from app.serving.services import Services
from logprobe.schemas.lens import LensRequest
from workers.contract.cards import ModelCard
from workers.contract.jobs import LensJob, LensResult
from workers.contract.keys import lens_key
from workers.contract.lifetimes import forget
from workers.contract.names import as_bytes
from workers.contract.records import RecordMeta


def asked_layers(body: LensRequest, card: ModelCard) -> list[int]:
    """The layers to read, checked against the model: `all` is 0 (the embeddings) .. its layer count."""
    if card.layers is None:
        raise ApiError(
            501,
            "layers_unsupported",
            f"{card.name!r} runs on {card.backend}, which does not expose its layers",
            "model",
        )
    if body.layers == "all":
        return list(range(card.layers + 1))
    if len(set(body.layers)) != len(body.layers) or max(body.layers) > card.layers:
        raise ApiError(
            422,
            "invalid_layers",
            f"layers are distinct and lie in [0, {card.layers}] ({card.name!r} has {card.layers} layers)",
            "layers",
        )
    return list(body.layers)


def settled_layers(layers: list[int], top1: list[list[int]], final_top1: list[int]) -> list[int | None]:
    """Per position: the first asked layer from which on every asked layer's top token is the final layer's
    (None if even the last asked layer disagrees)."""
    order = np.argsort(layers, kind="stable")
    agree = np.asarray(top1)[order] == np.asarray(final_top1)[None, :]  # [layers, positions]
    out: list[int | None] = []
    for column in agree.T:
        disagree = np.flatnonzero(~column)
        first = 0 if disagree.size == 0 else int(disagree[-1]) + 1
        out.append(int(layers[order[first]]) if first < len(layers) else None)
    return out


def kept_all(meta: RecordMeta, layers: list[int], card: ModelCard) -> bool:
    """Whether the record kept every asked layer (scored with `layers`; the final one is its own states), so that the
    worker reads them instead of running a forward."""
    return meta.n_layers == card.layers and meta.retain == "full" and set(layers) - {card.layers} <= set(meta.layers)


async def tuned_lens_head(services: Services, tenant: str, head_id: str, card: ModelCard) -> str:
    """`lens` naming a head: a trained tuned lens of this tenant for the record's model (404 head_not_found as other
    head lookups, 422 head_kind_mismatch / head_model_mismatch, 409 head_not_ready while it trains)."""
    state = await load_head(services, tenant, head_id)
    if state is None:
        raise ApiError(
            404, "head_not_found", f"head {head_id!r} not found (lens is 'logit' or a lens head's id)", "lens"
        )
    if state.kind != "lens":
        raise ApiError(422, "head_kind_mismatch", f"head {head_id!r} is a {state.kind} head, not a tuned lens", "lens")
    if state.model != card.name or state.fingerprint != card.fingerprint:
        raise ApiError(
            422,
            "head_model_mismatch",
            f"head {head_id!r} is a tuned lens of {state.model!r} (as it was served then), not of {card.name!r}",
            "lens",
        )
    if state.status != "succeeded":
        raise ApiError(409, "head_not_ready", f"head {head_id!r} is {state.status}, not trained", "lens")
    return head_id


async def lens(body: LensRequest, services: Services, tenant: str) -> dict[str, Any]:
    meta, _, codec, cached = await record_for(
        services, tenant, model=body.model, record_id=body.record_id, text=body.text, messages=body.messages
    )
    card = await card_of(services, meta)
    layers = asked_layers(body, card)
    head = None if body.lens == "logit" else await tuned_lens_head(services, tenant, body.lens, card)
    ids = meta.token_ids
    if len(ids) < 2:
        raise ApiError(422, "too_few_tokens", "the lens reads predictions: the text needs at least two tokens", "text")
    # one forward, then every asked layer's rows and the final ones: each a pass over the unembedding
    await charge(services.redis, tenant, "tokens", len(ids) * (len(layers) + 1), services.settings.rate_limit_tpm)
    job = LensJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=meta.model,
        fingerprint=card.fingerprint,
        token_ids=ids,
        layers=layers,
        top_k=body.top_logprobs,
        record_id=meta.record_id if kept_all(meta, layers, card) else None,
        lens_head=head,
    )
    raise_for_outcome(await services.jobs.run(job))
    raw = as_bytes(await services.redis.get(lens_key(job.job_id)))
    if raw is None:
        raise ApiError(504, "lens_expired", "the lens's answer expired before it was read; retry")
    pipe = services.redis.pipeline(transaction=False)
    forget(pipe, lens_key(job.job_id))
    await pipe.execute()
    result = LensResult.model_validate_json(raw)
    pieces, texts = codec.pieces(), codec.token_texts(ids)
    settled = settled_layers(layers, [reading.top1 for reading in result.layers], result.final_top1)
    out_layers = []
    for reading in result.layers:
        tokens: list[dict[str, Any] | None] = [None]
        for i in range(len(ids) - 1):
            tokens.append(
                {
                    "logprob": reading.logprob[i],
                    "rank": reading.rank[i],
                    "entropy": reading.entropy[i],
                    "kl_to_final": reading.kl_to_final[i],
                    "top_logprobs": [
                        {"id": t, "token": pieces[t], "logprob": lp}
                        for t, lp in zip(reading.top_ids[i], reading.top_logprobs[i], strict=True)
                    ],
                }
            )
        agreement = np.asarray(reading.top1) == np.asarray(result.final_top1)
        out_layers.append(
            {
                "layer": reading.layer,
                "tokens": tokens,
                "sequence": {
                    "mean_kl_to_final": float(np.mean(reading.kl_to_final)),
                    "mean_entropy": float(np.mean(reading.entropy)),
                    "mean_logprob": float(np.mean(reading.logprob)),
                    "top1_agreement": float(agreement.mean()),
                },
            }
        )
    return {
        "record_id": meta.record_id,
        "model": meta.model,
        "cached": cached,
        "lens": body.lens,
        "n_layers": result.n_layers,
        "positions": [
            {"position": p, "id": t, "text": texts[p], "settled_layer": None if p == 0 else settled[p - 1]}
            for p, t in enumerate(ids)
        ],
        "layers": out_layers,
    }
