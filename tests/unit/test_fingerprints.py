"""Model fingerprints cover every byte of every file: weights changed in the middle of a large file give a new
fingerprint, so records made with the old weights are never served for the new ones."""

from __future__ import annotations

import os
from pathlib import Path

from workers.models import source_fingerprint

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
