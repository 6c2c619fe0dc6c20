"""How many examples the property-based fuzz tests run: CI's bounded count times WARDEN_FUZZ_SCALE.

``make test`` runs them at scale 1; ``python -m bench.fuzz_properties`` runs the same properties at a
larger scale for a longer search.
"""

from __future__ import annotations

import os

SCALE_VARIABLE = "WARDEN_FUZZ_SCALE"


def examples(count: int) -> int:
    """``count`` times the scale in the environment (at least 1; a bad value is an error, not 1)."""
    raw = os.environ.get(SCALE_VARIABLE, "1")
    try:
        scale = int(raw)
    except ValueError:
        raise ValueError(f"{SCALE_VARIABLE} must be a positive integer, not {raw!r}") from None
    if scale < 1:
        raise ValueError(f"{SCALE_VARIABLE} must be a positive integer, not {raw!r}")
    return count * scale
