"""Contrastive decoding requests as worker jobs: presets expanded to views (ED, CD, CAD, proxy-tuning, prompt
contrast, USCD's selective contrast, DoLa's contrast of layers), each view's prefix tokenized, and the steps and
summary of the answer."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Literal

from app.platform.errors import ApiError
from app.platform.limits import charge
from app.serving.byte_steps import SYMBOLS, byte_step_out, byte_text, decode_level
from app.serving.inputs import (
    check_length,
    refused_if_too_long,
    sampling_of,
    text_token_ids,
    token_limit,
    top_k,
    truncate_at_stop,
)
from app.serving.jobs import new_job_id
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.decode import DecodeRequest, Preset, ViewIn
from workers.contract.cards import ModelCard
from workers.contract.jobs import ContrastJob, DecodeStep, DecodeView, JobOutcome, Plausibility, Selective
from workers.contract.keys import group_name

MAX_VIEWS = 8


def _need(value: str | None, preset: str, field: str) -> str:
    if not value:
        raise ApiError(422, "invalid_preset", f"preset {preset!r} needs `{field}`", f"preset.{field}")
    return value


PRESET_MODELS = ("model", "base", "aligned", "expert", "amateur", "tuned", "small_base")


def expand(preset: Preset) -> tuple[list[ViewIn], Plausibility | None]:
    """A preset as views (the papers' formulas, named in workers/decoding.py): weights, templates and the
    plausibility cut. A view whose weight comes out 0 (alpha or lambda 0) changes nothing and is left out: ED
    with alpha 0 is the base model alone."""
    specs, plausibility = _preset_views(preset)
    return [ViewIn(**spec) for spec in specs if spec["weight"] != 0], plausibility


def _preset_views(preset: Preset) -> tuple[list[dict[str, Any]], Plausibility | None]:
    name, system = preset.name, preset.system
    if name == "ed":  # (1 + a) log p_base(raw) - a log p_aligned(chat); the reference code uses a = 0.3 for Llama-2
        a = 0.3 if preset.alpha is None else preset.alpha
        return [
            {"model": _need(preset.base, name, "base"), "template": "raw", "weight": 1 + a},
            {"model": _need(preset.aligned, name, "aligned"), "template": "chat", "system": system, "weight": -a},
        ], None
    if name == "cd":  # log p_expert - log p_amateur among tokens with p_expert >= a * max p_expert
        a = 0.1 if preset.alpha is None else preset.alpha
        amateur = _need(preset.amateur, name, "amateur")
        return [
            {"model": _need(preset.expert, name, "expert"), "system": system, "weight": 1.0},
            {"model": amateur, "system": system, "weight": -1.0, "temperature": preset.amateur_temperature},
        ], Plausibility(view=0, alpha=max(a, 1e-12))
    if name == "cad":  # (1 + a) log p(y | c, x) - a log p(y | x)
        a = 0.5 if preset.alpha is None else preset.alpha
        model = _need(preset.model, name, "model")
        context = _need(preset.context, name, "context")
        return [
            {"model": model, "system": system, "context": context, "weight": 1 + a},
            {"model": model, "system": system, "weight": -a},
        ], None
    if name == "proxy":  # log p_large + l (log p_small_tuned - log p_small_base)
        lam = 1.0 if preset.lambda_ is None else preset.lambda_
        return [
            {"model": _need(preset.base, name, "base"), "template": "raw", "weight": 1.0},
            {"model": _need(preset.tuned, name, "tuned"), "template": "chat", "system": system, "weight": lam},
            {"model": _need(preset.small_base, name, "small_base"), "template": "raw", "weight": -lam},
        ], None
    if name == "uscd":  # the standard prompt against the lame one, w = (1, -a) on probabilities where uncertain
        a = USCD_ALPHA if preset.alpha is None else preset.alpha
        model = _need(preset.model, name, "model")
        lame = _need(preset.lame_prompt, name, "lame_prompt")
        return [
            {"model": model, "template": preset.template, "system": system, "weight": 1.0},
            {"model": model, "template": preset.template, "system": system, "prompt": lame, "weight": -a},
        ], None
    if name == "dola":  # the model's final layer against a premature one, picked per step (workers/dola.py)
        model = _need(preset.model, name, "model")
        return [{"model": model, "template": preset.template, "system": system, "weight": 1.0}], None
    a = 0.5 if preset.alpha is None else preset.alpha  # prompt contrast: the chat prompt against the bare one
    model = _need(preset.model, name, "model")
    return [
        {"model": model, "template": "chat", "system": system, "weight": 1 + a},
        {"model": model, "template": "raw", "weight": -a},
    ], None


USCD_ALPHA = 0.7  # the reference code's weights are (1.0, -0.7)
USCD_STD = 0.005  # the reference code's threshold on the standard deviation, for CodeLlama's vocabulary
USCD_VOCAB = 32016


def uscd_rule(preset: Preset, vocab_size: int) -> Selective:
    """USCD's uncertainty rule for a model. The paper's threshold on the standard deviation of the V probabilities
    means a collision probability sum p^2 = 0.005^2 (V - 1) + 1/V = 0.80 at CodeLlama's vocabulary; by default the
    same sum p^2 is asked of this model (0.0040 for SmolLM2's 49,152 tokens, where 0.005 is out of reach)."""
    threshold = preset.threshold
    if threshold is None:
        if preset.uncertainty != "std":
            raise ApiError(422, "invalid_preset", f"uncertainty {preset.uncertainty!r} needs a `threshold`", "preset")
        collision = USCD_STD**2 * (USCD_VOCAB - 1) + 1 / USCD_VOCAB
        threshold = math.sqrt((collision - 1 / vocab_size) / (vocab_size - 1))
    return Selective(measure=preset.uncertainty, threshold=threshold, min_ratio=preset.min_ratio)


def dola_layers(preset: Preset, card: ModelCard) -> Literal["low", "high"] | list[int]:
    """DoLa's candidate layers, checked against the model: distinct, below its layer count (its final layer)."""
    if card.layers is None:
        raise ApiError(
            501,
            "layers_unsupported",
            f"{card.name!r} runs on {card.backend}, which does not expose its layers",
            "preset.model",
        )
    layers = preset.layers
    if isinstance(layers, list) and (not layers or len(set(layers)) != len(layers) or max(layers) >= card.layers):
        raise ApiError(
            422,
            "invalid_layers",
            f"layers are distinct and lie in [0, {card.layers - 1}] ({card.name!r} has {card.layers} layers)",
            "preset.layers",
        )
    return layers


def view_prefix(codec: TextCodec, view: ViewIn, prompt: str, max_positions: int) -> list[int]:
    """The view's prompt as token ids (blocks: run it in a thread); one too long to fit refused untokenized."""
    prompt = view.prompt or prompt
    body = prompt if view.context is None else f"{view.context}\n\n{prompt}"
    if view.template == "raw":
        text = body if view.system is None else f"{view.system}\n\n{body}"
        return text_token_ids(codec, text, max_positions, param="prompt")
    messages = ([{"role": "system", "content": view.system}] if view.system else []) + [
        {"role": "user", "content": body}
    ]
    try:
        with refused_if_too_long(codec.card, max_positions, "prompt"):
            limit = token_limit(codec.card, max_positions)
            return codec.encode_chat(messages, add_generation_prompt=True, max_tokens=limit)
    except LookupError as exc:
        raise ApiError(
            422, "no_chat_template", f"{view.model!r} has no chat template; use template raw", "views"
        ) from exc


async def build_job(
    body: DecodeRequest, services: Services, tenant: str
) -> tuple[ContrastJob, list[ViewIn], TextCodec, list[str]]:
    if (body.views is None) == (body.preset is None):
        raise ApiError(422, "missing_input", "give exactly one of `views` and `preset`", "views")
    if body.preset is not None:
        views, plausibility = expand(body.preset)
    else:
        cut = body.plausibility
        views, plausibility = body.views or [], None if cut is None else Plausibility(view=cut.view, alpha=cut.alpha)
    if len(views) > MAX_VIEWS:
        raise ApiError(422, "too_many_views", f"at most {MAX_VIEWS} views", "views")
    if body.record_view >= len(views) or (plausibility is not None and plausibility.view >= len(views)):
        raise ApiError(422, "invalid_view", "record_view and plausibility.view must name one of the views", "views")
    settings = services.settings
    sampling = sampling_of(body, settings.max_new_tokens)
    stops = sampling.stop
    decode_views, codecs = [], []
    for i, view in enumerate(views):
        card = await services.catalog.card(view.model, _model_param(body.preset, view.model, i))
        codec = await services.catalog.codec(card)
        ids = await asyncio.to_thread(view_prefix, codec, view, body.prompt, settings.max_positions)
        check_length(card, len(ids), settings.max_positions, "prompt", body.max_tokens)
        codecs.append(codec)
        decode_views.append(
            DecodeView(
                model=card.name,
                fingerprint=card.fingerprint,
                prefix_ids=ids,
                weight=view.weight,
                temperature=view.temperature,
            )
        )
    if body.preset is not None and body.preset.name == "dola":
        decode_views[0].dola_layers = dola_layers(body.preset, codecs[0].card)
    level = decode_level(body.level, codecs)
    group = group_name(v.model for v in decode_views)
    if not await services.catalog.live_workers(group):
        raise ApiError(
            503,
            "group_unavailable",
            f"no worker hosts all of {sorted(set(v.model for v in views))}",
            "views",
            headers={"Retry-After": "5"},
        )
    k = top_k(body.top_logprobs, settings, settings.max_top_logprobs)
    tokens = sum(len(v.prefix_ids) for v in decode_views) + body.max_tokens * len(decode_views)
    await charge(services.redis, tenant, "tokens", tokens, settings.rate_limit_tpm)
    rule = None
    if body.preset is not None and body.preset.name == "uscd":
        rule = uscd_rule(body.preset, SYMBOLS if level == "byte" else codecs[0].card.vocab_size)
    job = ContrastJob(
        job_id=new_job_id(),
        tenant=tenant,
        model=group,
        fingerprint="|".join(v.fingerprint for v in decode_views),
        views=decode_views,
        sampling=sampling,
        plausibility=plausibility,
        selective=rule,
        topk=k,
        record_view=body.record_view,
        retain=body.retain or codecs[body.record_view].card.retain,
        level=level,  # type: ignore[arg-type]
        max_states=body.max_states,
    )
    return job, views, codecs[0], stops


def _model_param(preset: Preset | None, model: str, view: int) -> str:
    """The request field that named a view's model: `views.1.model`, or the preset's own (`preset.aligned`)."""
    if preset is None:
        return f"views.{view}.model"
    return "preset." + next((f for f in PRESET_MODELS if getattr(preset, f) == model), "model")


def step_out(step: DecodeStep, codec: TextCodec, level: str = "token") -> dict[str, Any]:
    if level == "byte":
        return byte_step_out(step)
    pieces = codec.pieces()
    return {
        "id": step.token,
        "text": pieces[step.token],
        "special": step.token in codec.special_ids,
        "top_logprobs": [
            {"id": i, "text": pieces[i], "logprob": v} for i, v in zip(step.top_ids, step.top_logprobs, strict=True)
        ],
        "views": [{"logprob": lp, "rank": r} for lp, r in zip(step.view_logprobs, step.view_ranks, strict=True)],
        "contrasted": step.contrasted,
        "logprob": step.logprob,
        "premature_layer": step.premature_layer,
    }


def summary(
    outcome: JobOutcome, codec: TextCodec, stops: list[str], views: list[ViewIn], prompt_tokens: int, level: str
) -> dict[str, Any]:
    completion = outcome.completion_ids or []
    text = byte_text(completion) if level == "byte" else codec.decode(completion)
    if outcome.finish_reason == "stop":
        text = truncate_at_stop(text, stops)
    return {
        "record_id": outcome.record_id,
        "level": level,
        "text": text,
        "finish_reason": outcome.finish_reason,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(completion)},
        "views": [v.model_dump() for v in views],
    }
