"""RoPE scaling of a GGUF model: from ``rope.scaling.*`` keys, or recovered from a ``rope_freqs`` tensor.

llama.cpp's converter does not write Llama 3 scaling as keys. It writes one divisor per rotary
frequency (``rope_freqs.weight``), computed from ``factor``, ``low_freq_factor``, ``high_freq_factor``
and an original context of 8192. The parameters are recovered from those divisors (the smooth band
between the two cut-offs is linear in the frequency) and accepted only if they reproduce every
divisor, so the engine's rotary tables equal llama.cpp's.
"""

from __future__ import annotations

import math

import numpy as np

from backend.loader.errors import ModelLoadError
from backend.loader.gguf_metadata import GGUFMetadata
from backend.models.config import RopeScaling

# What llama.cpp's converter assumes when it computes rope_freqs.
LLAMA3_ORIGINAL_CONTEXT = 8192
_TOLERANCE = 1e-4


def rope_scaling_from_gguf(
    meta: GGUFMetadata, arch: str, head_dim: int, theta: float, rope_freqs: np.ndarray | None
) -> RopeScaling | None:
    def key(name: str) -> str:
        return f"{arch}.rope.{name}"

    kind = meta.get_string(key("scaling.type"))
    original = meta.get_integer(key("scaling.original_context_length"))
    declared: RopeScaling | None = None
    if kind == "linear":
        declared = RopeScaling("linear", factor=meta.number(key("scaling.factor")))
    elif kind == "llama3":
        declared = RopeScaling(
            "llama3",
            factor=meta.number(key("scaling.factor")),
            low_freq_factor=meta.get_number(key("scaling.low_freq_factor")) or 1.0,
            high_freq_factor=meta.get_number(key("scaling.high_freq_factor")) or 4.0,
            original_max_position_embeddings=original or LLAMA3_ORIGINAL_CONTEXT,
        )
    elif kind is None and (meta.get_number(key("scale_linear")) or 1.0) != 1.0:
        # Files from before rope.scaling.* spelled linear scaling this way.
        declared = RopeScaling("linear", factor=meta.number(key("scale_linear")))
    elif kind not in (None, "none"):
        raise ModelLoadError(
            f"rope scaling type {kind!r} is not supported (supported: linear, llama3)", path=meta.path
        )
    if rope_freqs is None:
        return declared
    if declared is not None and declared.rope_type != "llama3":
        raise ModelLoadError(
            "rope_freqs.weight combined with linear rope scaling is not supported", path=meta.path
        )
    candidates = (
        [declared] if declared is not None else _llama3_candidates(rope_freqs, head_dim, theta, original)
    )
    if not candidates:
        return None
    for candidate in candidates:
        if np.allclose(llama3_divisors(head_dim, theta, candidate), rope_freqs, rtol=_TOLERANCE, atol=0.0):
            return candidate
    raise ModelLoadError(
        "rope_freqs.weight does not match Llama 3 rope scaling with any factor/low/high parameters",
        path=meta.path,
    )


def llama3_divisors(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """What llama.cpp's converter stores in ``rope_freqs`` for these parameters (one per frequency)."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / freqs
    original = scaling.original_max_position_embeddings
    low, high, factor = scaling.low_freq_factor, scaling.high_freq_factor, scaling.factor
    smooth = (original / wavelen - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    divisors = np.where(wavelen > original / low, factor, blended)
    return np.where(wavelen < original / high, 1.0, divisors)


def _llama3_candidates(
    rope_freqs: np.ndarray, head_dim: int, theta: float, original: int | None
) -> list[RopeScaling]:
    divisors = rope_freqs.astype(np.float64)
    factor = float(divisors.max())
    if np.allclose(divisors, 1.0, rtol=0.0, atol=_TOLERANCE):
        return []
    original = original or LLAMA3_ORIGINAL_CONTEXT
    candidates = []
    band = (divisors > 1 + _TOLERANCE) & (divisors < factor * (1 - _TOLERANCE))
    if factor > 1 and band.sum() >= 2:
        freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        # In the band, smooth = (original / wavelen - low) / (high - low): a line in the frequency.
        smooth = (1 / divisors[band] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(original * freqs[band] / (2 * math.pi), smooth, 1)
        if slope > 0:
            low = -intercept / slope
            high = low + 1 / slope
            for digits in (3, None):
                candidates.append(
                    RopeScaling(
                        "llama3",
                        factor=round(factor, 6),
                        low_freq_factor=round(low, digits) if digits else float(low),
                        high_freq_factor=round(high, digits) if digits else float(high),
                        original_max_position_embeddings=original,
                    )
                )
    candidates.append(
        RopeScaling("llama3", factor=round(factor, 6), original_max_position_embeddings=original)
    )
    return candidates
