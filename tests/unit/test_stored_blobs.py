"""Hidden-state and row blobs read back from Redis are validated: truncated, mistyped, misshapen or
non-finite blobs are refused with record_corrupt, never used."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.numpy import save as st_save_numpy
from safetensors.torch import save as st_save_torch

from workers.contract.records import RecordMeta
from workers.outcomes import JobFailed
from workers.record_store import _stored_hidden, _stored_rows

META = RecordMeta(
    record_id="r",
    tenant="t",
    model="m",
    fingerprint="f",
    kind="score",
    token_ids=[1, 2, 3, 4],
    storage="hidden",
    hidden_dtype="float32",
    topk=2,
    vocab_size=10,
    hidden_size=5,
)


def test_good_blobs_load() -> None:
    hidden = torch.randn(3, 5)
    assert torch.equal(_stored_hidden(st_save_torch({"hidden": hidden}), 3, META), hidden)
    rows = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    assert np.array_equal(_stored_rows(st_save_numpy({"rows": rows}), 3, 10), rows)


@pytest.mark.parametrize(
    "blob",
    [
        st_save_torch({"hidden": torch.randn(3, 5)})[:-7],  # truncated
        st_save_torch({"hidden": torch.randn(4, 5)}),  # one row too many
        st_save_torch({"hidden": torch.randn(3, 5).half()}),  # another dtype than the record says
        st_save_torch({"hidden": torch.tensor([[float("nan")] * 5] * 3)}),
        st_save_torch({"other": torch.randn(3, 5)}),
        pickle.dumps(torch.randn(3, 5)),
        b"",
    ],
)
def test_bad_hidden_blobs_are_refused(blob: bytes) -> None:
    with pytest.raises(JobFailed) as err:
        _stored_hidden(blob, 3, META)
    assert err.value.error.code == "record_corrupt"


@pytest.mark.parametrize(
    "blob",
    [
        st_save_numpy({"rows": np.zeros((3, 9), dtype=np.float32)}),
        st_save_numpy({"rows": np.zeros((3, 10), dtype=np.float64)}),
        st_save_numpy({"rows": np.full((3, 10), np.nan, dtype=np.float32)}),
        pickle.dumps(np.zeros((3, 10))),
    ],
)
def test_bad_row_blobs_are_refused(blob: bytes) -> None:
    with pytest.raises(JobFailed) as err:
        _stored_rows(blob, 3, 10)
    assert err.value.error.code == "record_corrupt"
