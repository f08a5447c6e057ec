"""FLOPs of a training step with ``FlopCounterMode``, including bitsandbytes' 4-bit matmuls.

From bitsandbytes 0.50 the forward of a 4-bit linear is the custom op
``torch.ops.bitsandbytes.gemm_4bit``, which the counter does not know: without a formula a QLoRA
step would look almost free. The formula below counts it like the dense matmul it replaces
(the dequantization is memory work, not counted). The backward pass of a 4-bit linear
dequantizes and calls ordinary aten matmuls, which are counted already.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

T = TypeVar("T")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, for MFU.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


def _gemm_4bit_flops(a_shape, b_shape, shape_b, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """A [..., K] @ W[N, K]^T: 2·M·N·K, with W's logical shape ``shape_b = [N, K]``."""
    rows = math.prod(a_shape[:-1])
    out_features, in_features = shape_b[0], shape_b[-1]
    return 2 * rows * out_features * in_features


def _register_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)

        op = torch.ops.bitsandbytes.gemm_4bit
    except (ImportError, AttributeError, RuntimeError):
        return
    register_flop_formula(op)(_gemm_4bit_flops)


_register_bitsandbytes()


def count_flops(fn: Callable[[], T]) -> tuple[int, T]:
    """Floating-point operations of ``fn()`` (forward + backward if it runs both), and its result."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return int(counter.get_total_flops()), result


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense bf16 peak for MFU, or None where unknown (CPUs, unlisted GPUs)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops
    return None


def flops_metrics(
    flops_per_step: int, world_size: int, step_s: float, peak: float | None
) -> dict[str, float]:
    """``flops/per_step_tflop`` (all ranks) and, where the device's peak is known, ``flops/mfu``:
    this rank's FLOPs per second of step over its peak (``peak`` in TFLOP/s)."""
    metrics = {"flops/per_step_tflop": flops_per_step * world_size / 1e12}
    if peak:
        metrics["flops/mfu"] = flops_per_step / step_s / (peak * 1e12)
    return metrics
