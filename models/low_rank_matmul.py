"""LoRA's A and B linears with their CPU backward products oriented so that MKL picks a fast kernel.

A LoRA update B A x multiplies through the rank r, so some of LoRA's products have a result whose
last (contiguous) dimension is r: A's forward x A^T [rows, r], and in B's backward the input
gradient dy B [rows, r] and the weight gradient dy^T h [out, r]. For r <= 8, MKL's fp32 GEMM
(2024.2) runs the two backward ones 3-10x slower than the same product computed transposed, e.g.
(B^T dy^T)^T with a result [r, rows]: on one AVX2 thread at 2080 rows x 256 features, dy^T h takes
1.5 ms at r = 4-8 against 0.15-0.18 ms for (h^T dy)^T, and dy B 0.73-0.80 ms against 0.20-0.23 ms;
at r >= 16 both orientations cost the same. It is the kernel choice, not the work, and it made
every rank below QLoRA's slower on CPU instead of cheaper (ranked LoRA's ViT and Q-Formers get
r = 6-8; `benchmarks/temporal_lora.py`).

`LowRankLinear` is a `nn.Linear` whose forward is `F.linear` (bit-identical outputs: evaluation,
inference and an adapter reloaded with plain peft are unchanged) and whose backward computes each
product in the orientation whose result has the wider last dimension: the A-B pair's forward +
backward is 2x faster at r = 4-8 (2080 x 256, one thread). Only the gradients round differently
(~1e-6 relative in fp32), so training at a narrow rank follows a slightly different trajectory than
with peft's plain `nn.Linear`. `use_low_rank_linears` converts only the linears with a side
narrower than `NARROW` (at r >= 16 the custom function's ~5% overhead buys nothing); on other
devices (cuBLAS takes either layout at one cost) and in other dtypes (bf16 on CPU is not MKL's fp32
GEMM, and measured mixed) it is `nn.Linear`. The module keeps `nn.Linear`'s parameters, state-dict
keys and `isinstance`, so peft saves, loads and merges it as it does its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# A backward result narrower than this is computed transposed on CPU (slow at r = 4-8, not at 16).
NARROW = 16


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D a [m, k], b [k, n], computed as (b^T a^T)^T when n is the narrow side on CPU."""
    if a.device.type == "cpu" and b.shape[1] < NARROW and b.shape[1] < a.shape[0]:
        return (b.t() @ a.t()).t()
    return a @ b


class _LowRankLinearFunction(torch.autograd.Function):
    """y = x W^T (no bias) as `F.linear` computes it, its backward's products oriented by `_matmul`.

    x [..., in], weight [out, in] → y [..., out]; backward: dx = dy W, dW = dy^T x.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        # nn.Linear's own kernel: outputs (and so evaluation, inference and a model reloaded with
        # plain peft) stay bit-identical; of the narrow products the forward one costs least.
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul(grad_rows, weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = _matmul(grad_rows.t(), x.reshape(-1, x.shape[-1]))
        return grad_x, grad_weight


class LowRankLinear(nn.Linear):
    """`nn.Linear` (bias-free, as LoRA's A and B are) whose CPU products avoid MKL's narrow kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp32 = x.dtype == self.weight.dtype == torch.float32
        if self.bias is not None or x.device.type != "cpu" or not fp32:
            return super().forward(x)
        return _LowRankLinearFunction.apply(x, self.weight)


def use_low_rank_linears(model: nn.Module) -> int:
    """Turn every peft LoRA A / B `nn.Linear` in `model` with a side narrower than `NARROW` (its
    rank, in practice) into a `LowRankLinear`, in place.

    The modules keep their parameters, hooks and state-dict keys (only the class changes, to a
    subclass that overrides `forward`). Returns how many were changed.
    """
    changed = 0
    for module in model.modules():
        for name in ("lora_A", "lora_B"):
            linears = getattr(module, name, None)
            if not isinstance(linears, nn.ModuleDict):
                continue
            for linear in linears.values():
                narrow = min(linear.in_features, linear.out_features) < NARROW
                if type(linear) is nn.Linear and narrow:
                    linear.__class__ = LowRankLinear
                    changed += 1
    return changed
