"""POST /v1/completions and /v1/chat/completions requests, as the OpenAI API and vLLM's server spell them
(numbers and flags strict, as their JSON is: `"5"` or `true` is no integer), and vLLM's tokenizer routes.

Fields a client may send that this service does not implement are refused when set to anything but their
neutral value (`UNSUPPORTED`, a 422 `unsupported_parameter` naming the field), never silently ignored."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.tokens import ChatMessage

MAX_CHOICES = 16  # n and best_of per prompt
MAX_PROMPTS = 256  # prompts in one /v1/completions request

TokenId = Annotated[int, Field(ge=0, strict=True)]

# Fields of the OpenAI API or vLLM's server that are not implemented, with the values that ask for nothing.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""),
    "use_beam_search": (False, None),
    "length_penalty": (1.0, 1, None),
    "stop_token_ids": (None, []),
    "include_stop_str_in_output": (False, None),
    "ignore_eos": (False, None),
    "min_tokens": (0, None),
    "skip_special_tokens": (True, None),
    "spaces_between_special_tokens": (True, None),
    "truncate_prompt_tokens": (None,),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "logprob_token_ids": (None, []),
    "prompt_embeds": (None,),
    "response_format": (None, {"type": "text"}),
    "structured_outputs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "logits_processors": (None,),
    "vllm_xargs": (None,),
    "kv_transfer_params": (None,),
    "chat_template": (None,),
    "documents": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "mm_processor_kwargs": (None,),
}


class StreamOptions(BaseModel):
    include_usage: bool = Field(default=False, strict=True)
    continuous_usage_stats: bool = Field(default=False, strict=True)


class OpenAICommon(BaseModel):
    # Other fields OpenAI clients send (user, metadata, store…) pass; those in UNSUPPORTED are checked.
    model_config = ConfigDict(extra="allow")
    model: str
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, strict=True)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, strict=True)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, strict=True)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63, strict=True)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, strict=True)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, strict=True)
    logit_bias: dict[str, float] | None = Field(
        default=None, description="token id (as a string) -> bias added to its logit, clamped to [-100, 100]"
    )
    # vLLM's extensions
    top_k: int | None = Field(default=None, ge=-1, strict=True, description="-1 or 0: every token")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0, strict=True)
    repetition_penalty: float = Field(default=1.0, gt=0.0, strict=True)
    prompt_logprobs: int | None = Field(
        default=None,
        ge=-1,
        strict=True,
        description="per prompt token: its logprob and the top-k (k at most /v1/models' max_top_logprobs)",
    )
    return_tokens_as_token_ids: bool = Field(default=False, strict=True)
    return_token_ids: bool = Field(default=False, strict=True)


class CompletionRequest(OpenAICommon):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]] = Field(
        description="a text, a list of texts, a list of token ids, or a list of token-id lists"
    )
    max_tokens: int | None = Field(default=16, ge=0, strict=True, description="0 with `echo`: score the prompt only")
    logprobs: int | None = Field(default=None, ge=0, strict=True, description="at most /v1/models' max_top_logprobs")
    echo: bool = Field(default=False, strict=True)
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES, strict=True)
    add_special_tokens: bool = Field(default=True, strict=True)


class ChatCompletionRequest(OpenAICommon):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    logprobs: bool = Field(default=False, strict=True)
    top_logprobs: int | None = Field(
        default=None,
        ge=0,
        strict=True,
        description="needs `logprobs: true`, as in the OpenAI API; at most /v1/models' max_top_logprobs",
    )
    # vLLM's extensions
    echo: bool = Field(default=False, strict=True, description="prepend the last assistant message to the answer")
    add_generation_prompt: bool = Field(default=True, strict=True)
    continue_final_message: bool = Field(default=False, strict=True)
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool = Field(default=False, strict=True)


class TokenizeRequest(BaseModel):
    """vLLM's POST /tokenize: a `prompt`, or chat `messages` rendered by the model's template."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = Field(default=None, strict=True, description="default: true for a prompt")
    add_generation_prompt: bool = Field(default=True, strict=True)
    continue_final_message: bool = Field(default=False, strict=True)
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = Field(default=False, strict=True)


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[TokenId]
