"""The map of Video-LLaMA's towers: which modules and parameters belong to which part of the model.

A clip [B, K, 3, H, W] walks through five towers, named as the configs and the README name them:

    vision          ViT, one frame per row [B*K, T, D_v]               (BLIP-2's, 4-bit in QLoRA)
    frame_qformer   frame Q-Former + its queries, one frame per row    (BLIP-2's)
    video_qformer   video Q-Former + its queries + frame positions     (Video-LLaMA's, one video per row)
    projection      video_projection, Q-Former width → LLM width       (Video-LLaMA's)
    llm             the causal LM                                      (4-bit in QLoRA)

and named groups of towers: "fusion" (the two Q-Formers, which fuse patches into frame tokens and
frame tokens into video tokens), "aligner" (fusion + projection: everything between the ViT and the
LLM, ms-swift's name, `train.aligner_lr`), the adapter placements (`adapter.placement`) and the
towers that come from a BLIP-2 checkpoint versus the video branch Video-LLaMA adds.

Each tower is given twice, for the two ways code looks at a model:
- parameter-name prefixes (of the unwrapped model: `vision_model.`, `query_tokens`, ...) for whole
  parameter sets: memory footprints, learning-rate groups, checkpoint assembly;
- regexes over module names (full match, as peft's `target_modules`) for the linears adapters
  target: LoRA targets and per-tower ranks, the block outputs of bottleneck adapters, the frame-rowed
  layers temporal LoRA gates.
Anything outside the towers (the retrieval head, a prefix encoder peft adds) belongs to none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tower:
    """One tower of the model.

    Attributes:
        name: what configs call it (`adapter.ranks` keys, `adapter.group_patterns` keys).
        prefixes: parameter-name prefixes in the unwrapped model (`str.startswith` after a "." is
            appended to the name, so a prefix without a dot also names a parameter itself).
        linears: regex (full match on module names) of the linears adapters target: attention and MLP.
        block_outputs: regex of the last linear of each attention / MLP block (where bottleneck adapters
            sit), None for a tower without such blocks adapted that way.
        layer: regex of one layer's module-name prefix, ending in its index (`LAYER_INDEX`); None when
            the tower is a single module.
        frame_rows: its layers see one frame per row [B*K, ...], so temporal LoRA can gate them per frame.
    """

    name: str
    prefixes: tuple[str, ...]
    linears: str
    block_outputs: str | None = None
    layer: str | None = None
    frame_rows: bool = False

    def holds(self, name: str) -> bool:
        """Whether a parameter or module name of the unwrapped model is inside this tower."""
        return f"{name}.".startswith(self.prefixes)


# The embedding [max_frames, D_q] of each kept frame's place in the clip, added to its frame tokens before
# the video Q-Former: with it, the only part of the model that can tell frames apart by their order.
FRAME_POSITION_EMBEDDING = "frame_position_embedding"

# BLIP-2 vision towers: BLIP-2 `qkv` / `projection`, CLIP / SigLIP `q/k/v/out_proj`, `mlp.fc1` / `fc2`;
# the `(.*\.)?` admits wrappers that nest the encoder (CLIP's vision_model.vision_model).
# Every `layer` regex ends in the layer's index.
LAYER_INDEX = r"\d+\."
_VISION_LAYER = r"vision_model\.(.*\.)?encoder\.layers\." + LAYER_INDEX
# One Blip2QFormerLayer: self- and cross-attention q/k/v and output, the query and text MLPs.
_QFORMER_LAYER = r"encoder\.layer\." + LAYER_INDEX
_QFORMER_LINEARS = (
    r"((attention|crossattention)\.(attention\.(query|key|value)|output\.dense)"
    r"|(intermediate_query|output_query|intermediate|output)\.dense)"
)
# Llama / Qwen2 `q/k/v/o_proj` and `gate/up/down_proj`; OPT `out_proj`, `fc1` / `fc2`.
_LLM_LAYER = r"language_model\.(.*\.)?layers\." + LAYER_INDEX

TOWERS: tuple[Tower, ...] = (
    Tower(
        "vision",
        prefixes=("vision_model.",),
        linears=_VISION_LAYER + r"(self_attn\.(qkv|projection|q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))",
        block_outputs=_VISION_LAYER + r"(self_attn\.(projection|out_proj)|mlp\.fc2)",
        layer=_VISION_LAYER,
        frame_rows=True,
    ),
    # The learned queries belong to the Q-Former that reads them.
    Tower(
        "frame_qformer",
        prefixes=("qformer.", "query_tokens"),
        linears=rf"qformer\.{_QFORMER_LAYER}{_QFORMER_LINEARS}",
        layer=rf"qformer\.{_QFORMER_LAYER}",
        frame_rows=True,
    ),
    # The frame position embedding is added to the frame tokens the video Q-Former reads.
    Tower(
        "video_qformer",
        prefixes=("video_qformer.", "video_query_tokens", f"{FRAME_POSITION_EMBEDDING}."),
        linears=rf"video_qformer\.{_QFORMER_LAYER}{_QFORMER_LINEARS}",
        layer=rf"video_qformer\.{_QFORMER_LAYER}",
    ),
    Tower("projection", prefixes=("video_projection.",), linears=r"video_projection"),
    Tower(
        "llm",
        prefixes=("language_model.",),
        linears=_LLM_LAYER
        + r"(self_attn\.(q_proj|k_proj|v_proj|o_proj|out_proj)|mlp\.(gate_proj|up_proj|down_proj)|fc1|fc2)",
        block_outputs=_LLM_LAYER + r"(self_attn\.(o_proj|out_proj)|mlp\.down_proj|fc2)",
        layer=_LLM_LAYER,
    ),
)
TOWER_NAMES: tuple[str, ...] = tuple(t.name for t in TOWERS)
_BY_NAME = {t.name: t for t in TOWERS}

# Named groups of towers.
FUSION = ("frame_qformer", "video_qformer")
ALIGNER = (*FUSION, "projection")
# `adapter.placement`: the towers that get adapters. "both" is the ViT and the LLM (the QLoRA setting);
# "fusion" the two Q-Formers; "all" every tower with attention / MLP layers.
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "vision": ("vision",),
    "fusion": FUSION,
    "llm": ("llm",),
    "both": ("vision", "llm"),
    "all": ("vision", *FUSION, "llm"),
}
# The towers built of transformer layers, which activation checkpointing can recompute in backward
# (`model.gradient_checkpointing`: true for all of them, or a list of these and `PLACEMENTS` keys).
LAYERED_TOWERS: tuple[str, ...] = tuple(t.name for t in TOWERS if t.layer is not None)
# The parts whose linears `model.quantization` can store in 4/8 bit, each a group of towers with one
# format: the ViT, the two Q-Formers, the LLM. One format quantizes `QUANTIZED_BY_DEFAULT` (the two
# big towers, as QLoRA stores them); the fusion layers stay in the compute dtype unless a mapping
# names them, as peers keep their projector (`models.weight_formats`). The projection is never stored
# quantized.
QUANTIZABLE: dict[str, tuple[str, ...]] = {"vision": ("vision",), "fusion": FUSION, "llm": ("llm",)}
QUANTIZED_BY_DEFAULT = ("vision", "llm")
# The towers a BLIP-2 checkpoint provides, and the video branch Video-LLaMA adds on top of them.
BLIP2_TOWERS = ("vision", "frame_qformer")
VIDEO_BRANCH = ("video_qformer", "projection")


def tower(name: str) -> Tower:
    """The tower called `name` (one of `TOWER_NAMES`)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown tower {name!r}; towers: {TOWER_NAMES}") from None


