"""The input rules every route shares: token ids of a text or chat, length limits, top-k, stops, sampling."""

from __future__ import annotations

from typing import Any

from app.platform.errors import ApiError
from app.platform.settings import Settings
from app.schemas.generate import SamplingRequest
from app.schemas.tokens import ChatMessage
from app.serving.chat_template import ChatTemplateError
from app.serving.text import TextCodec
from workers.contract.cards import ModelCard
from workers.contract.jobs import Sampling


def chat_token_ids(codec: TextCodec, messages: list[dict[str, Any]], *args: Any) -> list[int]:
    """`codec.encode_chat(messages, *args)`, a template that is missing or refuses the messages a 422."""
    try:
        return codec.encode_chat(messages, *args)
    except LookupError as exc:
        raise ApiError(422, "no_chat_template", str(exc), "messages") from exc
    except ChatTemplateError as exc:
        raise ApiError(
            422, "chat_template_error", f"the chat template refused the messages: {exc}", "messages"
        ) from exc


def input_ids(
    codec: TextCodec,
    text: str | None,
    messages: list[ChatMessage] | None,
    add_generation_prompt: bool,
    max_positions: int,
    text_param: str = "text",
) -> list[int]:
    """Token ids for a text or a chat, with the errors users can act on; `text_param` is what the request calls
    its text (`prompt` on /v1/generate)."""
    if (text is None) == (messages is None):
        raise ApiError(422, "missing_input", f"give exactly one of `{text_param}` and `messages`", text_param)
    param = text_param if text is not None else "messages"
    if text is not None:
        if not text:
            raise ApiError(422, "empty_text", f"the {text_param} is empty", text_param)
        ids = codec.encode(text)
    else:
        ids = chat_token_ids(codec, [m.model_dump() for m in messages or []], add_generation_prompt)
    check_length(codec.card, len(ids), max_positions, param)
    if not ids:
        raise ApiError(422, "empty_text", "the input has no tokens", param)
    return ids


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
