"""The Python client from a client-only install (`pip install ./client`, the `logprobe-client` distribution), in a
fresh venv, against the live service: `from logprobe import Client` scores, exports rows and analyses with httpx,
pydantic and numpy alone, and site-packages holds no `app` or `workers` package."""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.launcher.local_service import ROOT
from tests.conftest import MODEL

pytestmark = pytest.mark.slow

SCRIPT = """
import importlib.util, json, site, sys
from pathlib import Path
from logprobe import Client
absent = [m for m in ("fastapi", "starlette", "redis", "safetensors", "tokenizers", "torch", "uvicorn")
          if importlib.util.find_spec(m) is not None]
with Client(sys.argv[1], api_key="key-alpha") as lp:
    scored = lp.score(sys.argv[2], text="The capital of France is Paris.")
    rows = lp.logprobs(scored.record_id, start=1, stop=4)
    answer = lp.analyze("uncertainty", record_id=scored.record_id, methods=["perplexity"])
loaded = sorted(m for m in ("fastapi", "starlette", "redis", "safetensors") if m in sys.modules)
names = ("app", "workers", "logprobe")
ours = sorted(p.name for d in site.getsitepackages() for p in Path(d).iterdir() if p.name in names)
print(json.dumps({"installed": absent, "loaded": loaded, "ours": ours, "record_id": scored.record_id,
                  "logprob": [t.logprob for t in scored.tokens], "shape": list(rows.shape), "dtype": str(rows.dtype),
                  "rows": rows.tolist(), "perplexity": answer.sequence["perplexity"]}))
"""


def _copy_client(dest: Path) -> Path:
    """The client's distribution only (client/), so the build writes nothing into the checkout."""
    shutil.copytree(ROOT / "client", dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    return dest


def test_a_client_only_install_gives_a_working_client(tmp_path: Path, service: str, alpha: httpx.Client) -> None:
    project = _copy_client(tmp_path / "client")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(project)],
        check=True,
        timeout=600,
    )
    done = subprocess.run(
        [str(python), "-c", SCRIPT, service, MODEL], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["installed"] == [] and got["loaded"] == []  # none of the gateway's packages came along
    assert got["ours"] == ["logprobe"]  # the client alone: no `app`, no `workers` in site-packages
    # The same numbers as the gateway's own answers to the same record.
    expected = alpha.get(f"/v1/records/{got['record_id']}").json()
    assert got["logprob"] == [t["logprob"] for t in expected["tokens"]]
    rows = np.asarray(got["rows"], dtype=np.float32)
    assert got["shape"] == [3, rows.shape[1]] and got["dtype"] == "float32"
    assert np.allclose(np.exp(rows.astype(np.float64)).sum(axis=1), 1.0, atol=1e-4)
    chosen = [t["id"] for t in expected["tokens"][1:4]]  # row i predicted token i+1
    assert np.allclose(rows[np.arange(3), chosen], [t["logprob"] for t in expected["tokens"][1:4]], atol=1e-5)
    lp = np.array([t["logprob"] for t in expected["tokens"][1:]], dtype=np.float64)
    assert got["perplexity"] == pytest.approx(float(np.exp(-lp.mean())), rel=1e-6)
