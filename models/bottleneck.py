"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020) after attention and MLP blocks.

A block's output h [..., D] (the attention output projection, or the MLP's last linear, before the
residual add) passes through a small residual bottleneck:

    h' = h + U act(D h),   D: Linear(D, m) ~ Kaiming-uniform,  U: Linear(m, D) = 0 (weight and bias)

so training starts exactly at the base model and only 2 m D + m + D weights per block learn.
Houlsby places one after the attention and one after the MLP of every layer: that is the default
here. The wrapped linear may be a plain `nn.Linear` or a bitsandbytes 4-/8-bit one: the adapter only
reads its output, so it works on a QLoRA base unchanged.

Why not a library: AdapterHub's `adapters` (1.3) pins transformers 4.57 and patches model classes;
peft has no bottleneck tuner and its registry (`register_peft_method`) only takes its own
`PeftType` names. The saved layout follows peft's: `adapter_config.json` (with
`"peft_type": "BOTTLENECK"`) + `adapter_model.safetensors` holding the adapter weights under their
full module names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .towers import TOWERS

PEFT_TYPE = "BOTTLENECK"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}

# The last linear of each attention / MLP block, per tower that has them (`models.towers`: BLIP-2
# `projection`, CLIP/SigLIP `out_proj`, `mlp.fc2` in the vision tower; Llama/Qwen2 `o_proj`,
# `down_proj`, OPT `out_proj`, `fc2` in the LLM).
BLOCK_OUTPUTS: dict[str, str] = {t.name: t.block_outputs for t in TOWERS if t.block_outputs is not None}


@dataclass
class BottleneckConfig:
    """What `add_bottleneck_adapters` builds; saved as adapter_config.json.

    Attributes:
        dim: bottleneck width m.
        activation: one of `ACTIVATIONS`.
        groups: which towers get adapters, keys of `BLOCK_OUTPUTS` (Houlsby/Pfeiffer adapt the LLM).
        target_modules: a regex (full match on module names) replacing the groups' patterns.
    """

    dim: int = 16
    activation: str = "gelu"
    groups: list[str] = field(default_factory=lambda: ["llm"])
    target_modules: str | None = None

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"bottleneck dim must be >= 1, got {self.dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"bottleneck activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        unknown = [g for g in self.groups if g not in BLOCK_OUTPUTS]
        if unknown or not self.groups:
            raise ValueError(
                f"bottleneck groups must be a non-empty subset of {sorted(BLOCK_OUTPUTS)}, got {self.groups}"
            )

    @property
    def pattern(self) -> str:
        if self.target_modules is not None:
            return self.target_modules
        return "|".join(f"(?:{BLOCK_OUTPUTS[g]})" for g in self.groups)


class BottleneckAdapter(nn.Module):
    """h [..., D] -> h + up(act(down(h))), computed in the adapter's dtype."""

    def __init__(self, features: int, dim: int, activation: str, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.down = nn.Linear(features, dim, dtype=dtype, device=device)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(dim, features, dtype=dtype, device=device)
        # Zero up-projection: the adapter starts as the identity, so step 0 is the base model.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.act(self.down(h.to(self.down.weight.dtype))))
        return h + delta.to(h.dtype)


class BottleneckLayer(nn.Module):
    """A block's output linear followed by its adapter (the linear stays as `base_layer`, frozen)."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base_layer(x, *args, **kwargs))


def add_bottleneck_adapters(model: nn.Module, config: BottleneckConfig) -> list[str]:
    """Freeze `model` and wrap every block output that `config` targets with a `BottleneckLayer`.

    The adapters are created in the dtype of the input embeddings (never quantized: the compute
    dtype) on the wrapped layer's device. Returns the wrapped module names; none found is an error.
    """
    model.requires_grad_(False)
    dtype = model.get_input_embeddings().weight.dtype
    pattern = re.compile(config.pattern)
    targets = [
        name
        for name, module in model.named_modules()
        if pattern.fullmatch(name)
        and hasattr(module, "out_features")
        and not isinstance(module, BottleneckLayer)
    ]
    if not targets:
        raise ValueError(f"no module matches the bottleneck targets {config.pattern!r}")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        device = next(base.parameters()).device
        adapter = BottleneckAdapter(base.out_features, config.dim, config.activation, dtype, device)
        setattr(parent, child, BottleneckLayer(base, adapter))
    model.bottleneck_config = config
    return targets


def bottleneck_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights by full parameter name (`...o_proj.adapter.down.weight`, ...)."""
    return {
        f"{name}.adapter.{key}": value
        for name, module in model.named_modules()
        if isinstance(module, BottleneckLayer)
        for key, value in module.adapter.state_dict().items()
    }


def save_bottleneck(model: nn.Module, out_dir: str | Path) -> Path:
    """Write adapter_config.json + adapter_model.safetensors for a model with bottleneck adapters."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = {"peft_type": PEFT_TYPE, **asdict(model.bottleneck_config)}
    (out_dir / CONFIG_NAME).write_text(json.dumps(fields, indent=2))
    tensors = {k: v.detach().contiguous().cpu() for k, v in bottleneck_state_dict(model).items()}
    save_file(tensors, out_dir / WEIGHTS_NAME)
    return out_dir


def is_bottleneck_config(fields: dict[str, Any]) -> bool:
    return fields.get("peft_type") == PEFT_TYPE


def load_bottleneck(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> nn.Module:
    """Add the adapters described by `adapter_dir` to a fresh base and load their weights exactly."""
    adapter_dir = Path(adapter_dir)
    fields = json.loads((adapter_dir / CONFIG_NAME).read_text())
    if not is_bottleneck_config(fields):
        raise ValueError(
            f"{adapter_dir / CONFIG_NAME} is not a bottleneck adapter (peft_type {fields.get('peft_type')!r})"
        )
    fields.pop("peft_type")
    add_bottleneck_adapters(model, BottleneckConfig(**fields))
    saved = load_file(adapter_dir / WEIGHTS_NAME)
    _check_same_keys(saved, bottleneck_state_dict(model), adapter_dir / WEIGHTS_NAME)
    model.load_state_dict(saved, strict=False)
    for param in bottleneck_parameters(model):
        param.requires_grad_(is_trainable)
    return model


def bottleneck_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    for module in model.modules():
        if isinstance(module, BottleneckLayer):
            yield from module.adapter.parameters()


def _check_same_keys(saved: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{where} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
