"""Resident memory of a few processes (Linux /proc), sampled on a timer, and how much it grew."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # seconds since the sampler started
    rss_mb: dict[str, float]  # process name -> resident set size


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MiB; ``None`` once the process is gone (its absence shows in the report)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return None  # a zombie has no VmRSS


class RssSampler:
    """Samples every ``interval_s`` until stopped; runs on the caller's event loop (a /proc read each)."""

    def __init__(self, pids: Mapping[str, int], interval_s: float) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.started = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        sizes = {name: rss_mb(pid) for name, pid in self.pids.items()}
        at = time.perf_counter() - self.started
        self.samples.append(Sample(at, {name: mb for name, mb in sizes.items() if mb is not None}))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self.started = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()


@dataclass(frozen=True, slots=True)
class Growth:
    process: str
    after_warmup_mb: float  # mean over the first window after warm-up
    last_mb: float  # mean over the last window
    peak_mb: float

    @property
    def growth(self) -> float:
        return (self.last_mb - self.after_warmup_mb) / self.after_warmup_mb


def _mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no RSS samples in a window: the window is shorter than the sampling interval")
    return sum(values) / len(values)


def growth(samples: Sequence[Sample], first: tuple[float, float], last: tuple[float, float]) -> list[Growth]:
    """Per process: mean RSS in the ``first`` window against the ``last`` (both (from_s, to_s))."""
    names = sorted({name for s in samples for name in s.rss_mb})

    def window(name: str, span: tuple[float, float]) -> list[float]:
        return [s.rss_mb[name] for s in samples if span[0] <= s.at_s <= span[1] and name in s.rss_mb]

    return [
        Growth(
            name,
            _mean(window(name, first)),
            _mean(window(name, last)),
            max(s.rss_mb[name] for s in samples if name in s.rss_mb),
        )
        for name in names
    ]
