"""Undefined values (null with a reason), integer ranks and parameters, the method listing's text, the errors
for missing inputs, and the span rules, against independent float64 computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from app.analysis import REGISTRY
from app.analysis.base import Context, Positions
from app.analysis.run import (
    GAVE_CONTEXT,
    GAVE_MESSAGES,
    AnalysisError,
    finite_values_or_none,
    resolve_params,
    run_methods,
    select_methods,
)
from app.platform.errors import ApiError
from app.serving.analyses import span_positions
from app.serving.cross import check_positions
from logprobe.schemas.analysis import SpanRange
from workers.capture import row_statistics
from workers.contract.names import MAX_JOB_POSITIONS
from workers.contract.records import RecordMeta

V = 500


def record(token_ids: list[int], n_prompt: int | None = None) -> RecordMeta:
    return RecordMeta(
        record_id="r",
        tenant="t",
        model="m",
        fingerprint="f",
        kind="score",
        token_ids=token_ids,
        n_prompt=n_prompt,
        storage="hidden",
        hidden_dtype="float64",
        topk=5,
        vocab_size=V,
        hidden_size=1,
    )


def case(logits: np.ndarray, targets: np.ndarray) -> tuple[RecordMeta, dict[str, np.ndarray]]:
    """Statistics of these rows computed as the worker computes them, in the rows' dtype."""
    stats = row_statistics(torch.from_numpy(logits), torch.from_numpy(targets), 5)
    return record([0, *targets.tolist()]), {k: v.numpy() for k, v in stats.items()}


def run(family: str, meta: RecordMeta, stats: dict[str, np.ndarray], names: list[str], **context: object) -> object:
    methods = select_methods(family, names, frozenset({"frequencies", "cross", "reference", "turns"}))  # type: ignore[arg-type]
    positions = np.arange(1, len(meta.token_ids))
    ctx = Context(Positions.select(meta, stats, positions), {}, **context)  # type: ignore[arg-type]
    return run_methods(methods, ctx, resolve_params(methods, {}))


def test_lrr_is_null_with_a_reason_when_every_token_has_rank_one() -> None:
    logits = np.random.default_rng(0).standard_normal((12, V)) * 3
    meta, stats = case(logits, logits.argmax(axis=1))
    result = run("detect", meta, stats, ["lrr", "log_rank", "log_likelihood"])
    assert result.sequence["lrr"] is None  # type: ignore[attr-defined]
    assert "rank 1" in result.undefined["lrr"]  # type: ignore[attr-defined]
    assert result.sequence["log_rank"] == 0.0 and set(result.undefined) == {"lrr"}  # type: ignore[attr-defined]
    logits[3, 0] = logits[3].max() + 1.0  # one token ranked second: defined again, and the ratio is exact
    meta, stats = case(logits, logits[:, 1:].argmax(axis=1) + 1)
    result = run("detect", meta, stats, ["lrr"])
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    expected = -logp[np.arange(12), meta.token_ids[1:]].sum() / np.log(2)
    assert result.sequence["lrr"] == pytest.approx(expected, rel=1e-9) and not result.undefined  # type: ignore[attr-defined]


def test_point_masses_and_flat_rows_leave_min_k_plus_plus_to_the_other_positions() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((20, V)) * 2
    logits[[2, 5], :] = -1e4  # point masses on token 7
    logits[[2, 5], 7] = 0.0
    logits[9, :] = 0.25  # flat: every token equally likely
    targets = rng.integers(0, V, 20)
    targets[[2, 5]] = 7
    meta, stats = case(logits.astype(np.float32), targets)  # float32, as workers keep them: variances are noisy
    result = run("membership", meta, stats, ["min_k_zscore", "min_k_plus_plus"])
    z = result.tokens["min_k_zscore"]  # type: ignore[attr-defined]
    assert np.flatnonzero(~np.isfinite(z)).tolist() == [2, 5, 9]
    assert result.undefined["min_k_zscore"].startswith("null at 3 of 20 positions: sigma_t is 0")  # type: ignore[attr-defined]
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    keep = np.setdiff1d(np.arange(20), [2, 5, 9])
    p = np.exp(logp[keep])
    mu = (p * logp[keep]).sum(axis=1)
    sigma = np.sqrt((p * logp[keep] ** 2).sum(axis=1) - mu**2)
    reference = (logp[keep, targets[keep]] - mu) / sigma
    np.testing.assert_allclose(z[keep], reference, rtol=1e-4, atol=1e-4)
    lowest = np.sort(reference)[: int(len(keep) * 0.2)].mean()
    assert result.sequence["min_k_plus_plus"] == pytest.approx(lowest, rel=1e-4)  # type: ignore[attr-defined]
    assert "min_k_plus_plus" not in result.undefined  # type: ignore[attr-defined]


