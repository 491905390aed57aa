"""bench/gpu_check.py, the checks a lent GPU runs (#33), runs on the CPU here at small sizes: it does not rot while
no GPU is lent, and its exactness checks pass on the CPU's bf16 and fp16 arithmetic."""

from __future__ import annotations

import subprocess
import sys

from app.launcher.local_service import ROOT


def test_the_gpu_check_runs_on_the_cpu_and_its_checks_pass() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--device",
            "cpu",
            "--vocab",
            "2048",
            "--rows",
            "64",
            "--rounds",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("exactness") and ": ok" in line for line in lines) == 2  # bf16 and fp16
    assert any(line.startswith("statistics on cpu") and ": ok" in line for line in lines)
    assert sum(line.startswith("throughput") and "ratio" in line for line in lines) == 3
