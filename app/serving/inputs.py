"""The input rules every route shares: token ids of a text or chat, length limits, top-k, stops, sampling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from app.platform.errors import ApiError
from app.platform.settings import Settings
from app.serving.chat_template import ChatTemplateError
from app.serving.text import TextCodec, TextTooLong
from logprobe.schemas.generate import SamplingRequest
from logprobe.schemas.tokens import ChatMessage
from workers.contract.cards import ModelCard
from workers.contract.jobs import Sampling


def chat_token_ids(
    codec: TextCodec, messages: list[dict[str, Any]], *args: Any, max_positions: int | None = None
) -> list[int]:
    """`codec.encode_chat(messages, *args)`, a template that is missing or refuses the messages a 422, and a chat
    that renders longer than `max_positions` tokens could cover refused before it is tokenized."""
    try:
        with refused_if_too_long(codec.card, max_positions, "messages"):
            return codec.encode_chat(messages, *args, max_tokens=token_limit(codec.card, max_positions))
    except LookupError as exc:
        raise ApiError(422, "no_chat_template", str(exc), "messages") from exc
    except ChatTemplateError as exc:
        raise ApiError(
            422, "chat_template_error", f"the chat template refused the messages: {exc}", "messages"
        ) from exc


def text_token_ids(
    codec: TextCodec, text: str, max_positions: int | None, add_special_tokens: bool = True, param: str = "text"
) -> list[int]:
    """`codec.encode(text)`, a text longer than `max_positions` tokens could cover refused before tokenizing;
    `param` names the text in the request."""
    with refused_if_too_long(codec.card, max_positions, param):
        return codec.encode(text, add_special_tokens, max_tokens=token_limit(codec.card, max_positions))


def token_ids(
    codec: TextCodec,
    text: str | None,
    messages: list[ChatMessage] | None,
    add_generation_prompt: bool,
    max_positions: int,
    text_param: str = "text",
) -> list[int]:
    """Token ids for a text or a chat, with the errors users can act on (blocks: see `input_ids`); `text_param` is
    what the request calls its text (`prompt` on /v1/generate)."""
    if (text is None) == (messages is None):
        raise ApiError(422, "missing_input", f"give exactly one of `{text_param}` and `messages`", text_param)
    param = text_param if text is not None else "messages"
    if text is not None:
        if not text:
            raise ApiError(422, "empty_text", f"the {text_param} is empty", text_param)
        ids = text_token_ids(codec, text, max_positions, param=text_param)
    else:
        dumped = [m.model_dump() for m in messages or []]
        ids = chat_token_ids(codec, dumped, add_generation_prompt, max_positions=max_positions)
    check_length(codec.card, len(ids), max_positions, param)
    if not ids:
        raise ApiError(422, "empty_text", "the input has no tokens", param)
    return ids


async def input_ids(
    codec: TextCodec,
    text: str | None,
    messages: list[ChatMessage] | None,
    add_generation_prompt: bool,
    max_positions: int,
    text_param: str = "text",
) -> list[int]:
    """`token_ids` in a worker thread: tokenizing a long text takes a while, and the event loop serves on."""
    return await asyncio.to_thread(token_ids, codec, text, messages, add_generation_prompt, max_positions, text_param)


def token_limit(card: ModelCard, max_positions: int | None) -> int | None:
    return None if max_positions is None else min(card.context_length, max_positions)


def check_length(card: ModelCard, n: int, max_positions: int, param: str, new_tokens: int = 0) -> None:
    """422 `context_length_exceeded` when an input of `n` tokens (named `param`), plus the `new_tokens` a
    generation may add, exceeds the model's context or the service's limit; `param` is `max_tokens` when the
    input fits and only the tokens to generate do not."""
    limit = min(card.context_length, max_positions)
    if n > limit:
        raise ApiError(
            422, "context_length_exceeded", f"{n} tokens exceed the limit of {limit} for {card.name!r}", param
        )
    if n + new_tokens > limit:
        raise ApiError(
            422,
            "context_length_exceeded",
            f"{n} tokens and max_tokens {new_tokens} exceed the limit of {limit} for {card.name!r}; "
            f"max_tokens may be at most {limit - n}",
            "max_tokens",
        )


@contextlib.contextmanager
def refused_if_too_long(card: ModelCard, max_positions: int | None, param: str | None = None) -> Iterator[None]:
    """A TextTooLong as the 422 `context_length_exceeded` that tokenizing it would have given (`param`: the text's
    field)."""
    try:
        yield
    except TextTooLong as exc:
        raise ApiError(
            422,
            "context_length_exceeded",
            f"{exc.chars} characters exceed the limit of {token_limit(card, max_positions)} tokens for {card.name!r} "
            f"(at most {exc.max_chars} characters can fit)",
            param,
        ) from None


def top_limit(settings: Settings, cap: int) -> int:
    """The most alternatives per token a route with its own `cap` gives under the export policy."""
    return min(cap, settings.top_alternatives())


def top_k(
    requested: int | None, settings: Settings, cap: int, default: int | None = None, param: str = "top_logprobs"
) -> int:
    """Alternatives per token for an answer: the one place that applies the export policy
    (`Settings.top_alternatives`, 5 with export off) on top of the route's own `cap`. A request for more is a 422;
    no request gets the default (`default_top_logprobs`), within the limit."""
    limit = top_limit(settings, cap)
    if requested is None:
        return min(settings.default_top_logprobs if default is None else default, limit)
    if requested > limit:
        why = "" if limit == cap else " on this deployment" + ("" if settings.allow_export else " (no export)")
        raise ApiError(422, "top_logprobs_too_large", f"{param} is at most {limit}{why}", param)
    return requested


def stop_list(stop: str | list[str] | None) -> list[str]:
    """A request's `stop` as a list; 422 for an empty stop string."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not s for s in stops):
        raise ApiError(422, "invalid_stop", "stop strings must not be empty", "stop")
    return stops


def truncate_at_stop(text: str, stops: list[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text


def sampling_of(body: SamplingRequest, max_new_tokens: int) -> Sampling:
    """A request's sampling parameters for a job; 422 for max_tokens over the limit or an empty stop string."""
    if body.max_tokens > max_new_tokens:
        raise ApiError(422, "max_tokens_too_large", f"max_tokens is at most {max_new_tokens}", "max_tokens")
    return Sampling(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop_list(body.stop),
    )
