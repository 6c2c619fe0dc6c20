"""Fixed-seed request workloads built from real text, so every system sees the same token ids.

Prompts are windows of one token stream (the docstrings of a fixed set of standard-library modules,
which is prose that does not change between runs of the same Python). Each request starts at its own
offset, so prompts do not share prefixes by accident; the shared-prefix workload shares one on purpose.
"""

from __future__ import annotations

import importlib
import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass

Encode = Callable[[str], list[int]]

_CORPUS_MODULES = (
    "argparse", "asyncio", "collections", "csv", "datetime", "decimal", "difflib", "email.message",
    "functools", "heapq", "http.client", "itertools", "json", "logging", "pathlib", "random", "re",
    "sqlite3", "statistics", "string", "subprocess", "textwrap", "threading", "shutil", "unittest",
    "urllib.parse", "zipfile",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    output_len: int  # exactly this many tokens are generated (EOS does not stop a request)


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    num_requests: int
    prompt_len: tuple[int, int]  # inclusive range, drawn uniformly
    output_len: tuple[int, int]
    seed: int = 0


def corpus_text() -> str:
    """Docstrings of the corpus modules and their public members, in a fixed order."""
    parts: list[str] = []
    for name in _CORPUS_MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr, member in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(member) or inspect.isfunction(member)):
                continue
            parts.append(inspect.getdoc(member) or "")
    return "\n\n".join(p for p in parts if p)


def token_stream(encode: Encode, min_tokens: int) -> list[int]:
    stream = encode(corpus_text())
    if len(stream) < min_tokens:
        raise ValueError(f"the corpus has {len(stream)} tokens; the workload needs {min_tokens}")
    return stream


def build_workload(stream: list[int], shape: WorkloadShape, prefix: str = "req") -> list[Request]:
    """Requests with uniformly drawn prompt and output lengths; prompts are windows of ``stream``."""
    rng = random.Random(shape.seed)
    requests: list[Request] = []
    starts: set[int] = set()
    for i in range(shape.num_requests):
        prompt_len = rng.randint(*shape.prompt_len)
        output_len = rng.randint(*shape.output_len)
        start = rng.randrange(len(stream) - prompt_len)
        while start in starts:  # no two prompts start at the same place
            start = rng.randrange(len(stream) - prompt_len)
        starts.add(start)
        requests.append(Request(f"{prefix}-{i}", stream[start : start + prompt_len], output_len))
    return requests


def build_shared_prefix_workload(
    stream: list[int], *, num_requests: int, prefix_len: int, suffix_len: int, output_len: int, seed: int = 1
) -> list[Request]:
    """Requests that share one ``prefix_len``-token system prompt, each with its own suffix."""
    rng = random.Random(seed)
    start = rng.randrange(len(stream) - prefix_len)
    system = stream[start : start + prefix_len]
    requests: list[Request] = []
    offsets = rng.sample(range(len(stream) - suffix_len), num_requests)  # distinct suffixes
    for i, offset in enumerate(offsets):
        requests.append(Request(f"prefix-{i}", system + stream[offset : offset + suffix_len], output_len))
    return requests
