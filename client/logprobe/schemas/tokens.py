"""Per-token fields shared by scoring, generation and records; chat messages; token usage."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

Role = Literal["system", "user", "assistant", "tool", "developer"]  # the OpenAI API's roles


def _not_empty(text: str) -> str:
    if not text:
        raise PydanticCustomError("empty_text", "the text is empty")
    return text


# A text to score or decode: an empty one is 422 `empty_text` on every route, as /v1/score answers it.
Text = Annotated[str, AfterValidator(_not_empty)]
ROLES = ", ".join(get_args(Role))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Role = Field(description=f"one of {ROLES}")
    content: str = Field(
        description="the message's text, or the OpenAI API's content parts ([{type: text, text}, …]), whose texts are "
        "joined with newlines as vLLM joins them; parts of other types are refused (422 `unsupported_content`)"
    )

    @field_validator("content", mode="before")
    @classmethod
    def _text_of_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        texts = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise PydanticCustomError(
                    "unsupported_content",
                    'only text content parts (type "text") are supported, got {kind}',
                    {"kind": repr(kind)},
                )
            texts.append(part["text"])
        return "\n".join(texts)

    @field_validator("role", mode="wrap")
    @classmethod
    def _known_role(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> str:
        try:
            role: str = handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_role", "must be one of {roles}", {"roles": ROLES}) from None
        return role


class TopLogprob(BaseModel):
    id: int
    text: str
    logprob: float


class TokenOut(BaseModel):
    id: int
    text: str
    special: bool = Field(default=False, description="a special token of the tokenizer (e.g. `<|im_end|>`), not text")
    logprob: float | None = Field(description="log p(token | prefix); null for the first token")
    rank: int | None = Field(description="1 + number of tokens the model found more likely")
    entropy: float | None = Field(description="entropy (nats) of the distribution that predicted this token")
    top_logprobs: list[TopLogprob] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
