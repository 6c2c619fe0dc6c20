"""Linear layers whose weights are prepared once for the fastest matmul the device offers.

On CPU, oneDNN's prepacked weight layout (``mkldnn._reorder_linear_weight`` with
``mkldnn._linear_pointwise``) runs the matmuls of this model 1.2-2.4x faster than ``F.linear`` on
the plain layout, most at the one-row shapes of decoding (measured here: a 3072x576 bf16 matmul
for one row, 213 us against 465 us). It is verified against ``F.linear`` when a weight is packed
and silently not used where it is unavailable or disagrees; CUDA uses ``F.linear``.

Where oneDNN cannot pack bfloat16 or float16 weights (CPUs without AVX512-BF16/AMX, such as AVX2
ones), PyTorch's own low-precision matmul is a loop of matrix-vector products: fine for one row,
but its cost grows with every row (measured here: a 512-token prefill step 8.2 s in matmuls, 1.2 s
this way). From ``UPCAST_MIN_ROWS`` rows on, the weight is therefore widened to float32 a tile of
``UPCAST_TILE_ROWS`` output rows at a time, inside the cache, and multiplied by the float32 matmul;
the weights stay in their own dtype in memory.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from backend.layers.precision import native_matmul

logger = logging.getLogger(__name__)

_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
# Measured on an AVX2 CPU, for every matmul of a step of SmolLM2-135M: 4 rows 60 ms in bfloat16
# against 70 ms widened, 8 rows 146 against 77; tiles of 1,024 rows beat 256, 512 and 2,048.
UPCAST_MIN_ROWS = 8
UPCAST_TILE_ROWS = 1024


class Linear:
    __slots__ = ("bias", "in_features", "nbytes", "out_features", "packed", "upcast", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        # Bytes read per use: the packed copy holds the same number of elements as the weight.
        self.nbytes = weight.numel() * weight.element_size() + (
            bias.numel() * bias.element_size() if bias is not None else 0
        )
        self.packed = _pack(weight, bias)
        # Keep only one copy of the weight: the packed one when it exists.
        self.weight: torch.Tensor | None = None if self.packed is not None else weight
        self.upcast = self.packed is None and not native_matmul(weight.dtype, weight.device.type)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return out
        if self.weight is None:  # pragma: no cover - one of the two is always set
            raise RuntimeError("linear layer without weights")
        if self.upcast and x.numel() >= UPCAST_MIN_ROWS * self.in_features:
            return _widened_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def _widened_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` in float32 over tiles of output rows, the result in ``x``'s dtype."""
    wide = x.float()
    tiles = []
    for start in range(0, weight.shape[0], UPCAST_TILE_ROWS):
        end = start + UPCAST_TILE_ROWS
        tile_bias = bias[start:end].float() if bias is not None else None
        tiles.append(F.linear(wide, weight[start:end].float(), tile_bias))
    out = tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=-1)
    return out.to(x.dtype)


def _pack(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return None
    if weight.dtype not in _TOLERANCE:
        return None
    if not native_matmul(weight.dtype, "cpu"):
        return None
    try:
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight)
        probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
    except (RuntimeError, AttributeError):
        logger.info("prepacked matmul unavailable; using F.linear")
        return None
    expected = F.linear(probe, weight, bias)
    scale = expected.abs().max().item() or 1.0
    if (got.float() - expected.float()).abs().max().item() > _TOLERANCE[weight.dtype] * scale:
        logger.warning("prepacked matmul disagrees with F.linear; using F.linear")
        return None
    return packed
