"""Analytic training-state memory of an adapter method at a preset: the tensors a step must hold.

    python -m models.train_state --preset 1b --method qlora --r 16 [--json]

A 0.7M-parameter SynthVid model's process memory says nothing about a method (the interpreter and
the libraries dominate it), so the experiments compare methods by what they would hold at a real
size instead, counted from the tensors themselves:

- frozen weights, by format: the preset built on the meta device in the method's weight format
  (`models.footprint.meta_model`), the method applied to it by `models.adapters.apply_adapter` as in
  a run, every frozen quantized weight counted at the bytes bitsandbytes really stores for its shape
  (`models.footprint.bytes_once_quantized`), every other frozen weight in bf16;
- per trainable parameter, mixed-precision Adam's 16 bytes (Rajbhandari et al., 2020, ZeRO §3.1):
  the bf16 weight (2) and gradient (2), the fp32 master weight (4) and the two Adam moments (8).

Activations are left out: they depend on the batch, frames and checkpointing, not on the method's
tensors, and are what `benchmarks/train_memory.py` measures. ZeRO-Offload keeps the 12 optimizer
bytes in host memory, which moves them but does not remove them, so they are counted.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .adapters import apply_adapter
from .footprint import FORMATS, LLAMA_VOCAB_SIZE, format_name, meta_model, preset_config, stored_bytes
from .methods import adapter_method
from .parameters import logical_numel
from .weight_formats import Quantization, canonical, tower_formats

# Bytes per trainable parameter: bf16 weight and gradient; fp32 master weight, Adam's m and v.
TRAINABLE_BYTES = {"weights": 2, "gradients": 2, "optimizer": 12}
# models.loading quantization → models.footprint format label.
_FORMAT_OF_QUANTIZATION = {quantization: label for label, quantization in FORMATS.items()}


def model_train_state(model: nn.Module, cache: dict[tuple, int] | None = None) -> dict[str, int]:
    """Bytes of the tensors training ``model`` holds (see the module docstring): frozen weights as
    stored (`models.footprint.stored_bytes`: a meta model's as a load would store them), 16 bytes per
    trainable parameter.

    Returns:
        {"frozen_params", "trainable_params", "frozen_weight_bytes", "trainable_weight_bytes",
        "gradient_bytes", "optimizer_bytes", "total_bytes"}.
    """
    cache = {} if cache is None else cache
    frozen_params = trainable_params = frozen_bytes = 0
    for param in model.parameters():
        n = logical_numel(param)
        if param.requires_grad:
            trainable_params += n
        else:
            frozen_params += n
            frozen_bytes += stored_bytes(param, cache)
    state = {
        "frozen_params": frozen_params,
        "trainable_params": trainable_params,
        "frozen_weight_bytes": frozen_bytes,
        "trainable_weight_bytes": trainable_params * TRAINABLE_BYTES["weights"],
        "gradient_bytes": trainable_params * TRAINABLE_BYTES["gradients"],
        "optimizer_bytes": trainable_params * TRAINABLE_BYTES["optimizer"],
    }
    state["total_bytes"] = sum(v for k, v in state.items() if k.endswith("_bytes"))
    return state


def train_state(
    preset: str,
    method: str,
    options: Mapping[str, Any] | None = None,
    vocab_size: int = LLAMA_VOCAB_SIZE,
    cache: dict[tuple, int] | None = None,
    quantization: Quantization = "auto",
) -> dict[str, Any]:
    """`model_train_state` of ``method`` with ``options`` (`apply_adapter` keywords) at ``preset``,
    its frozen towers in ``quantization`` (`model.quantization`: one format or one per tower; towers
    it leaves out, and "auto", take the method's weight format).

    Budget allocators need calibration batches, which a meta model cannot run: pass the ranks they
    chose (``ranks``, static allocation) instead.
    """
    options = dict(options or {})
    if options.get("allocation", "static") != "static":
        raise ValueError(
            f"train_state needs static ranks; allocation {options['allocation']!r} runs on data: pass "
            "the ranks it allocated (the run's adapter/allocation.json) as ranks"
        )
    spec = adapter_method(method)
    resolved = canonical(tower_formats(quantization, default=spec.weight_format))
    fmt = _FORMAT_OF_QUANTIZATION[resolved] if isinstance(resolved, str) else resolved
    # Building and adapting the model draws initial values: the caller's random state (a training
    # run's, restored from a checkpoint) must be the same afterwards.
    with torch.random.fork_rng(devices=[]):
        model = apply_adapter(meta_model(preset_config(preset, vocab_size), fmt), method, **options)
        state = model_train_state(model, cache)
    return {"preset": preset, "method": method, "weight_format": format_name(fmt), **state}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="1b", help="a key of models.presets.PRESETS")
    parser.add_argument("--method", required=True, help="an adapter.method")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    state = train_state(args.preset, args.method, {"r": args.r})
    if args.json:
        print(json.dumps(state, indent=2))
        return
    for key, value in state.items():
        shown = f"{value / 2**30:.3f} GiB" if key.endswith("_bytes") else value
        print(f"{key:<24}{shown}")


if __name__ == "__main__":
    main()
