"""Optimizer parameter groups: a learning rate for the ViT and one for the aligner, as in ms-swift.

A randomly initialised or freshly attached video encoder (ViT → frame Q-Former → video Q-Former →
projection) trained at the LLM's learning rate tends to collapse: its output becomes the same for
every clip, the cheapest way to stop disturbing a language model that has not yet learned to read
it, after which the captions are the language prior whatever the video. On SynthVid `pretrain`
(tiny preset, 300 steps, AdamW) held-out caption loss is 0.73 with every module at 1e-3 (video
tokens differ between clips by 3% of their spread) and 0.46 with the encoder at 1e-4 (53%, colour
named right for 89% of clips). `train.vit_lr` and `train.aligner_lr` set those rates; both apply to
the encoder's own weights and to adapter weights placed there.

`train.gate_lr` gives the temporal gate networks (`lora_gate_in` / `lora_gate_out`, in whichever
tower they sit) a group of their own: a few hundred weights per layer whose gradient is zero until
LoRA B leaves zero and small after, so at the encoder's rate they barely move from their init.

DeepSpeed takes the groups as `model_parameters` dicts with their own "lr"; its cosine schedule
scales each group's rate by one ratio, and `scaled_schedule` turns the warm-up / decay schedules'
absolute rates into per-group lists.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from models.temporal_lora import GATE_LAYER_NAMES
from models.towers import ALIGNER, tower_of

# The towers (`models.towers`) each learning-rate group holds: the ViT, the aligner (both Q-Formers
# and the projection: what joins the ViT to the LLM) and the LLM.
TOWERS_OF_GROUP = {"vit": ("vision",), "aligner": ALIGNER, "llm": ("llm",)}
GROUP_OF_TOWER = {tower: group for group, towers in TOWERS_OF_GROUP.items() for tower in towers}
# Prefixes peft puts before the base model's parameter names.
_WRAPPER_PREFIXES = ("base_model.model.", "base_model.")


def group_of(param_name: str) -> str:
    """ "vit", "aligner" or "llm" for a parameter name of the model, peft-wrapped or not.

    Parameters outside the towers (the retrieval head, a prefix encoder) go with the LLM.
    """
    name = param_name
    for prefix in _WRAPPER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return GROUP_OF_TOWER.get(tower_of(name), "llm")


def is_gate_parameter(param_name: str) -> bool:
    """Whether a parameter belongs to a temporal gate network (`models.temporal_lora.GATE_LAYER_NAMES`)."""
    return any(f".{part}." in f".{param_name}." for part in GATE_LAYER_NAMES)


def learning_rate_groups(
    model: nn.Module,
    lr: float,
    vit_lr: float | None,
    aligner_lr: float | None,
    gate_lr: float | None = None,
) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters as DeepSpeed's `model_parameters`.

    Returns:
        With no rate set, the plain parameter list (one group at `lr`, as before). Otherwise one
        dict {"params", "lr", "name"} per non-empty group in the order llm, vit, aligner, gate; the
        gate group exists only with `gate_lr` (else gates go with their tower).
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if vit_lr is None and aligner_lr is None and gate_lr is None:
        return [p for _, p in trainable]
    rates = {
        "llm": lr,
        "vit": lr if vit_lr is None else vit_lr,
        "aligner": lr if aligner_lr is None else aligner_lr,
        "gate": gate_lr,
    }
    groups: dict[str, list[nn.Parameter]] = {"llm": [], "vit": [], "aligner": [], "gate": []}
    for name, p in trainable:
        groups["gate" if gate_lr is not None and is_gate_parameter(name) else group_of(name)].append(p)
    return [{"params": params, "lr": rates[name], "name": name} for name, params in groups.items() if params]


def scaled_schedule(ds_config: dict[str, Any], group_lrs: list[float], lr: float) -> dict[str, Any]:
    """`ds_config` with the scheduler's absolute rates given per group.

    DeepSpeed's WarmupLR and WarmupDecayLR set every group to `warmup_max_lr` (a number) unless it is
    a list with one value per group; WarmupCosineLR is relative to each group's own rate and is
    left as is, as are schedules whose rates are lists already.
    """
    scheduler = ds_config.get("scheduler")
    if scheduler is None or scheduler.get("type") not in ("WarmupLR", "WarmupDecayLR"):
        return ds_config
    params = dict(scheduler.get("params", {}))
    for key in ("warmup_min_lr", "warmup_max_lr"):
        value = params.get(key)
        if isinstance(value, int | float):
            params[key] = [value * group_lr / lr for group_lr in group_lrs]
    return {**ds_config, "scheduler": {**scheduler, "params": params}}
