"""Which attention kernel the ViT family runs: chosen per call from the device and the
compute dtype, by measurement.

Both kernels compute the same function (softmax(q k^T / sqrt(d)) v); they differ in speed.
PyTorch's fused ``scaled_dot_product_attention`` ("sdpa") is the faster kernel in fp32 on
CPU, but under bf16 autocast writing the attention out as two matmuls and a softmax ("math")
is faster. The table below records which kernel measured fastest where (figures in
docs/SPEED.md, from ``python -m benchmarks.pretrain_throughput --side-by-side ours-sdpa
ours-math``); "auto" follows it. Anything not measured (CUDA included) uses sdpa, PyTorch's
own choice.
"""

from __future__ import annotations

import torch

ATTENTION_BACKENDS = ("auto", "sdpa", "math")

#: (device type, compute dtype) -> the kernel measured fastest there.
MEASURED_FASTEST = {
    ("cpu", torch.float32): "sdpa",
    ("cpu", torch.bfloat16): "math",
}


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a layer holding ``weight`` computes in: autocast's, where it is on for the
    weight's device, else the weight's own."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def resolve_attention_backend(preference: str, weight: torch.Tensor) -> str:
    """``preference`` ("sdpa" / "math"), or for "auto" the kernel measured fastest for the
    device and compute dtype of a layer holding ``weight``."""
    if preference != "auto":
        return preference
    return MEASURED_FASTEST.get((weight.device.type, compute_dtype(weight)), "sdpa")


__all__ = ["ATTENTION_BACKENDS", "MEASURED_FASTEST", "compute_dtype", "resolve_attention_backend"]
