"""Model fingerprints cover every byte of every file: weights changed in the middle of a large file give a new
fingerprint, so records made with the old weights are never served for the new ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers import models
from workers.config import PACKAGED_MODELS
from workers.models import PACKAGED_FINGERPRINTS, ModelFilesError, source_fingerprint

SIZE = (1 << 30) + (64 << 20)  # over 1 GiB, where fingerprints once sampled only the head and the tail


def test_a_change_in_the_middle_of_a_large_file_changes_the_fingerprint(tmp_path: Path) -> None:
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    with weights.open("wb") as fh:
        fh.truncate(SIZE)  # sparse: no disk is used for the zeros
    before = source_fingerprint(weights.parent, tmp_path / "data")
    stat = weights.stat()
    with weights.open("r+b") as fh:
        fh.seek(SIZE // 2)
        fh.write(b"\x01")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # as any rewrite would move it
    after = source_fingerprint(weights.parent, tmp_path / "data")
    assert after != before
    assert source_fingerprint(weights.parent, tmp_path / "data") == after  # remembered, and stable


def test_the_fingerprint_is_remembered_per_size_and_mtime(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"abc" * 1000)
    first = source_fingerprint(weights, tmp_path / "data")
    assert len(list((tmp_path / "data" / "fingerprints").iterdir())) == 1
    assert source_fingerprint(weights, tmp_path / "data") == first


def test_a_packaged_model_whose_file_differs_from_the_pinned_digest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = PACKAGED_MODELS["smollm2-135m-instruct"]
    assert source_fingerprint(models.source_path(spec, tmp_path), tmp_path) == PACKAGED_FINGERPRINTS[spec.name]
    swapped = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    swapped.write_bytes(b"GGUF" + b"\0" * 1000)  # another file where the packaged one should be
    monkeypatch.setattr(models, "source_path", lambda spec, data_dir: swapped)
    with pytest.raises(ModelFilesError, match="not the pinned"):
        models.safetensors_dir(spec, tmp_path / "data")
