"""RMSNorm with the reference arithmetic: normalize in float32, scale in the compute dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # The reference arithmetic in few ops (on CPU, F.rms_norm is still several kernels; see ops.py).
    normalized = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    return weight * normalized.to(x.dtype)
