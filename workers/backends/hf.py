"""The transformers backend: the embedded CPU default and a GPU fallback."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from workers.backends.base import StreamSteps
from workers.backends.cards import build_card
from workers.capture import Unembedding, logit_scale
from workers.config import ModelSpec
from workers.models import safetensors_dir, served_fingerprint

log = logging.getLogger(__name__)

PREFILL_CHUNK = 2048  # longer inputs are prefilled in chunks through the KV cache, bounding attention memory
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Streams:
    """Decoding streams of one model: a shared KV cache, and for a padded batch its mask and next positions.

    A padded batch is left-padded: every row's real tokens end at the last column, so the cache's columns, the
    mask's and (for sliding-window layers) the window all line up from the right."""

    cache: DynamicCache
    mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    def padded(self) -> Streams:
        """The same streams with a mask and positions (a lone unpadded stream gets an all-ones mask)."""
        if self.mask is None or self.positions is None:
            length = self.cache.get_seq_length()
            return Streams(self.cache, torch.ones(1, length, dtype=torch.long), torch.tensor([length]))
        return self


def can_join(streams: Streams) -> bool:
    """Whether rows can join and leave these streams: caches of plain and sliding-window attention layers."""
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in streams.cache.layers)


def _stacked(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cached states [B, H, T, D] of two batches as one: the one with fewer columns is left-padded with zeros."""
    width = max(x.shape[2], y.shape[2])
    return torch.cat([torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0)) for t in (x, y)])


def join_streams(a: Streams, b: Streams) -> Streams:
    """One batch of the rows of `a` then those of `b`: the shorter side is left-padded (masked) to the longer."""
    a, b = a.padded(), b.padded()
    assert a.mask is not None and b.mask is not None and a.positions is not None and b.positions is not None
    length = max(a.mask.shape[1], b.mask.shape[1])
    layers: list[tuple[Any, Any]] = list(zip(a.cache.layers, b.cache.layers, strict=True))
    for mine, theirs in layers:
        mine.keys, mine.values = _stacked(mine.keys, theirs.keys), _stacked(mine.values, theirs.values)
        if isinstance(mine, DynamicSlidingWindowLayer):
            mine.cumulative_length = length
    mask = torch.cat([_pad_mask(a.mask, length), _pad_mask(b.mask, length)])
    return Streams(a.cache, mask, torch.cat([a.positions, b.positions]))


def _pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], length - mask.shape[1]), mask], dim=1)


def keep_streams(streams: Streams, rows: list[int]) -> Streams:
    """Only `rows` of the batch, and without the leading columns that are padding in every row left."""
    s = streams.padded()
    assert s.mask is not None and s.positions is not None
    index = torch.tensor(rows, dtype=torch.long)
    mask = s.mask[index]
    used = mask.any(dim=0).nonzero()
    drop = int(used[0]) if len(used) else mask.shape[1]
    mask = mask[:, drop:]
    length = mask.shape[1]
    layers: list[Any] = list(s.cache.layers)
    for layer in layers:
        keys, values = layer.keys[index], layer.values[index]
        keep = min(keys.shape[2], length)  # a sliding window keeps at most its last columns
        layer.keys, layer.values = keys[:, :, keys.shape[2] - keep :], values[:, :, values.shape[2] - keep :]
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = length
    return Streams(s.cache, mask, s.positions[index])


def final_norm(decoder: Any) -> Any:
    """The norm a decoder applies to its last layer's output (Llama, Gemma, Qwen, Mistral: `norm`; Phi:
    `final_layernorm`; GPT-2: `ln_f`), or None."""
    for name in ("norm", "final_layernorm", "ln_f"):
        module = getattr(decoder, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


class HFBackend(StreamSteps):
    """A causal LM loaded with transformers; hidden states come from its decoder, logits from its head."""

    def __init__(self, spec: ModelSpec, data_dir: Path) -> None:
        started = time.perf_counter()
        folder, source_fp = safetensors_dir(spec, data_dir)
        dtype = "auto" if spec.dtype == "auto" else DTYPES[spec.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.decoder = self.model.base_model
        out = self.model.get_output_embeddings()
        config = self.model.config.get_text_config()
        self.head = Unembedding(
            weight=out.weight.detach(),
            bias=None if getattr(out, "bias", None) is None else out.bias.detach(),
            softcap=getattr(config, "final_logit_softcapping", None),
            scale=logit_scale(config),
        )
        model_dtype = str(self.model.dtype).removeprefix("torch.")
        self.spec = spec
        self.card = build_card(
            spec,
            self.tokenizer,
            self.head,
            backend="hf",
            dtype=model_dtype,
            fingerprint=served_fingerprint(source_fp, spec, "hf", model_dtype),
            context_length=int(getattr(config, "max_position_embeddings", 2048)),
            generation_eos=self.model.generation_config.eos_token_id,
            layers=int(config.num_hidden_layers) if final_norm(self.decoder) is not None else None,
        )
        log.info("loaded %s (%s, %s) in %.1fs", spec.name, model_dtype, folder, time.perf_counter() - started)

    def tokenizer_json(self) -> str:
        return str(self.tokenizer.backend_tokenizer.to_str())

    def _forward(self, ids: torch.Tensor, cache: DynamicCache | None) -> torch.Tensor:
        """Decoder output [n, d] for ids [n], continuing `cache` when given; long inputs go in chunks."""
        if cache is None and ids.shape[0] > PREFILL_CHUNK:
            cache = DynamicCache(config=self.model.config)
        if cache is None:
            hidden: torch.Tensor = self.decoder(input_ids=ids[None]).last_hidden_state[0]
            return hidden
        parts = [
            self.decoder(
                input_ids=ids[None, lo : lo + PREFILL_CHUNK], past_key_values=cache, use_cache=True
            ).last_hidden_state[0]
            for lo in range(0, ids.shape[0], PREFILL_CHUNK)
        ]
        return torch.cat(parts)

    @torch.inference_mode()
    def hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        return self._forward(torch.tensor(token_ids), None)

    @torch.inference_mode()
    def hidden_states_batch(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """One right-padded forward: causal attention keeps every real position from seeing the padding after
        it, and positions count from 0 as alone. Long sequences (chunked prefill) go alone."""
        if len(sequences) == 1 or max(len(s) for s in sequences) > PREFILL_CHUNK:
            return [self.hidden_states(s) for s in sequences]
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        hidden = self.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return [hidden[i, : len(s)] for i, s in enumerate(sequences)]

    @torch.inference_mode()
    def layer_states(self, token_ids: list[int], layers: list[int]) -> list[torch.Tensor]:
        """The states [T, d] of `layers` (transformers' hidden_states indices: 0 = the embeddings, the last = the
        decoder's output) as the unembedding reads them, from one forward: each layer below the last through the
        model's final norm (the logit lens, nostalgebraist 2020), the last as the decoder returns it (so that its
        rows are the record's)."""
        states = self.decoder(input_ids=torch.tensor([token_ids]), output_hidden_states=True).hidden_states
        norm = final_norm(self.decoder)
        assert norm is not None
        last = len(states) - 1
        return [states[layer][0] if layer == last else norm(states[layer][0]) for layer in layers]

    @torch.inference_mode()
    def states_with_layers(self, token_ids: list[int], layers: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final hidden states [T, d] (as `hidden_states` gives them) and, from the same forward, the raw states
        [T, d] of `layers` (transformers' hidden_states indices: 0 = the embeddings, the last = the final states);
        long inputs go in chunks through the KV cache, as `_forward` does."""
        ids = torch.tensor(token_ids)
        cache = DynamicCache(config=self.model.config) if ids.shape[0] > PREFILL_CHUNK else None
        chunks = []
        for lo in range(0, ids.shape[0], PREFILL_CHUNK if cache is not None else ids.shape[0]):
            out = self.decoder(
                input_ids=ids[None, lo : lo + PREFILL_CHUNK] if cache is not None else ids[None],
                past_key_values=cache,
                use_cache=cache is not None,
                output_hidden_states=True,
            )
            chunks.append([out.hidden_states[layer][0] for layer in layers] + [out.last_hidden_state[0]])
        joined = [torch.cat(parts) for parts in zip(*chunks, strict=True)]
        return joined[-1], joined[:-1]

    @torch.inference_mode()
    def through_final_norm(self, states: torch.Tensor) -> torch.Tensor:
        """Raw states of a layer below the last read as `layer_states` reads them: through the final norm."""
        norm = final_norm(self.decoder)
        assert norm is not None
        return norm(states.to(self.model.dtype))  # type: ignore[no-any-return]

    def lens_readout(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Raw states [n, d] of a layer below the last -> float32 logits through a frozen copy of the final norm and
        the unembedding, differentiable in the states (a tuned lens trains through it, workers/heads/tuned_lens)."""
        norm = final_norm(self.decoder)
        assert norm is not None
        frozen = copy.deepcopy(norm).requires_grad_(False)
        return lambda states: self.head.logits(frozen(states.to(self.model.dtype)))

    @torch.inference_mode()
    def reference_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        logits = self.model(input_ids=torch.tensor([token_ids])).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    def full_rows(self, token_ids: list[int]) -> torch.Tensor:
        return self.reference_logprobs(token_ids)

    @torch.inference_mode()
    def next_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [n, V] of final hidden states [n, d], as the model computes them: W·h where the probe
        found the unembedding to rebuild its rows, else the model's own output head (its forward's tail run on these
        states: e.g. Falcon-H1's `lm_head_multiplier`, which the unembedding does not model)."""
        if self.card.storage == "hidden":
            return self.head.logits(hidden)
        own = BaseModelOutputWithPast(last_hidden_state=hidden[:, None, :])  # type: ignore[arg-type]
        self.decoder.forward = lambda *args, **kwargs: own
        try:
            logits: torch.Tensor = self.model(input_ids=torch.zeros(hidden.shape[0], 1, dtype=torch.long)).logits
        finally:
            del self.decoder.forward  # the class's forward again
        return logits[:, -1].float()

    @torch.inference_mode()
    def prefill(self, prefixes: list[list[int]]) -> tuple[Streams, list[torch.Tensor]]:
        """Decoding streams over the prefixes, batched into one forward; each prefix's hidden states [len, d]."""
        cache = DynamicCache(config=self.model.config)
        if len(prefixes) == 1:  # no padding, no mask: the same computation as scoring
            return Streams(cache), [self._forward(torch.tensor(prefixes[0]), cache)]
        # Several prefixes: left-pad into one batch; the mask hides the padding, positions skip it.
        width = max(len(p) for p in prefixes)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prefixes])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        parts = []
        for lo in range(0, width, PREFILL_CHUNK):
            hi = lo + PREFILL_CHUNK
            parts.append(
                self.decoder(
                    input_ids=ids[:, lo:hi],
                    attention_mask=mask[:, :hi],
                    position_ids=positions[:, lo:hi],
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
            )
        hidden = torch.cat(parts, dim=1)
        return Streams(cache, mask, mask.sum(-1)), [hidden[i, width - len(p) :] for i, p in enumerate(prefixes)]

    @torch.inference_mode()
    def feed(self, state: Streams, tokens: list[int]) -> torch.Tensor:
        """Feed one token to each stream in one forward; their hidden states [B, d]."""
        if state.mask is None or state.positions is None:
            return self._forward(torch.tensor(tokens), state.cache)[-1:]
        state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        hidden: torch.Tensor = self.decoder(
            input_ids=torch.tensor(tokens)[:, None],
            attention_mask=state.mask,
            position_ids=state.positions[:, None],
            past_key_values=state.cache,
            use_cache=True,
        ).last_hidden_state[:, -1]
        state.positions = state.positions + 1
        return hidden

    # Rows join and leave a running batch of streams (workers/generations.py).
    can_join = staticmethod(can_join)
    join_streams = staticmethod(join_streams)
    keep_streams = staticmethod(keep_streams)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))