def test_all_point_masses_make_fast_detectgpt_and_min_k_plus_plus_null() -> None:
    logits = np.full((6, V), -1e4)
    logits[:, 3] = 0.0
    meta, stats = case(logits, np.full(6, 3))
    detect = run("detect", meta, stats, ["fast_detectgpt", "log_likelihood"])
    assert detect.sequence == {"fast_detectgpt": None, "log_likelihood": 0.0}  # type: ignore[attr-defined]
    assert "point mass" in detect.undefined["fast_detectgpt"]  # type: ignore[attr-defined]
    member = run("membership", meta, stats, ["min_k_plus_plus", "min_k"])
    assert member.sequence["min_k_plus_plus"] is None and member.sequence["min_k"] == 0.0  # type: ignore[attr-defined]
    assert member.undefined["min_k_plus_plus"].startswith("at every position sigma_t is 0")  # type: ignore[attr-defined]


def test_binoculars_with_a_zero_cross_perplexity_and_drift_without_turns_are_null() -> None:
    logits = np.random.default_rng(2).standard_normal((8, V))
    meta, stats = case(logits, logits.argmax(axis=1))
    zeros = {name: np.zeros(8) for name in ("q_logp_mean", "q_logp_m2", "kl_pq")}
    detect = run("detect", meta, stats, ["binoculars"], cross=zeros)
    assert detect.sequence["binoculars"] is None and "cross-perplexity" in detect.undefined["binoculars"]  # type: ignore[attr-defined]
    near = {**zeros, "q_logp_mean": np.full(8, -1e-9)}  # rounding, not a cross-entropy: undefined too
    assert run("detect", meta, stats, ["binoculars"], cross=near).sequence["binoculars"] is None  # type: ignore[attr-defined]
    drift = run("compare", meta, stats, ["drift"], cross=zeros, turns=[(0, 0), (8, 8)])
    assert drift.sequence["drift.mean"] is None and drift.details["drift.per_turn"] == []  # type: ignore[attr-defined]
    assert drift.undefined == {"drift.mean": "no chat turn holds a position of the span"}  # type: ignore[attr-defined]


def test_uniform_rows_make_kurtosis_null_and_mean_kurtosis_skips_them() -> None:
    logits = np.random.default_rng(3).standard_normal((5, V))
    logits[1] = 0.0  # uniform: the V probability values have no variance
    meta, stats = case(logits, np.zeros(5, dtype=np.int64))
    result = run("uncertainty", meta, stats, ["kurtosis", "mean_kurtosis"])
    kurt = result.tokens["kurtosis"]  # type: ignore[attr-defined]
    assert not np.isfinite(kurt[1]) and np.isfinite(np.delete(kurt, 1)).all()
    assert result.undefined["kurtosis"].startswith("null at 1 of 5 positions")  # type: ignore[attr-defined]
    p = np.exp(logits - scipy.special.logsumexp(logits, axis=1, keepdims=True))
    rows = np.delete(p, 1, axis=0)
    expected = scipy.stats.kurtosis(rows, axis=1, fisher=True).mean()
    assert result.sequence["mean_kurtosis"] == pytest.approx(expected, rel=1e-9)  # type: ignore[attr-defined]


def test_ranks_are_integers_and_integer_parameters_stay_integers() -> None:
    logits = np.random.default_rng(4).standard_normal((6, V))
    meta, stats = case(logits, np.arange(6))
    result = run("uncertainty", meta, stats, ["rank", "logprob"])
    ranks = finite_values_or_none(result.tokens["rank"])  # type: ignore[attr-defined]
    assert all(type(r) is int for r in ranks)
    assert ranks == [1 + int(np.sum(row > row[t])) for row, t in zip(logits, range(6), strict=True)]
    assert all(type(v) is float for v in finite_values_or_none(result.tokens["logprob"]))  # type: ignore[attr-defined]
    methods = select_methods("uncertainty", ["entropy_trend"])
    resolved = resolve_params(methods, {"entropy_trend": {"block_size": 4}})["entropy_trend"]["block_size"]
    assert resolved == 4 and type(resolved) is int
    for strayed in (4.5, 4.0, "4", True):  # as strict as the top level (#30 item 15)
        with pytest.raises(AnalysisError, match="must be an integer") as err:
            resolve_params(methods, {"entropy_trend": {"block_size": strayed}})
        assert err.value.param == "params.entropy_trend.block_size"
    for strayed in ("0.2", True, None):
        with pytest.raises(AnalysisError, match="must be a number") as err:
            resolve_params(select_methods("membership", ["min_k"]), {"min_k": {"k": strayed}})
        assert err.value.param == "params.min_k.k"


