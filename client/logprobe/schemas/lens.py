"""POST /v1/analysis/lens: how the next-token distribution forms across a model's layers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from logprobe.schemas.tokens import ChatMessage

MAX_LENS_TOP = 20
Layer = Annotated[int, Field(ge=0, strict=True)]


class LensRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    record_id: str | None = None
    text: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    layers: list[Layer] | Literal["all"] = Field(
        default="all",
        description="transformers' hidden_states indices: 0 = the embeddings, the model's layer count = the final "
        "layer (the record's own rows)",
    )
    lens: str = Field(
        default="logit",
        description="`logit`: the model's own final norm and unembedding read every layer; or the id of a trained "
        "`lens` head (a tuned lens of the model): its translator reads each layer below the last first",
    )
    top_logprobs: int = Field(default=0, ge=0, le=MAX_LENS_TOP, strict=True)


class LensAlternative(BaseModel):
    id: int
    token: str
    logprob: float


class LensToken(BaseModel):
    logprob: float = Field(description="of the token that came, read at this layer")
    rank: int
    entropy: float
    kl_to_final: float = Field(description="KL(final || this layer), nats")
    top_logprobs: list[LensAlternative]


class LensLayerOut(BaseModel):
    layer: int
    tokens: list[LensToken | None] = Field(description="positions as in /v1/score: position 0 is null")
    sequence: dict[str, float | None]


class LensPosition(BaseModel):
    position: int
    id: int
    text: str
    settled_layer: int | None = Field(
        description="the first asked layer from which on every asked layer's top token is the final layer's"
    )


class LensResponse(BaseModel):
    record_id: str
    model: str
    cached: bool
    lens: str
    n_layers: int
    positions: list[LensPosition]
    layers: list[LensLayerOut]