def checkpointed_towers(setting: bool | Iterable[str]) -> tuple[str, ...]:
    """The towers `model.gradient_checkpointing` names, in `TOWERS` order: True every layered one,
    False none, else each entry a `LAYERED_TOWERS` name or a `PLACEMENTS` key ("fusion", "all").
    An unknown name raises ValueError listing the valid ones."""
    if isinstance(setting, bool):
        return LAYERED_TOWERS if setting else ()
    named: set[str] = set()
    for name in setting:
        if name in PLACEMENTS:
            named.update(PLACEMENTS[name])
        elif name in LAYERED_TOWERS:
            named.add(name)
        else:
            raise ValueError(
                f"gradient_checkpointing: {name!r} is not a tower with layers; "
                f"name towers ({', '.join(LAYERED_TOWERS)}) or groups ({', '.join(PLACEMENTS)}), or true / false"
            )
    return tuple(t for t in LAYERED_TOWERS if t in named)


def tower_of(name: str) -> str | None:
    """The tower a parameter or module name of the unwrapped model is in; None outside the towers."""
    for t in TOWERS:
        if t.holds(name):
            return t.name
    return None


def prefixes_of(names: Iterable[str]) -> tuple[str, ...]:
    """Parameter-name prefixes of the towers `names`, in that order (for `str.startswith`)."""
    return tuple(prefix for name in names for prefix in tower(name).prefixes)


def modules_of(names: Iterable[str]) -> list[str]:
    """Module names of the towers `names` (their prefixes that name a module, without the dot), as
    bitsandbytes skip lists take them: ["vision_model"], ["qformer", "video_qformer", ...]."""
    return [prefix.rstrip(".") for prefix in prefixes_of(names) if prefix.endswith(".")]


def part_of(name: str) -> str | None:
    """The `QUANTIZABLE` part a parameter or module name of the unwrapped model is in; None outside them."""
    owner = tower_of(name)
    return next((part for part, towers in QUANTIZABLE.items() if owner in towers), None)


def part_modules(parts: Iterable[str]) -> list[str]:
    """`modules_of` the towers of the `QUANTIZABLE` parts `parts`."""
    return modules_of(name for part in parts for name in QUANTIZABLE[part])


def linear_patterns(names: Iterable[str]) -> dict[str, str]:
    """Tower name → regex of its adapter-target linears, for the towers `names`."""
    return {name: tower(name).linears for name in names}


def any_of(patterns: Iterable[str]) -> str:
    """One regex matching what any of `patterns` matches (each kept whole in its own group)."""
    return "|".join(f"(?:{p})" for p in patterns)


def frame_row_linears() -> str:
    """Regex of the linears that see one frame per row: the default layers temporal LoRA gates."""
    return any_of(t.linears for t in TOWERS if t.frame_rows)