def test_every_method_names_its_paper_in_one_paragraph() -> None:
    for m in REGISTRY.methods.values():
        assert m.paper and m.description, m.name
        assert "\n" not in m.description and "  " not in m.description, m.name
    assert "arXiv:2306.05540" in REGISTRY.methods["lrr"].paper
    assert "arXiv:2409.14781" in REGISTRY.methods["dc_pdd"].paper


@pytest.mark.parametrize(
    ("inputs", "param", "asks", "never_asks"),
    [
        ({"cross", "reference"}, "messages", "`messages`", "`reference_model`"),  # a reference model and a text
        ({GAVE_MESSAGES}, "reference_model", "`reference_model`", "`messages`"),  # messages alone
        (set(), "reference_model", "`reference_model` and `messages`", "`context`"),  # a text alone
        ({"cross", "reference", GAVE_CONTEXT}, "context", "`reference_model`", "give a `context`"),
    ],
)
def test_the_drift_error_asks_for_what_is_missing(inputs: set[str], param: str, asks: str, never_asks: str) -> None:
    with pytest.raises(AnalysisError) as caught:
        select_methods("compare", ["drift"], frozenset({"frequencies", *inputs}))
    assert caught.value.code == "reference_required" and caught.value.param == param
    assert asks in str(caught.value) and never_asks not in str(caught.value)


def span_error(span: object, meta: RecordMeta, reply: tuple[int, int] | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        span_positions(span, meta, reply)  # type: ignore[arg-type]
    assert caught.value.status == 422 and caught.value.param == "span"
    return caught.value


def test_span_lists_are_distinct_and_bounded_by_the_record() -> None:
    meta = record(list(range(6)))
    assert span_positions([4, 2, 1], meta).tolist() == [4, 2, 1]
    assert "position 2 appears more than once" in span_error([2, 2, 1], meta).message
    assert "at most 5 positions" in span_error([1, 2, 3, 4, 5, 1], meta).message
    assert span_error([1] * 1_000_000, meta).code == "invalid_span"  # refused before any work on the list
    assert span_error([10**30], meta).code == "invalid_span"
    assert span_error([0, 1], meta).code == "invalid_span"
    assert span_positions(SpanRange(start=2, stop=6), meta).tolist() == [2, 3, 4, 5]


def test_chat_reply_spans() -> None:
    meta = record(list(range(10)))
    assert span_positions("last_turn", meta, (6, 9)).tolist() == [6, 7, 8]
    assert span_positions("completion", meta, (6, 9)).tolist() == [6, 7, 8]
    assert span_positions("prompt", meta, (6, 9)).tolist() == [1, 2, 3, 4, 5]
    assert "assistant turn" in span_error("last_turn", meta).message
    assert "assistant turn" in span_error("completion", meta).message
    generated = record(list(range(10)), n_prompt=4)  # a generated record keeps its own prompt and completion
    assert span_positions("completion", generated, None).tolist() == [4, 5, 6, 7, 8, 9]
    assert span_error("last_turn", meta, (9, 9)).code == "empty_span"


def test_positions_sent_to_a_worker_are_bounded_by_the_record() -> None:
    meta = record(list(range(6)))
    check_positions(meta, np.arange(1, 6))
    for bad in (np.array([1, 1]), np.arange(0, 3), np.arange(1, 7), np.array([], dtype=np.int64)):
        with pytest.raises(ApiError):
            check_positions(meta, bad)
    long = record(list(range(MAX_JOB_POSITIONS + 2)))  # longer than one job may name: refused here, with a reason
    check_positions(long, np.arange(1, MAX_JOB_POSITIONS + 1))
    with pytest.raises(ApiError, match=f"between 1 and {MAX_JOB_POSITIONS} positions"):
        check_positions(long, np.arange(1, MAX_JOB_POSITIONS + 2))
