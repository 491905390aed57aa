"""The contract: jobs and records are validated on read; hostile or broken entries are rejected."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from workers.contract.jobs import CrossSide, ScoreJob, decode_job, encode_job
from workers.contract.keys import record_key
from workers.contract.names import MAX_JOB_POSITIONS, ProtocolError, record_id
from workers.contract.records import STAT_ARRAYS, decode_meta, decode_stats, encode_arrays


def stats(n: int, k: int) -> dict[str, np.ndarray]:
    return {
        name: np.zeros((n,) if trailing is None else (n, k), dtype=dtype)
        for name, (dtype, trailing) in STAT_ARRAYS.items()
    }


def test_job_round_trip() -> None:
    job = ScoreJob(job_id="j", tenant="t", model="m", fingerprint="f", record_id="0" * 32, token_ids=[1, 2, 3])
    fields = {k.encode(): v.encode() for k, v in encode_job(job).items()}
    assert decode_job(fields) == job


@pytest.mark.parametrize(
    "fields",
    [
        {b"job": pickle.dumps({"kind": "score"})},
        {b"job": b'{"kind": "score"}'},
        {b"job": b'{"kind": "exec", "job_id": "x"}'},
        {b"job": b"[]"},
        {b"other": b"{}"},
        {
            b"job": b'{"kind":"score","job_id":"j","tenant":"t","model":"m","fingerprint":"f","record_id":"r",'
            b'"token_ids":[1],"extra":"field"}'
        },
    ],
)
def test_hostile_or_broken_jobs_are_rejected(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode_job(fields)


def test_stats_blob_validation() -> None:
    good = stats(4, 3)
    assert set(decode_stats(encode_arrays(good), 4, 3)) == set(STAT_ARRAYS)
    blob = encode_arrays(good)
    with pytest.raises(ProtocolError):
        decode_stats(blob[: len(blob) // 2], 4, 3)  # truncated
    with pytest.raises(ProtocolError):
        decode_stats(encode_arrays(good), 5, 3)  # wrong shape
    with pytest.raises(ProtocolError):
        decode_stats(pickle.dumps(good), 4, 3)
    nan = stats(4, 3)
    nan["entropy"][1] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        decode_stats(encode_arrays(nan), 4, 3)
    wrong_type = stats(4, 3)
    wrong_type["rank"] = wrong_type["rank"].astype(np.float32)
    with pytest.raises(ProtocolError):
        decode_stats(encode_arrays(wrong_type), 4, 3)
    with pytest.raises(ProtocolError):
        decode_meta(b'{"record_id": 3}')


def test_record_ids_depend_on_everything_that_defines_a_record() -> None:
    base = record_id(b"s", "alpha", "fp", [1, 2, 3], {"kind": "score"})
    assert base == record_id(b"s", "alpha", "fp", [1, 2, 3], {"kind": "score"})
    assert len(base) == 32 and int(base, 16) >= 0
    variants = [
        record_id(b"other", "alpha", "fp", [1, 2, 3], {"kind": "score"}),
        record_id(b"s", "beta", "fp", [1, 2, 3], {"kind": "score"}),
        record_id(b"s", "alpha", "fp2", [1, 2, 3], {"kind": "score"}),
        record_id(b"s", "alpha", "fp", [1, 2, 4], {"kind": "score"}),
        record_id(b"s", "alpha", "fp", [1, 2, 3], {"kind": "generate", "n_prompt": 2}),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_keys_cannot_reach_another_tenant() -> None:
    """Tenant `a` asking for id `b:X` must not reach tenant `a:b`'s record X: neither name may hold a colon."""
    rid = "0123456789abcdef" * 2
    assert record_key("alpha", rid) == f"lp:rec:alpha:{rid}"
    for tenant, asked in [("a", f"b:{rid}"), ("a:b", rid), ("", rid), ("alpha", rid.upper()), ("alpha", rid[:-1])]:
        with pytest.raises(ProtocolError):
            record_key(tenant, asked)


def test_jobs_with_a_bad_tenant_or_record_id_or_too_many_positions_are_refused() -> None:
    good = ScoreJob(job_id="j", tenant="alpha", model="m", fingerprint="f", record_id="0" * 32, token_ids=[1])
    for update in ({"tenant": "a:b"}, {"record_id": "b:" + "0" * 30}):
        with pytest.raises(ProtocolError):
            decode_job(encode_job(good.model_copy(update=update)))
    CrossSide(record_id="0" * 32, model="m", fingerprint="f", positions=list(range(1, MAX_JOB_POSITIONS + 1)))
    with pytest.raises(ValueError, match="at most"):
        CrossSide(record_id="0" * 32, model="m", fingerprint="f", positions=list(range(MAX_JOB_POSITIONS + 1)))


def test_the_public_twins_of_contract_types_say_the_same() -> None:
    """The schemas the Python client imports (no workers, no safetensors) restate a few contract types; a change to
    one side alone would let the gateway accept what a worker refuses, or the reverse."""
    from typing import get_args

    from logprobe.schemas.attribution import ReagentOptions
    from logprobe.schemas.score import Retain as PublicRetain
    from workers.contract.jobs import ReagentParams
    from workers.contract.names import Retain

    assert get_args(PublicRetain) == get_args(Retain)
    public, contract = ReagentOptions.model_json_schema(), ReagentParams.model_json_schema()
    assert public["properties"] == contract["properties"] and public.get("required") == contract.get("required")
