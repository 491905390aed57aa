"""Chat templates rendered the way transformers renders them (sandboxed Jinja, same options and helpers),
so the gateway can tokenize chats without importing transformers."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template refused the conversation (raise_exception) or failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    special_tokens: dict[str, str],
    add_generation_prompt: bool,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The chat as transformers' apply_chat_template renders it; `template_kwargs` reach the template as variables
    (vLLM's `chat_template_kwargs`), and `continue_final_message` leaves the last message open, as transformers
    cuts it: the text ends where that message's content does."""
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be true")
    variables = {
        **(template_kwargs or {}),
        **special_tokens,
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
    }
    try:
        rendered = _compile(template).render(**variables)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(str(exc)) from exc
    if not continue_final_message:
        return rendered
    final = str(messages[-1].get("content") or "")
    if not final.strip() or final.strip() not in rendered:
        raise ChatTemplateError("continue_final_message: the final message does not appear in the rendered chat")
    at = rendered.rindex(final.strip())
    if rendered[at : at + len(final.lstrip())] == final:
        return rendered[: at + len(final.lstrip())]
    return rendered[: at + len(final.strip())]
