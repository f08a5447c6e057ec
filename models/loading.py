"""Load a saved Video-LLaMA checkpoint, optionally quantized with bitsandbytes (QLoRA's NF4).

Both big towers are quantized — the ViT and the LLM linears become `bnb.nn.Linear4bit` (or
`Linear8bitLt`) — while the small glue (frame and video Q-Formers, the video projection, the
retrieval head) and the LLM's `lm_head` stay in `compute_dtype`: they are a few percent of the
weights, are trained fully in Video-LLaMA, and `lm_head` feeds the loss directly. The Q-Formers (the
"fusion" part) can be quantized too when a run names them, which frozen under a PEFT method they can.

Each part can hold its own format (`models.weight_formats`: {vision: int8, llm: nf4}, {vision: none,
llm: nf4}, {fusion: nf4}). One `from_pretrained` carries one `BitsAndBytesConfig`, so the load
quantizes the LLM in its format (the biggest tower: its 16-bit weights are never all in memory)
and leaves the parts of another format in `compute_dtype`; a part of a second quantized format is
then quantized in place (`quantize_tower`) by the same transformers and bitsandbytes calls a load
makes, so it holds exactly what a load in that format holds.
"""

from collections.abc import Mapping
from pathlib import Path

import bitsandbytes as bnb
import torch
from torch import nn
from transformers import BitsAndBytesConfig
from transformers.integrations.bitsandbytes import dequantize_and_replace, replace_with_bnb_linear

from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .towers import QUANTIZABLE, modules_of, part_modules, part_of
from .weight_formats import FULL_PRECISION, QUANTIZATIONS, Quantization, tower_formats

# Module-name patterns bitsandbytes must leave unquantized (transformers matches each as a prefix
# at a module boundary, as a regex, or as a suffix): the projection (models/towers.py), the
# retrieval head, and the LLM's output head — a list replaces transformers' automatic skips, so the
# head is named explicitly. A part held in another format than a load's is added to it
# (`skip_other_formats`), the fusion layers' default "none" included.
DEFAULT_SKIP_MODULES = [
    *modules_of(["projection"]),
    "retrieval_head",
    "language_model.lm_head",
]


def quantization_config(
    quantization: str, compute_dtype: torch.dtype, skip_modules: list[str] | None = None
) -> BitsAndBytesConfig | None:
    """The `BitsAndBytesConfig` for one of `QUANTIZATIONS` (None for "none")."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    skip = list(DEFAULT_SKIP_MODULES if skip_modules is None else skip_modules)
    if quantization == "none":
        return None
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        # Double quantization also quantizes the per-block absmax scales (~0.4 bit/param saved).
        bnb_4bit_use_double_quant=quantization == "nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        # Packed 4-bit weights stored in compute_dtype so ZeRO-3/FSDP can flatten them with the
        # rest of the (compute_dtype) parameters.
        bnb_4bit_quant_storage=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def load_format(formats: Mapping[str, str]) -> str:
    """The format `from_pretrained` quantizes in, for towers that hold `formats` ({tower: format}):
    the LLM's when it is quantized, else the first quantized tower's, else "none"."""
    order = sorted(formats, key=lambda name: name != "llm")
    return next((formats[name] for name in order if formats[name] != FULL_PRECISION), FULL_PRECISION)


def load_model(
    path: str | Path,
    *,
    quantization: Quantization = "nf4",
    compute_dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    skip_modules: list[str] | None = None,
    retrieval_dim: int | None = None,
) -> VideoLlamaForConditionalGeneration:
    """Load `path` (a `save_pretrained` directory) onto `device`.

    Args:
        path: checkpoint directory with config.json + model.safetensors.
        quantization: "nf4" (NF4 + double quant, QLoRA), "nf4-nodq" (NF4 without double quant),
            "int8" (LLM.int8), or "none" (plain `compute_dtype` weights); or a format per part,
            {"vision": ..., "fusion": ..., "llm": ...} (`models.weight_formats`; vision and llm must
            be named, fusion is "none" unless named).
        compute_dtype: dtype of the matmuls and of every non-quantized weight.
        device: where the whole model goes (a single-device map; bitsandbytes quantizes on the way).
        skip_modules: module-name patterns left unquantized; default `DEFAULT_SKIP_MODULES`.
        retrieval_dim: give the model a retrieval head of this size (`VideoLlamaConfig.retrieval_dim`),
            initialised fresh where the checkpoint holds none; None: as the checkpoint's config says.
    Returns:
        The model in eval mode (as `from_pretrained` leaves it); call `.train()` before training.
        Its 4-bit layers never switch to bitsandbytes' packed CPU-inference layout
        (`keep_4bit_training_layout`).
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model checkpoint (config.json) at {path}")
    device = torch.device(device)
    formats = tower_formats(quantization)
    on_load = load_format(formats)
    skip = list(DEFAULT_SKIP_MODULES if skip_modules is None else skip_modules)
    # Parts of another format than the load's are loaded in compute_dtype (and quantized below).
    skip += skip_other_formats(formats, on_load)
    config_overrides = {} if retrieval_dim is None else {"retrieval_dim": retrieval_dim}
    model = VideoLlamaForConditionalGeneration.from_pretrained(
        path,
        **config_overrides,
        quantization_config=quantization_config(on_load, compute_dtype, skip),
        dtype=compute_dtype,
        device_map={"": device},
    )
    for name, fmt in formats.items():
        if fmt not in (FULL_PRECISION, on_load):
            quantize_tower(model, name, fmt, compute_dtype, skip)
    keep_4bit_training_layout(model)
    return model


