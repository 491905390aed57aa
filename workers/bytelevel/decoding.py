"""Contrastive decoding by bytes, for views whose models tokenize differently (Phan et al. 2024, arXiv:2410.09303:
their model ensembles combine next-byte distributions; the formulas are those of workers.decoding).

Each step, every view gives its exact next-symbol distribution P_i over the 256 bytes and an end symbol (index 256,
the model's end-of-text tokens; workers.bytelevel.stepping), after its own prompt tokens and the bytes generated so
far. They are combined exactly as the token path combines tokens,

    log_softmax( sum_i w_i * log_softmax(log P_i / tau_i) )

with the plausibility cut on the chosen view (p >= alpha * max p) or USCD's selective rule, over the 257 symbols.
Two more symbols are dropped before the draw: any that a view of nonzero weight gives probability 0 (its log
would be -inf, and +inf under a negative weight), and any that would not keep the text valid UTF-8 (the end
included, while a character is incomplete). So decoding steps by bytes and its text is always valid UTF-8.

A step is one byte (or the end); `max_tokens` counts bytes. A run cut by max_tokens in the middle of a character
drops that character's bytes (and their steps). Stop strings are matched on the complete characters; a run that
hits one ends before it. A step reaches `on_step` once its character is complete and no stop string can take it
back; its `text` is the character its byte begins ("" for the bytes after a character's first, and the end).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.bytelevel.stats import LOG_FLOOR
from workers.bytelevel.stepping import END, ByteStates
from workers.bytelevel.utf8 import allowed_next, pending
from workers.contract.jobs import DecodeStep, Plausibility, Sampling, Selective
from workers.decoding import StepSink, combine, decode_step, held_back, seeded, selective
from workers.lanes import checkpoint
from workers.sampling import sample_next


@dataclass
class ByteView:
    states: ByteStates
    weight: float = 1.0
    temperature: float = 1.0


@dataclass
class ByteDecoded:
    data: bytes  # the generated text's bytes
    completion: list[int]  # the symbols drawn: the bytes, then END if the run ended so
    finish_reason: str
    steps: list[DecodeStep]

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def byte_step(
    view_logdists: list[np.ndarray],
    views: list[ByteView],
    allowed: np.ndarray,
    plausibility: Plausibility | None,
    rule: Selective | None,
) -> tuple[list[torch.Tensor], torch.Tensor, bool | None]:
    """Each view's tempered log-distribution, the combined one over the allowed symbols (float64), and for USCD
    whether the step was contrasted."""
    view_logprobs = [
        torch.log_softmax(torch.from_numpy(d) / v.temperature, dim=-1)
        for d, v in zip(view_logdists, views, strict=True)
    ]
    reachable = allowed & np.all([np.isfinite(d) for d, v in zip(view_logdists, views, strict=True) if v.weight], 0)
    keep = torch.from_numpy(reachable)
    floored = [lp.clamp(min=LOG_FLOOR) for lp in view_logprobs]
    weights = [v.weight for v in views]
    contrasted = None
    if rule is None:
        combined = combine(floored, weights, plausibility)
        if not bool(torch.isfinite(combined[keep]).any()):  # the cut left nothing allowed: the allowed alone
            combined = combine(floored, weights, None)
    else:
        combined, contrasted = selective(view_logprobs, weights, rule)
        if not bool(torch.isfinite(combined[keep]).any()):  # as USCD does when its contrast keeps nothing
            combined, contrasted = view_logprobs[0], False
    return view_logprobs, torch.log_softmax(combined.masked_fill(~keep, -math.inf), dim=-1), contrasted


def _stop_cut(text: str, stops: list[str]) -> int | None:
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(cuts) if cuts else None


@torch.inference_mode()
def decode_bytes(
    views: list[ByteView],
    sampling: Sampling,
    *,
    plausibility: Plausibility | None = None,
    rule: Selective | None = None,
    topk: int = 0,
    on_step: Callable[[DecodeStep], Any] | None = None,
) -> ByteDecoded:
    """Draw bytes until max_tokens bytes, the end symbol, or a stop string (see the module)."""
    generator = seeded(sampling)
    data = b""
    steps: list[DecodeStep] = []
    sink = StepSink(on_step)
    for _ in range(sampling.max_tokens):
        checkpoint()  # a slice: one byte
        if data:
            for view in views:
                view.states.advance(data[-1])
        view_logprobs, combined, contrasted = byte_step(
            [v.states.distribution() for v in views], views, allowed_next(data), plausibility, rule
        )
        symbol = sample_next(combined, sampling, generator)
        steps.append(decode_step(symbol, combined, view_logprobs, contrasted, topk, text=""))
        if symbol == END:
            sink.emit(steps, len(steps))
            return ByteDecoded(data, [*data, END], "stop", steps)
        data += bytes([symbol])
        if pending(data):
            continue
        text = data.decode("utf-8")
        steps[len(data) - len(text[-1].encode())].text = text[-1]  # the character's first byte's step
        cut = _stop_cut(text, sampling.stop)
        if cut is not None:
            keep = len(text[:cut].encode())
            sink.emit(steps, keep)
            return ByteDecoded(data[:keep], list(data[:keep]), "stop", steps[:keep])
        sink.emit(steps, len(data) - len(text[len(text) - held_back(text, sampling.stop) :].encode()))
    complete = len(data) - pending(data)
    sink.emit(steps, complete)
    return ByteDecoded(data[:complete], list(data[:complete]), "length", steps[:complete])
