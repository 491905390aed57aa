"""vLLM's server routes at the root: POST /tokenize, POST /detokenize, GET /tokenizer_info, GET /version,
answered as vLLM answers them (lm-evaluation-harness finds a remote tokenizer through /tokenizer_info and
/tokenize). A request without `model` uses the first configured model, as vLLM uses the one it serves."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Depends, Query

from app.api.deps import ServicesDep, current_tenant
from app.platform.errors import ApiError
from app.serving.chat_template import ChatTemplateError
from app.serving.services import Services
from app.serving.text import TextCodec
from logprobe.schemas.openai import DetokenizeRequest, TokenizeRequest
from workers.contract.cards import ModelCard

router = APIRouter(tags=["vllm-compatible"])


async def _model(services: Services, name: str | None) -> tuple[ModelCard, TextCodec]:
    if name is None:
        if not services.catalog.configured:
            raise ApiError(422, "missing_input", "name the `model`", "model")
        name = next(iter(services.catalog.configured))
    card = await services.catalog.card(name)
    return card, await services.catalog.codec(card)


@router.post("/tokenize", dependencies=[Depends(current_tenant)])
async def tokenize(body: TokenizeRequest, services: ServicesDep) -> dict[str, Any]:
    card, codec = await _model(services, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(422, "missing_input", "give exactly one of `prompt` and `messages`", "prompt")
    ids = await asyncio.to_thread(_token_ids, codec, body)  # long texts take a while: the event loop serves on
    answer: dict[str, Any] = {"count": len(ids), "max_model_len": card.context_length, "tokens": ids}
    answer["token_strs"] = [codec.tokenizer.id_to_token(i) for i in ids] if body.return_token_strs else None
    return answer


def _token_ids(codec: TextCodec, body: TokenizeRequest) -> list[int]:
    """The prompt's or chat's ids, however long (lm-evaluation-harness counts whole documents this way)."""
    if body.prompt is not None:
        return codec.encode(body.prompt, True if body.add_special_tokens is None else body.add_special_tokens)
    try:
        return codec.encode_chat(
            [m.model_dump() for m in body.messages or []],
            body.add_generation_prompt,
            body.continue_final_message,
            body.chat_template_kwargs,
            bool(body.add_special_tokens),
        )
    except LookupError as exc:
        raise ApiError(422, "no_chat_template", str(exc), "messages") from exc
    except ChatTemplateError as exc:
        raise ApiError(422, "chat_template_error", str(exc), "messages") from exc


@router.post("/detokenize", dependencies=[Depends(current_tenant)])
async def detokenize(body: DetokenizeRequest, services: ServicesDep) -> dict[str, str]:
    card, codec = await _model(services, body.model)
    if any(t >= card.vocab_size for t in body.tokens):
        raise ApiError(422, "invalid_token_ids", f"token ids must lie in [0, {card.vocab_size})", "tokens")
    return {"prompt": codec.tokenizer.decode(body.tokens, skip_special_tokens=False)}  # vLLM keeps special tokens


@router.get("/tokenizer_info", dependencies=[Depends(current_tenant)])
async def tokenizer_info(
    services: ServicesDep, model: str | None = Query(default=None, description="default: the first model")
) -> dict[str, Any]:
    """The tokenizer's configuration as vLLM gives it (tokenizer_config.json's fields that matter to clients)."""
    card, _ = await _model(services, model)
    info: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": card.special_tokens.get("bos_token"),
        "eos_token": card.special_tokens.get("eos_token"),
        "pad_token": card.special_tokens.get("pad_token"),
        "add_bos_token": card.add_bos,
        "model_max_length": card.context_length,
    }
    if card.chat_template:
        info["chat_template"] = card.chat_template
    return info


@router.get("/version")
async def server_version() -> dict[str, str]:
    try:
        return {"version": version("logprobe")}
    except PackageNotFoundError:  # running from a source tree
        return {"version": "0.1.0"}
