"""Which parameters train: LoRA / QLoRA through peft, full fine-tuning, or a frozen baseline.

LoRA (Hu et al., 2021) replaces a frozen linear W0 [out, in] by

    h = W0 x + (alpha / r) * B A dropout(x),   A [r, in] ~ Kaiming-uniform,  B [out, r] = 0

so training starts exactly at the base model and only A, B (r * (in + out) per layer) learn.
QLoRA (Dettmers et al., 2023) is the same with W0 stored in NF4 (see `models.loading`).
"""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

METHODS = ("lora", "qlora", "full", "frozen")

# Default LoRA targets, as one peft regex (full match on module names): the attention and MLP linears
# of the ViT (Blip2EncoderLayer: self_attn.qkv / projection, mlp.fc1 / fc2) and of the LLM (Llama-style
# q/k/v/o_proj, gate/up/down_proj). The Q-Formers are not targeted: Video-LLaMA trains its video branch
# fully rather than through low-rank updates.
DEFAULT_TARGET_MODULES = (
    r"vision_model\.encoder\.layers\.\d+\.(self_attn\.(qkv|projection)|mlp\.(fc1|fc2))"
    r"|language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
# Trained in full next to the adapters and written into the adapter file by peft (`modules_to_save`),
# so `PeftModel.from_pretrained` restores it; a plain `requires_grad=True` would train it but leave
# it out of adapter_model.safetensors.
DEFAULT_MODULES_TO_SAVE = ["video_projection"]


def _is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def apply_adapter(
    model: nn.Module,
    method: str,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    gradient_checkpointing: bool = False,
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """Set up `model` for training with `method`.

    Args:
        model: a `VideoLlamaForConditionalGeneration` (16-bit/fp32 for lora/full/frozen, loaded in
            4- or 8-bit by `models.loading.load_model` for qlora).
        method: "lora" (LoRA on a 16-bit base), "qlora" (LoRA on a quantized base), "full" (every
            parameter trains; not possible on quantized weights), "frozen" (only `video_projection`
            trains: with no trainable parameter at all, backward and the optimizer would fail, and a
            linear probe on the video tokens is the meaningful "no fine-tuning" baseline).
        r, alpha, dropout: LoRA rank, scale numerator (scale = alpha / r) and input dropout.
        target_modules: peft targets (list of name suffixes or one regex); default
            `DEFAULT_TARGET_MODULES` (ViT + LLM attention and MLP linears).
        gradient_checkpointing: recompute activations of every ViT / Q-Former / LLM layer in backward.
            Non-reentrant checkpointing, so frozen inputs need no `enable_input_require_grads` hook.
        modules_to_save: modules trained in full and saved with the adapter; default `["video_projection"]`.
    Returns:
        a peft `PeftModel` for lora/qlora, the model itself for full/frozen.

    Why not `peft.prepare_model_for_kbit_training` for qlora: it casts every non-4-bit parameter
    (Q-Formers, embeddings, norms, lm_head) to fp32, which silently runs the whole non-quantized
    path in fp32 (2x activation memory, dtype mix under DeepSpeed bf16), and turns on reentrant
    checkpointing through the deprecated `gradient_checkpointing_enable`. What it does that matters —
    freezing the base and optional checkpointing — is done here directly.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    quantized = _is_quantized(model)
    if method == "qlora" and not quantized:
        raise ValueError(
            "qlora needs a model loaded in 4/8 bit (models.loading.load_model(quantization='nf4'))"
        )
    if method in ("lora", "full") and quantized:
        raise ValueError(f"{method} needs a 16-bit model; this one is quantized (use method='qlora')")

    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    if method == "full":
        model.requires_grad_(True)
        return model
    modules_to_save = list(DEFAULT_MODULES_TO_SAVE if modules_to_save is None else modules_to_save)
    if method == "frozen":
        model.requires_grad_(False)
        for name in modules_to_save:
            model.get_submodule(name).requires_grad_(True)
        return model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=DEFAULT_TARGET_MODULES if target_modules is None else target_modules,
        modules_to_save=modules_to_save,
        bias="none",
    )
    # get_peft_model freezes every base parameter, then un-freezes LoRA A/B and the modules_to_save copy.
    return get_peft_model(model, config)


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked number of values."""
    trainable = total = 0
    for param in model.parameters():
        # Params4bit packs two 4-bit values per byte of its storage dtype; quant_state knows the real shape.
        quant_state = getattr(param, "quant_state", None)
        n = int(torch.Size(quant_state.shape).numel()) if quant_state is not None else param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def load_adapter(model: nn.Module, adapter_dir: str, is_trainable: bool = False) -> PeftModel:
    """Wrap a freshly loaded base model with a saved adapter (`PeftModel.from_pretrained`)."""
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
