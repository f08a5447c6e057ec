"""Saving what a method trained and putting it back on a fresh base: `save_adapter` / `load_adapter`.

Five saved formats, one per way of training (`AdapterMethod.saved_as`):

    peft         the LoRA family and AdaLoRA: peft's `save_pretrained` (adapter_config.json +
                 adapter_model.safetensors, modules_to_save included); temporal adapters are read back
                 as `TemporalLoraConfig` first, which registers the gated layer types with peft
    prefix       the LLM's peft prefix adapter (`models.prefix`)
    bottleneck   `models.bottleneck`'s files, in peft's layout
    frozen       an adapter_config.json with peft_type "FROZEN"
    whole_model  full fine-tuning: the whole model (`save_pretrained`: config.json + model.safetensors)

prefix, bottleneck and frozen add the modules they train outside the adapter (video_projection, ...)
as `models.saved_modules.MODULES_FILE`. A folder is recognised by its files, so loading needs no
method name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from torch import nn

from .bottleneck import is_bottleneck_config, load_bottleneck, save_bottleneck
from .low_rank_matmul import use_low_rank_linears
from .method_spec import BOTTLENECK_FORMAT, FROZEN_FORMAT, PEFT_FORMAT, PREFIX_FORMAT, WHOLE_MODEL_FORMAT
from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .prefix import is_prefix_config, load_prefix, save_prefix
from .saved_modules import load_modules, save_modules
from .temporal_lora import TemporalLoraConfig, install_frame_gates, is_temporal_config

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
# adapter_config.json "peft_type" of the methods that are not peft's: a frozen run's trained modules.
FROZEN_TYPE = "FROZEN"


@dataclass(frozen=True)
class SavedFormat:
    """How one kind of adapter folder is recognised, written and read back.

    holds(fields): whether adapter_config.json `fields` (None: the folder has none) are this format's.
    save(model, out_dir) / load(model, adapter_dir, is_trainable) → the model with the adapter.
    """

    holds: Callable[[dict[str, Any] | None], bool]
    save: Callable[[nn.Module, Path], None]
    load: Callable[[nn.Module, Path, bool], nn.Module]


def _save_pretrained(model: nn.Module, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir))


def _load_peft(model: nn.Module, adapter_dir: Path, is_trainable: bool) -> nn.Module:
    if not is_temporal_config(json.loads((adapter_dir / ADAPTER_CONFIG).read_text())):
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
    else:
        config = TemporalLoraConfig.from_pretrained(adapter_dir)
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable, config=config)
        install_frame_gates(peft_model)
    use_low_rank_linears(peft_model)  # the products build_lora trained with
    return peft_model


def _load_whole_model(model: nn.Module, adapter_dir: Path, is_trainable: bool) -> nn.Module:
    """A full fine-tuning save is a whole model: loaded in place of `model`, on its device and dtype."""
    full = VideoLlamaForConditionalGeneration.from_pretrained(
        adapter_dir, dtype=model.dtype, device_map={"": model.device}
    )
    full.requires_grad_(is_trainable)
    full.adapter_format = WHOLE_MODEL_FORMAT
    return full


def _with_modules(
    write: Callable[[nn.Module, Path], Any],
) -> Callable[[nn.Module, Path], None]:
    """A saver that writes the adapter with `write`, then the modules trained outside it."""

    def save(model: nn.Module, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write(model, out_dir)
        save_modules(model, model.adapter_modules_to_save, out_dir)

    return save


def _and_modules(
    read: Callable[[nn.Module, Path, bool], nn.Module], saved_as: str
) -> Callable[[nn.Module, Path, bool], nn.Module]:
    """A loader that reads the adapter with `read`, then the modules trained outside it."""

    def load(model: nn.Module, adapter_dir: Path, is_trainable: bool) -> nn.Module:
        model = read(model, adapter_dir, is_trainable)
        model.adapter_format = saved_as
        model.adapter_modules_to_save = load_modules(model, adapter_dir, is_trainable)
        return model

    return load


def _write_frozen(model: nn.Module, out_dir: Path) -> None:
    fields = {"peft_type": FROZEN_TYPE, "modules_to_save": model.adapter_modules_to_save}
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(fields, indent=2))


def _read_frozen(model: nn.Module, _adapter_dir: Path, _is_trainable: bool) -> nn.Module:
    return model.requires_grad_(False)


# In the order a folder is tried against them: peft last, it takes any adapter_config.json.
FORMATS: dict[str, SavedFormat] = {
    WHOLE_MODEL_FORMAT: SavedFormat(lambda fields: fields is None, _save_pretrained, _load_whole_model),
    PREFIX_FORMAT: SavedFormat(
        lambda fields: fields is not None and is_prefix_config(fields),
        _with_modules(save_prefix),
        _and_modules(load_prefix, PREFIX_FORMAT),
    ),
    BOTTLENECK_FORMAT: SavedFormat(
        lambda fields: fields is not None and is_bottleneck_config(fields),
        _with_modules(save_bottleneck),
        _and_modules(load_bottleneck, BOTTLENECK_FORMAT),
    ),
    FROZEN_FORMAT: SavedFormat(
        lambda fields: fields is not None and fields.get("peft_type") == FROZEN_TYPE,
        _with_modules(_write_frozen),
        _and_modules(_read_frozen, FROZEN_FORMAT),
    ),
    PEFT_FORMAT: SavedFormat(lambda fields: fields is not None, _save_pretrained, _load_peft),
}


def save_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """Write what `model` trains so that `load_adapter` on a fresh base restores it bit for bit."""
    out_dir = Path(out_dir)
    if isinstance(model, PeftModel):  # built or loaded, a peft model saves itself
        FORMATS[PEFT_FORMAT].save(model, out_dir)
        return out_dir
    saved_as = getattr(model, "adapter_format", None)
    if saved_as is None:
        raise ValueError("save_adapter needs a model set up by apply_adapter or load_adapter")
    FORMATS[saved_as].save(model, out_dir)
    return out_dir


def load_adapter(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> nn.Module:
    """Put a saved adapter (`save_adapter`'s folder) on a freshly loaded base model.

    Returns a `PeftModel` for the LoRA family, the model otherwise (a new one for a whole-model save).
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    fields = json.loads(config_path.read_text()) if config_path.is_file() else None
    if fields is None and not (adapter_dir / MODEL_CONFIG).is_file():
        raise FileNotFoundError(f"{adapter_dir} holds neither an adapter (adapter_config.json) nor a model")
    saved_as = next(name for name, fmt in FORMATS.items() if fmt.holds(fields))
    return FORMATS[saved_as].load(model, adapter_dir, is_trainable)
