"""Jobs whose clients left leave their running batches between two steps (issue #29, #30 item 22): their rows go,
and every other job decodes on exactly as it would alone. Real tiny random models in transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workers.backends import load_backend
from workers.config import ModelSpec
from workers.contract.jobs import Sampling
from workers.contrasts import ContrastDone, SteppedContrasts
from workers.decoding import Contrast, View, decode
from workers.generations import Finished, SteppedGenerations

PROMPTS = [[1, 504, 3218, 314], [1, 2000, 45], [1, 77, 78, 79, 80, 81]]


@pytest.fixture(scope="module")
def backends(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    data = Path(tmp_path_factory.mktemp("data"))
    spec = ModelSpec(name="tiny-llama", source="hf", path=tiny_models["tiny-llama"])
    return load_backend(spec, data), load_backend(spec, data)


def sampling(max_tokens: int, seed: int) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=1.0, top_p=1.0, seed=seed)


def generated_alone(backend: Any, prompt: list[int], spec: Sampling) -> list[int]:
    pool = SteppedGenerations(backend, backend)
    pool.join("one", prompt, spec)
    while True:
        for one in pool.advance():
            return one.completion


def test_a_generation_that_leaves_mid_way_takes_its_row_and_the_others_go_on(backends: tuple[Any, Any]) -> None:
    a, _ = backends
    pool = SteppedGenerations(a, a)
    for i, prompt in enumerate(PROMPTS):
        pool.join(f"g{i}", prompt, sampling(10, i + 1))
    pool.join("queued", PROMPTS[0], sampling(10, 9))
    assert pool.leave({"queued"}) == ["queued"]  # not prefilled yet: it never runs
    ended: dict[str, Finished] = {}
    for _ in range(3):
        ended.update({f.key: f for f in pool.advance()})
    assert pool.leave({"g1", "unknown"}) == ["g1"]
    assert len(pool) == 2 and len(pool.rows) == 2 and pool.logits is not None and pool.logits.shape[0] == 2
    while len(pool):
        for one in pool.advance():
            assert one.key not in ended
            ended[one.key] = one
    assert set(ended) == {"g0", "g2"}
    for key, i in (("g0", 0), ("g2", 2)):
        assert ended[key].error is None
        assert ended[key].completion == generated_alone(a, PROMPTS[i], sampling(10, i + 1))
    assert pool.leave({"g0"}) == []  # ended already: nothing to let go


def test_the_last_generation_leaving_empties_the_batch(backends: tuple[Any, Any]) -> None:
    a, _ = backends
    pool = SteppedGenerations(a, a)
    pool.join("only", PROMPTS[1], sampling(10, 3))
    pool.advance()
    assert pool.leave({"only"}) == ["only"]
    assert len(pool) == 0 and pool.streams is None and pool.logits is None
    pool.join("next", PROMPTS[1], sampling(4, 3))  # the model's batch starts afresh
    finished = [f for _ in range(4) for f in pool.advance()]
    assert [f.completion for f in finished] == [generated_alone(a, PROMPTS[1], sampling(4, 3))]


def test_a_decoding_that_leaves_takes_its_rows_from_every_model(backends: tuple[Any, Any]) -> None:
    a, b = backends
    views = {
        "both": [View(a, PROMPTS[0], 1.5), View(b, PROMPTS[0], -0.5)],
        "a-only": [View(a, PROMPTS[1], 1.0, 0.7)],
        "b-only": [View(b, PROMPTS[2], 1.0, 0.7)],
    }
    specs = {"both": sampling(8, 1), "a-only": sampling(8, 2), "b-only": sampling(8, 3)}
    pool = SteppedContrasts()
    for key, view in views.items():
        pool.join(key, Contrast(view, specs[key]))
    ended: dict[str, ContrastDone] = {}
    for _ in range(2):
        ended.update({d.key: d for d in pool.advance()})
    assert pool.leave({"both"}) == ["both"]
    assert [len(batch.members) for batch in pool.batches.values()] == [1, 1]  # one row left in each model
    while len(pool):
        for one in pool.advance():
            ended[one.key] = one
    assert set(ended) == {"a-only", "b-only"}
    for key in ("a-only", "b-only"):
        got = ended[key].decoded
        assert got is not None and got.completion == decode(views[key], specs[key]).completion
