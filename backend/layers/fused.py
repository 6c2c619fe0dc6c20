"""The fused CPU kernels (``cpu_kernels.cpp``): built once per source and torch version, then loaded.

A one-row decode step runs some 75 small torch ops per layer, each paying several microseconds of
dispatch, which is a third of a step for a small model. The kernels do RMSNorm (with the residual
add), rotary embedding, SwiGLU's ``silu(gate) * up`` and paged decode attention in one call each;
``backend/layers/ops.py`` puts them behind the same interface as the plain torch path, which stays
the reference and the path everywhere else (CUDA, or where no C++ compiler is at hand).

The build takes about a minute and is cached under ``WARDEN_KERNEL_CACHE`` (default
``~/.cache/warden/kernels``); ``make bootstrap`` and the container images build it ahead of time.
``WARDEN_CPU_KERNELS=0`` turns the kernels off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
# -ffp-contract=off: no fused multiply-add where the reference rounds between the multiply and the add.
CFLAGS = ["-O3", "-ffp-contract=off"]


def enabled() -> bool:
    return os.environ.get("WARDEN_CPU_KERNELS", "1") != "0"


def cache_root() -> Path:
    configured = os.environ.get("WARDEN_KERNEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "warden" / "kernels"


def build_name() -> str:
    """A name unique to the source, the flags and the torch build, so a stale build is never loaded."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(torch.__version__.encode())
    return f"warden_cpu_kernels_{digest.hexdigest()[:16]}"


@cache
def cpu_kernels() -> ModuleType | None:
    """The compiled kernels, building them if needed; ``None`` when off or when they cannot be built."""
    if not enabled():
        return None
    name = build_name()
    directory = cache_root() / name
    library = directory / f"{name}.so"
    try:
        # A build already there is imported as is: no compiler, no ninja, no write (read-only images).
        return _import(name, library) if library.exists() else _build(name, directory)
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as exc:
        reason = {"reason": type(exc).__name__}
        logger.warning("CPU kernels unavailable; using the plain torch path", extra=reason)
        return None


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str, directory: Path) -> ModuleType:
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    logger.info("building the CPU kernels once (about a minute)", extra={"directory": str(directory)})
    module: ModuleType = cpp_extension.load(
        name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS, build_directory=str(directory), verbose=False
    )
    return module


def main() -> int:
    """``python -m backend.layers.fused``: build the kernels now (bootstrap and images call this)."""
    logging.basicConfig(level=logging.INFO)
    module = cpu_kernels()
    if module is None:
        print("CPU kernels: not built (disabled, or no working C++ compiler); the plain path will run")
        return 0
    print(f"CPU kernels: ready in {cache_root() / build_name()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
