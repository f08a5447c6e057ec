"""Prefix tuning (Li & Liang, 2021) on the LLM of a Video-LLaMA, through peft.

Every LLM layer attends to N learned key/value pairs in front of the sequence:

    attention(q, [P_k; K], [P_v; V]),   P_k, P_v [N, D] per layer (peft's prompt encoder),

so the trainable part is 2 * layers * N * D values (one embedding table in peft) and no base weight
changes: the base may be 16-bit or quantized (NF4 / int8), the prefix does not touch its linears.

Only the LLM is wrapped — `model.language_model` becomes a peft `PeftModelForCausalLM` — because
Video-LLaMA feeds its LLM `inputs_embeds` (video tokens scattered in at the placeholders) and peft's
prefix forward takes exactly that: it prepends the prefix's attention mask and hands the prefix in
as the KV cache. Saved in peft's format (the LLM's adapter_config.json + adapter_model.safetensors),
loadable with `PeftModel.from_pretrained(model.language_model, dir)` too.

Generation: peft's own `prepare_inputs_for_generation` assumes `input_ids` at the prefill step,
which transformers 5 leaves None when decoding from `inputs_embeds` (and transformers refuses
`inputs_embeds` unless that method names it). `PrefixTunedLM` replaces it with peft's steps — prefix
as the initial cache, its mask prepended, positions counted after it as in training — taking the
batch size from whichever input is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModelForCausalLM, PrefixTuningConfig
from peft.utils import load_peft_weights, set_peft_model_state_dict
from torch import nn

CONFIG_NAME = "adapter_config.json"
PEFT_TYPE = "PREFIX_TUNING"


class PrefixTunedLM(PeftModelForCausalLM):
    """peft's causal-LM wrapper whose generation also starts from `inputs_embeds`."""

    def prepare_inputs_for_generation(
        self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        inputs = self.base_model_prepare_inputs_for_generation(*args, inputs_embeds=inputs_embeds, **kwargs)
        first = inputs["input_ids"] if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
        batch_size, n = first.shape[0], self.active_peft_config.num_virtual_tokens
        cache = inputs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:
            # Prefill: the prefix's keys/values are the cache the prompt is appended to.
            inputs["past_key_values"] = self.get_prompt(batch_size=batch_size, max_cache_len=-1)
        if inputs.get("position_ids") is not None:
            # generate counts positions from the prompt's mask; training (peft's forward, positions
            # from the cache length) puts the prompt after the prefix: shift to match.
            inputs["position_ids"] = inputs["position_ids"] + n
        mask = inputs.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError(
                    f"prefix generation needs a 2D attention mask, got shape {tuple(mask.shape)}"
                )
            inputs["attention_mask"] = torch.cat([mask.new_ones(batch_size, n), mask], dim=1)
        return inputs


def add_prefix(model: nn.Module, num_virtual_tokens: int, projection: bool = False) -> PrefixTunedLM:
    """Freeze `model` and wrap its `language_model` with a trainable prefix; returns the wrapper."""
    if num_virtual_tokens < 1:
        raise ValueError(f"num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
    model.requires_grad_(False)
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, prefix_projection=projection
    )
    model.language_model = PrefixTunedLM(model.language_model, config)
    return model.language_model


def is_prefix_config(fields: dict[str, Any]) -> bool:
    return fields.get("peft_type") == PEFT_TYPE


def save_prefix(model: nn.Module, out_dir: str | Path) -> Path:
    """The LLM's prefix adapter in peft's format."""
    model.language_model.save_pretrained(str(out_dir))
    return Path(out_dir)


def load_prefix(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> nn.Module:
    """Wrap a fresh base's LLM with the saved prefix (peft's config and weight loaders)."""
    adapter_dir = Path(adapter_dir)
    fields = json.loads((adapter_dir / CONFIG_NAME).read_text())
    if not is_prefix_config(fields):
        raise ValueError(
            f"{adapter_dir / CONFIG_NAME} is not a prefix adapter (peft_type {fields.get('peft_type')!r})"
        )
    config = PrefixTuningConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = not is_trainable
    model.requires_grad_(False)
    model.language_model = PrefixTunedLM(model.language_model, config)
    # peft loads the prompt embeddings itself (they are not module parameters of the base model).
    set_peft_model_state_dict(model.language_model, load_peft_weights(str(adapter_dir), device="cpu"))
    model.language_model.prompt_encoder.requires_grad_(is_trainable)
    return model
