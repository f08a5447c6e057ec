"""Counting parameters the way a reader means them: weights, not bytes of packed storage."""

import torch
from torch import nn


def logical_numel(param: nn.Parameter) -> int:
    """Number of weights of `param`, for packed 4-bit storage too.

    bitsandbytes' `Params4bit` packs two 4-bit values per byte of its storage dtype, so its `numel()`
    is a fraction of the weight count; its quant_state keeps the real [out, in] shape.
    """
    state = getattr(param, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else param.numel()


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked number of values."""
    trainable = total = 0
    for param in model.parameters():
        n = logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
