#!/usr/bin/env bash
# The GPU checks for a lent GPU machine (#33): it reaches no registry and gets at most 64 MiB of the tree, so this
# uses the machine's own python, torch and numpy, and the tree. `workers.capture` also reads pydantic and
# safetensors: if the machine lacks them, make the folder here and carry it (the device tool's `carry`):
#   .venv/bin/python -m pip install --no-deps --target .gpu-deps pydantic pydantic-core safetensors \
#     typing-extensions annotated-types typing-inspection   # the device's python version must match this one's
# Then: bash bench/gpu_check.sh   (≤ 8 minutes; one line per figure)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".:client:.gpu-deps${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
status=0
# 1. The unit test that is skipped on a machine without a GPU, where pytest and scipy are at hand.
if $python -c "import pytest, scipy" 2>/dev/null; then
  timeout 180 $python -m pytest -q -p no:cacheprovider tests/unit/test_capture.py -k gpu -rs || status=1
else
  echo "unit test: pytest/scipy absent here; its checks run below without them"
fi
# 2-3. Exactness in bf16 and fp16, and throughput against the bare matmul.
timeout 300 $python -m bench.gpu_check --device cuda || status=1
exit $status
