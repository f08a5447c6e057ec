"""Load a saved Video-LLaMA checkpoint, optionally quantized with bitsandbytes (QLoRA's NF4).

Both big towers are quantized — the ViT and the LLM linears become `bnb.nn.Linear4bit` (or
`Linear8bitLt`) — while the small trainable glue (frame and video Q-Formers, the video projection,
the retrieval head) and the LLM's `lm_head` stay in `compute_dtype`: they are a few percent of the
weights, are trained fully in Video-LLaMA, and `lm_head` feeds the loss directly.
"""

from pathlib import Path

import bitsandbytes as bnb
import torch
from torch import nn
from transformers import BitsAndBytesConfig

from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .towers import ALIGNER, prefixes_of

QUANTIZATIONS = ("nf4", "nf4-nodq", "int8", "none")

# Module-name patterns bitsandbytes must leave unquantized (transformers matches each as a prefix
# at a module boundary, as a regex, or as a suffix): the aligner's towers (models/towers.py), the
# retrieval head, and the LLM's output head — a list replaces transformers' automatic skips, so the
# head is named explicitly.
DEFAULT_SKIP_MODULES = [
    *(prefix.rstrip(".") for prefix in prefixes_of(ALIGNER) if prefix.endswith(".")),
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


def load_model(
    path: str | Path,
    *,
    quantization: str = "nf4",
    compute_dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    skip_modules: list[str] | None = None,
    retrieval_dim: int | None = None,
) -> VideoLlamaForConditionalGeneration:
    """Load `path` (a `save_pretrained` directory) onto `device`.

    Args:
        path: checkpoint directory with config.json + model.safetensors.
        quantization: "nf4" (NF4 + double quant, QLoRA), "nf4-nodq" (NF4 without double quant),
            "int8" (LLM.int8), or "none" (plain `compute_dtype` weights).
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
    config_overrides = {} if retrieval_dim is None else {"retrieval_dim": retrieval_dim}
    model = VideoLlamaForConditionalGeneration.from_pretrained(
        path,
        **config_overrides,
        quantization_config=quantization_config(quantization, compute_dtype, skip_modules),
        dtype=compute_dtype,
        device_map={"": device},
    )
    keep_4bit_training_layout(model)
    return model


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
