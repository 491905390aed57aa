"""The generate engine's state capture (workers/backends/vllm_capture.py) on the layout vLLM's model runner uses:
request by request in `input_batch.req_ids` order, each request's scheduled tokens from its computed count. The
engine itself runs it in tests/integration/test_vllm_backend.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from workers.backends.vllm_capture import _Chunks, pack, unpack

D = 4


@dataclass
class Batch:
    """The fields of vLLM's InputBatch the capture reads."""

    req_ids: list[str]
    num_computed_tokens_cpu: np.ndarray
    num_reqs: int = 0

    def __post_init__(self) -> None:
        self.num_reqs = len(self.req_ids)


@dataclass
class Runner:
    input_batch: Batch


@dataclass
class Step:
    """The fields of vLLM's SchedulerOutput the capture reads."""

    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_num_scheduled_tokens = sum(self.num_scheduled_tokens.values())


def truth(request: str, positions: range) -> torch.Tensor:
    """A distinct state for each (request, position): what a correct mapping must put where."""
    base = float(sum(map(ord, request)))
    return torch.tensor([[base + p + k / 10 for k in range(D)] for p in positions], dtype=torch.float32)


def run(chunks: _Chunks, scheduled: list[tuple[str, int, int]]) -> None:
    """One engine step: (request id, computed before, scheduled now) in batch order, states laid out in that order."""
    runner = Runner(Batch([r for r, _, _ in scheduled], np.array([c for _, c, _ in scheduled], dtype=np.int32)))
    chunks.step = Step({r: n for r, _, n in scheduled})
    output = torch.cat([truth(r, range(c, c + n)) for r, c, n in scheduled] + [torch.zeros(2, D)])  # padded
    chunks.keep(runner, output)
    chunks.step = None


def test_states_are_mapped_to_their_requests_and_positions() -> None:
    """A batched prefill, a chunked one, decode steps, a request that joins later and one that keeps no record."""
    chunks = _Chunks("keep-")
    run(chunks, [("keep-a-1234abcd", 0, 5), ("keep-b-5678abcd", 0, 3), ("pool-x-00000000", 0, 4)])
    run(chunks, [("keep-a-1234abcd", 5, 1), ("keep-b-5678abcd", 3, 4), ("pool-x-00000000", 4, 1)])
    run(chunks, [("keep-b-5678abcd", 7, 1), ("keep-c-9999abcd", 0, 6), ("keep-a-1234abcd", 6, 1)])
    assert sorted(chunks.by_request) == ["keep-a-1234abcd", "keep-b-5678abcd", "keep-c-9999abcd"]
    taken = chunks.take(["keep-a", "keep-b", "keep-z"])
    assert taken["keep-z"] is None
    assert torch.equal(taken["keep-a"], truth("keep-a-1234abcd", range(7)))  # type: ignore[arg-type]
    assert torch.equal(taken["keep-b"], truth("keep-b-5678abcd", range(8)))  # type: ignore[arg-type]
    assert list(chunks.by_request) == ["keep-c-9999abcd"]
    chunks.drop(["keep-c"])
    assert not chunks.by_request


def test_recomputed_positions_overwrite_and_uncomputed_ones_leave_no_states() -> None:
    """After a preemption the request is computed again from 0: the later states win. A request whose first
    positions were never computed (a prefix-cache hit) has no states to give."""
    chunks = _Chunks("keep-")
    run(chunks, [("keep-p-00000000", 0, 3)])
    chunks.by_request["keep-p-00000000"][0][1].add_(100.0)  # what a first, preempted computation left
    run(chunks, [("keep-p-00000000", 0, 4)])
    run(chunks, [("keep-q-00000000", 16, 2)])
    taken = chunks.take(["keep-p", "keep-q"])
    assert torch.equal(taken["keep-p"], truth("keep-p-00000000", range(4)))  # type: ignore[arg-type]
    assert taken["keep-q"] is None


def test_a_layout_that_does_not_add_up_stops_capturing_without_failing_the_step() -> None:
    chunks = _Chunks("keep-")
    run(chunks, [("keep-a-00000000", 0, 3)])
    runner = Runner(Batch(["keep-a-00000000"], np.array([3], dtype=np.int32)))
    chunks.step = Step({"keep-a-00000000": 1, "other-00000000": 2})  # a request the batch does not hold
    chunks.keep(runner, torch.zeros(3, D))
    assert chunks.broken.startswith("RuntimeError") and not chunks.by_request
    run(chunks, [("keep-a-00000000", 4, 1)])
    assert chunks.take(["keep-a"]) == {"keep-a": None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_states_cross_the_rpc_bit_for_bit(dtype: torch.dtype) -> None:
    states = torch.randn(7, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    dtype_name, shape, raw = pack(states)
    back = unpack([dtype_name, shape, raw])  # msgpack hands the tuple back as a list
    assert back.dtype == dtype and back.shape == states.shape
    assert torch.equal(back.view(torch.uint8), states.view(torch.uint8))