def skip_other_formats(formats: Mapping[str, str], quantization: str) -> list[str]:
    """Module names of the parts of `formats` ({part: format}) not held in `quantization`: what a
    quantization pass in that format must leave alone."""
    return part_modules(part for part, fmt in formats.items() if fmt != quantization)


def quantize_tower(
    model: nn.Module, name: str, quantization: str, compute_dtype: torch.dtype, skip_modules: list[str]
) -> int:
    """Quantize the linears of part `name` (a key of `QUANTIZABLE`) of a loaded model in place, as
    a load in `quantization` would; returns how many it replaced.

    transformers' `replace_with_bnb_linear` swaps every `nn.Linear` of the part not in
    `skip_modules` for the bitsandbytes layer of the `BitsAndBytesConfig` a load would use (on meta),
    then each gets its old weight as the bitsandbytes parameter a load builds (`Params4bit` /
    `Int8Params`), which quantizes it on the model's device. The model's `is_loaded_in_4bit/8bit`
    flags are set as a load sets them, so peft wraps these layers with its bitsandbytes LoRA layers.
    """
    if name not in QUANTIZABLE:
        raise ValueError(f"only {tuple(QUANTIZABLE)} are quantized, got {name!r}")
    config = quantization_config(quantization, compute_dtype)
    if config is None:
        raise ValueError(f"quantize_tower needs a 4/8-bit format, got {quantization!r}")
    own = set(part_modules([name]))
    others = part_modules(other for other in QUANTIZABLE if other != name)
    keep = [m for m in skip_modules if m not in own] + others
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    replace_with_bnb_linear(model, modules_to_not_convert=keep, quantization_config=config)
    replaced = 0
    for module_name, old in linears.items():
        new = model.get_submodule(module_name)
        if new is old:
            continue
        kwargs = dict(new.weight.__dict__)
        kwargs.pop("SCB", None)
        param_cls = bnb.nn.Int8Params if config.load_in_8bit else bnb.nn.Params4bit
        # To the CPU first, as transformers' own int8 quantization does: Int8Params quantizes on a
        # move away from the CPU, or within it.
        new.weight = param_cls(old.weight.data.to("cpu"), requires_grad=False, **kwargs).to(old.weight.device)
        new.bias = old.bias
        replaced += 1
    if config.load_in_8bit:
        model.is_loaded_in_8bit = True
    else:
        model.is_loaded_in_4bit = True
    return replaced


def dequantize_model(model: nn.Module, quantization: Quantization) -> nn.Module:
    """`model`, loaded by `load_model` in `quantization`, with every bitsandbytes linear turned back
    into an `nn.Linear` of the dequantized weights in the load's dtype (to merge adapters into).

    The load's own format goes through transformers' `model.dequantize()`; a tower quantized after
    the load (`quantize_tower`) through the same transformers call with its format's config. The
    "loaded in 4/8 bit" flags are cleared, so peft then sees a plain model.
    """
    formats = tower_formats(quantization)
    on_load = load_format(formats)
    if on_load == FULL_PRECISION:
        return model
    dtype = model.config.dtype
    model = model.dequantize()
    for fmt in sorted(set(formats.values()) - {FULL_PRECISION, on_load}):
        model = dequantize_and_replace(
            model, quantization_config=quantization_config(fmt, dtype), dtype=dtype
        )
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False
    return model


def model_formats(model: nn.Module) -> dict[str, str]:
    """The format each part of `QUANTIZABLE` of a loaded (or `models.footprint.meta_model`) model
    holds, read off its layers: "int8", "nf4" / "nf4-nodq" (double quantization or not), or "none"."""
    formats = dict.fromkeys(QUANTIZABLE, FULL_PRECISION)
    for module_name, module in model.named_modules():
        name = part_of(module_name)
        if name not in formats:
            continue
        if isinstance(module, bnb.nn.Linear8bitLt):
            formats[name] = "int8"
        elif isinstance(module, bnb.nn.Linear4bit):
            formats[name] = "nf4" if module.weight.compress_statistics else "nf4-nodq"
    return formats


def keep_4bit_training_layout(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking `model`'s 4-bit weights for CPU inference; returns how many
    `Linear4bit` layers it set.

    On a CPU with AVX512-BF16, bitsandbytes 0.50's `Linear4bit.forward` in eval mode without grad
    converts the weight in place to a packed inference layout (`quant_state.packing_format_for_cpu`)
    and never converts it back. A model evaluated (or calibrated) and then trained fails in the next
    training forward ("a view of a leaf Variable that requires grad is being used in an in-place
    operation"), and the packed kernel computes in bf16 (logits ~0.05 off the dequantized reference
    in fp32). The layer decides from its own `support_avx512bf16_for_cpu`, set in `__init__` from the
    CPU: turning it off keeps the path every other CPU takes (dequantize, then matmul in the compute
    dtype) for training and evaluation alike, so a run's numbers do not depend on the CPU it ran on.
    """
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
