"""Modules trained in full next to an adapter, and their file for the methods that are not peft's.

The LoRA family hands them to peft (`modules_to_save`), which trains a copy and writes it into
adapter_model.safetensors; a plain `requires_grad=True` would train them but leave them out of the
adapter file. prefix, bottleneck adapters and the frozen probe write them into `MODULES_FILE`
themselves, by full parameter name.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

# The projection tower (`models.towers`): Video-LLaMA trains its video branch fully rather than
# through low-rank updates, and the projection is the part of it that a fine-tuning run keeps training.
DEFAULT_MODULES_TO_SAVE = ["video_projection"]
MODULES_FILE = "modules_to_save.safetensors"


def with_retrieval_head(model: nn.Module, names: list[str]) -> list[str]:
    """`names` plus the model's retrieval head, if it has one: it trains and is saved under every method."""
    if getattr(model, "retrieval_head", None) is not None and "retrieval_head" not in names:
        return [*names, "retrieval_head"]
    return list(names)


def save_modules(model: nn.Module, names: list[str], out_dir: Path) -> None:
    """Write the state of the modules `names` into `out_dir / MODULES_FILE` (nothing when empty)."""
    modules = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name in names
        for key, value in model.get_submodule(name).state_dict().items()
    }
    if modules:
        save_file(modules, out_dir / MODULES_FILE)


def load_modules(model: nn.Module, adapter_dir: Path, is_trainable: bool) -> list[str]:
    """Load `adapter_dir / MODULES_FILE` (if any) into `model`; returns the names of the modules it held."""
    path = adapter_dir / MODULES_FILE
    if not path.is_file():
        return []
    saved = load_file(path)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise KeyError(f"{path} holds tensors this model does not have: {unknown[:5]}")
    model.load_state_dict(saved, strict=False)
    names = sorted({key.rsplit(".", 1)[0] for key in saved})
    for name in names:
        model.get_submodule(name).requires_grad_(is_trainable)
    return names
