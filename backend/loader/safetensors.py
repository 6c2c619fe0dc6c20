"""Loading a Hugging Face model directory: config, tokenizer, and single or sharded ``*.safetensors``.

The safetensors format (8-byte little-endian header length, JSON header, raw little-endian data) is
read here over a copy-on-write memory map of the already-open file, so the bytes parsed are the
bytes whose SHA-256 was checked. Every header entry is bounds-checked before any tensor is built.
"""

from __future__ import annotations

import logging
import math
import mmap
import re
import struct
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import torch

from backend.loader.errors import ModelLoadError, json_object
from backend.loader.hf_config import config_from_hf
from backend.loader.integrity import ExpectedDigest, verify_files
from backend.loader.tokenizer import TOKENIZER_FILES, TokenizerBundle, tokenizer_from_hf_files
from backend.loader.weights import PROGRESS_LOG_BYTES, Progress, check_shapes
from backend.models.config import ModelConfig

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILES = ("config.json", "generation_config.json")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Buffers some checkpoints carry that the model recomputes.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_MAX_HEADER_BYTES = 100 << 20
_MAX_INDEX_BYTES = 64 << 20


def model_files(directory: Path) -> tuple[list[str], list[str]]:
    """(shards, other files the loader reads), as names relative to ``directory``.

    The shard index is the one file read before its hash is checked: it says which files to hash.
    ``load_hf_dir`` parses the verified copy again and insists it names the same shards.
    """
    if not (directory / "config.json").is_file():
        raise ModelLoadError("config.json is missing: not a Hugging Face model directory", path=directory)
    if (directory / INDEX_FILE).is_file():
        with (directory / INDEX_FILE).open("rb") as index:
            shards = _index_shards(index.read(_MAX_INDEX_BYTES + 1), directory / INDEX_FILE)
    elif (directory / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        shards = sorted(p.name for p in directory.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError("no *.safetensors weights found", path=directory)
    for shard in shards:
        if not (directory / shard).is_file():
            raise ModelLoadError(f"shard {shard} is missing", path=directory)
    names = [INDEX_FILE, *CONFIG_FILES, *TOKENIZER_FILES]
    return shards, [name for name in names if (directory / name).is_file()]


def _index_shards(raw: bytes, path: Path) -> list[str]:
    if len(raw) > _MAX_INDEX_BYTES:
        raise ModelLoadError(f"index is larger than {_MAX_INDEX_BYTES} bytes", path=path)
    weight_map = json_object(raw, path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError("weight_map is missing or empty", path=path)
    shards = sorted(set(map(str, weight_map.values())))
    for shard in shards:
        if Path(shard).name != shard:
            raise ModelLoadError(f"shard name {shard!r} must be a plain file name", path=path)
    return shards


def load_hf_dir(
    directory: Path,
    *,
    dtype: torch.dtype,
    expected_sha256: ExpectedDigest | None = None,
    progress: Progress | None = None,
    log_progress_bytes: int = PROGRESS_LOG_BYTES,
) -> tuple[ModelConfig, dict[str, torch.Tensor], TokenizerBundle]:
    shards, others = model_files(directory)
    with ExitStack() as stack:
        files: dict[str, IO[bytes]] = {
            name: stack.enter_context((directory / name).open("rb")) for name in others
        }
        files |= {name: stack.enter_context((directory / name).open("rb")) for name in shards}
        if expected_sha256 is not None:
            verify_files(files, expected_sha256, directory, single=False)
        contents = {name: files[name].read() for name in others}
        if INDEX_FILE in contents and _index_shards(contents[INDEX_FILE], directory / INDEX_FILE) != shards:
            raise ModelLoadError("the index changed while loading", path=directory / INDEX_FILE)
        generation = contents.get("generation_config.json")
        config = config_from_hf(
            json_object(contents["config.json"], directory / "config.json"),
            directory / "config.json",
            None if generation is None else json_object(generation, directory / "generation_config.json"),
        )
        tokenizer = tokenizer_from_hf_files(directory, contents)
        located = _locate_tensors(files, shards, config, directory)
        check_shapes(config, {name: entry["shape"] for name, (_, entry) in located.items()}, directory)
        large = sum(files[shard].seek(0, 2) for shard in shards) >= log_progress_bytes
        weights: dict[str, torch.Tensor] = {}
        for done, shard in enumerate(shards, 1):
            names = [name for name, (owner, _) in located.items() if owner == shard]
            weights |= _read_tensors(files[shard], {n: located[n][1] for n in names}, dtype)
            if progress is not None:
                progress(len(weights), len(located))
            if large:
                logger.info(
                    "loaded shard %d/%d (%d/%d tensors) of %s",
                    done,
                    len(shards),
                    len(weights),
                    len(located),
                    directory.name,
                )
    return config, weights, tokenizer


def _locate_tensors(
    files: Mapping[str, IO[bytes]], shards: list[str], config: ModelConfig, directory: Path
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Tensor name -> (shard, header entry) for every tensor the model uses."""
    located: dict[str, tuple[str, dict[str, Any]]] = {}
    for shard in shards:
        for name, entry in _read_header(files[shard], directory / shard).items():
            if name in located:
                raise ModelLoadError(
                    f"tensor {name!r} appears in {located[name][0]} and {shard}", path=directory
                )
            located[name] = (shard, entry)
    for name in [n for n in located if _IGNORED.fullmatch(n)]:
        del located[name]
    if config.tie_word_embeddings:
        # A tied checkpoint may still carry the copy; the embedding is what the model uses.
        located.pop("lm_head.weight", None)
    return located


def read_safetensors(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, in its stored dtype unless ``dtype`` is given."""
    with path.open("rb") as file:
        return _read_tensors(file, _read_header(file, path), dtype)


def _read_header(file: IO[bytes], path: Path) -> dict[str, dict[str, Any]]:
    size = file.seek(0, 2)
    file.seek(0)
    prefix = file.read(8)
    if len(prefix) < 8:
        raise ModelLoadError("file is truncated: no safetensors header", path=path)
    (length,) = struct.unpack("<Q", prefix)
    if length > min(_MAX_HEADER_BYTES, size - 8):
        raise ModelLoadError(f"header length {length} exceeds the file ({size} bytes)", path=path)
    header = json_object(file.read(length), path)
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for name, entry in header.items():
        where = f"tensor {name!r}"
        if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
            raise ModelLoadError(
                f"{where} has dtype {entry.get('dtype') if isinstance(entry, dict) else entry!r}, "
                f"supported: {', '.join(_DTYPES)}",
                path=path,
            )
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise ModelLoadError(f"{where} has an invalid shape {shape!r}", path=path)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
            raise ModelLoadError(f"{where} has invalid data_offsets {offsets!r}", path=path)
        begin, end = offsets
        itemsize = _DTYPES[entry["dtype"]].itemsize
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * itemsize:
            raise ModelLoadError(
                f"{where} data [{begin}, {end}) does not fit shape {shape} in {data_size} data bytes "
                "(truncated or corrupt file)",
                path=path,
            )
        entry["start"] = 8 + length + begin
    return header


def _read_tensors(
    file: IO[bytes], entries: Mapping[str, dict[str, Any]], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    if not entries:
        return {}
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        return {name: _tensor(mapped, entry, dtype) for name, entry in entries.items()}


def _tensor(mapped: mmap.mmap, entry: dict[str, Any], dtype: torch.dtype | None) -> torch.Tensor:
    shape = entry["shape"]
    stored = _DTYPES[entry["dtype"]]
    dtype = dtype or stored
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    view = torch.frombuffer(mapped, dtype=stored, count=count, offset=entry["start"])
    # A copy in the compute dtype, so nothing keeps the mapping alive.
    return view.view(shape).to(dtype, copy=True)
