"""Whether a device multiplies matrices of a dtype natively.

On CPU, bfloat16 and float16 matmuls are native only where oneDNN has the instructions for them
(AVX512-BF16/AMX, AVX512-FP16); elsewhere (AVX2) PyTorch falls back to a generic loop that is fast
for one row and slow for more. The engine's default dtype, the linear layers and decode attention
all decide by this one answer.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def native_matmul(dtype: torch.dtype, device_type: str) -> bool:
    if device_type != "cpu" or dtype in (torch.float32, torch.float64):
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return False
