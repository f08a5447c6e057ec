"""The tower map: every parameter of the presets in exactly one tower, and the groupings that used to be
written out in footprint, rank allocation, learning-rate groups, temporal LoRA, bottleneck adapters,
checkpoint assembly and conversion reproduced from it."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from models import rank_allocation as ra
from models.assemble import BLIP2_PREFIXES
from models.bottleneck import BLOCK_OUTPUTS
from models.configuration_video_llama import VideoLlamaConfig
from models.convert_video_llama import VIDEO_BRANCH_PREFIXES
from models.footprint import COMPONENTS, component_of
from models.lora_methods import placement_targets
from models.modeling_video_llama import VideoLlamaForConditionalGeneration
from models.presets import preset_fields
from models.temporal_lora import DEFAULT_TEMPORAL_MODULES, _short_name
from models.towers import (
    ALIGNER,
    FUSION,
    PLACEMENTS,
    TOWER_NAMES,
    TOWERS,
    checkpointed_towers,
    tower,
    tower_of,
)
from trainer.param_groups import group_of

# --- the definitions the map replaced, as they were written before it -----------------------------------
OLD_COMPONENT_PREFIXES = (
    ("vision_model.", "vision"),
    ("qformer.", "qformer"),
    ("query_tokens", "qformer"),
    ("video_qformer.", "video_qformer"),
    ("video_query_tokens", "video_qformer"),
    ("frame_position_embedding.", "video_qformer"),
    ("video_projection.", "projection"),
    ("language_model.", "llm"),
)
OLD_GROUP_OF_COMPONENT = {
    "vision": "vit",
    "qformer": "aligner",
    "video_qformer": "aligner",
    "projection": "aligner",
    "llm": "llm",
}
_OLD_QFORMER_LINEARS = (
    r"encoder\.layer\.\d+\.((attention|crossattention)\.(attention\.(query|key|value)|output\.dense)"
    r"|(intermediate_query|output_query|intermediate|output)\.dense)"
)
OLD_GROUP_PATTERNS = {
    "vision": (
        r"vision_model\.(.*\.)?encoder\.layers\.\d+\."
        r"(self_attn\.(qkv|projection|q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
    ),
    "frame_qformer": rf"qformer\.{_OLD_QFORMER_LINEARS}",
    "video_qformer": rf"video_qformer\.{_OLD_QFORMER_LINEARS}",
    "projection": r"video_projection",
    "llm": (
        r"language_model\.(.*\.)?layers\.\d+\."
        r"(self_attn\.(q_proj|k_proj|v_proj|o_proj|out_proj)|mlp\.(gate_proj|up_proj|down_proj)|fc1|fc2)"
    ),
}
OLD_TEMPORAL_MODULES = (
    r"vision_model\.(.*\.)?encoder\.layers\.\d+\."
    r"(self_attn\.(qkv|projection|q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
    r"|qformer\.encoder\.layer\.\d+\..*(query|key|value|dense)"
)
OLD_BLOCK_OUTPUTS = {
    "vision": r"vision_model\.(.*\.)?encoder\.layers\.\d+\.(self_attn\.(projection|out_proj)|mlp\.fc2)",
    "llm": r"language_model\.(.*\.)?layers\.\d+\.(self_attn\.(o_proj|out_proj)|mlp\.down_proj|fc2)",
}
OLD_DEFAULT_TARGET_MODULES = f"(?:{OLD_GROUP_PATTERNS['vision']})|(?:{OLD_GROUP_PATTERNS['llm']})"
OLD_BLIP2_PREFIXES = ("vision_model.", "qformer.", "query_tokens")
OLD_VIDEO_BRANCH_PREFIXES = (
    "video_qformer.",
    "video_query_tokens",
    "frame_position_embedding.",
    "video_projection.",
)


def _meta_model(preset: str, **overrides) -> nn.Module:
    """The preset built on the meta device: names and shapes only (the 1b preset has ~1.1B parameters)."""
    fields = preset_fields(preset, text_config={"vocab_size": 1000})
    with torch.device("meta"):
        return VideoLlamaForConditionalGeneration(
            VideoLlamaConfig(**fields, video_token_index=999, **overrides)
        )


@pytest.fixture(scope="module", params=["tiny", "1b"])
def model(request) -> nn.Module:
    return _meta_model(request.param)


def _linears(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _old_component(name: str) -> str:
    return next(component for prefix, component in OLD_COMPONENT_PREFIXES if name.startswith(prefix))


def test_every_parameter_is_in_exactly_one_tower(model):
    for name, _ in model.named_parameters():
        holders = [t.name for t in TOWERS if t.holds(name)]
        assert len(holders) == 1, (name, holders)
        assert tower_of(name) == holders[0]


def test_the_retrieval_head_is_outside_the_towers():
    model = _meta_model("tiny", retrieval_dim=16)
    outside = {name for name, _ in model.named_parameters() if tower_of(name) is None}
    assert outside and all(name.startswith("retrieval_head.") for name in outside)
    assert group_of("retrieval_head.video_proj.weight") == "llm"


def test_footprint_components_are_the_old_ones(model):
    assert COMPONENTS == ("vision", "qformer", "video_qformer", "projection", "llm")
    for name, _ in model.named_parameters():
        assert component_of(name) == _old_component(name), name


def test_learning_rate_groups_are_the_old_ones(model):
    for name, _ in model.named_parameters():
        expected = OLD_GROUP_OF_COMPONENT[_old_component(name)]
        assert group_of(name) == group_of(f"base_model.model.{name}") == expected, name


def test_rank_groups_are_the_towers_with_the_old_patterns(model):
    assert ra.GROUP_PATTERNS == OLD_GROUP_PATTERNS
    assert tuple(ra.GROUP_PATTERNS) == TOWER_NAMES
    assert placement_targets("both") == OLD_DEFAULT_TARGET_MODULES
    linears = _linears(model)
    for t in TOWERS:
        matched = [n for n in linears if re.fullmatch(t.linears, n)]
        assert matched, t.name
        # The two views of a tower agree: its linears are inside its parameter prefixes.
        assert all(tower_of(n) == t.name for n in matched), t.name


def test_default_temporal_modules_gate_the_same_linears(model):
    linears = _linears(model)
    new = {n for n in linears if re.fullmatch(DEFAULT_TEMPORAL_MODULES, n)}
    old = {n for n in linears if re.fullmatch(OLD_TEMPORAL_MODULES, n)}
    assert new == old and new
    assert {tower_of(n) for n in new} == {t.name for t in TOWERS if t.frame_rows}


def test_bottleneck_block_outputs_are_the_old_ones(model):
    assert BLOCK_OUTPUTS == OLD_BLOCK_OUTPUTS
    linears = _linears(model)
    for name, pattern in BLOCK_OUTPUTS.items():
        outputs = {n for n in linears if re.fullmatch(pattern, n)}
        assert outputs and outputs <= {n for n in linears if re.fullmatch(tower(name).linears, n)}


def test_assembly_and_conversion_prefixes_are_the_old_ones():
    assert BLIP2_PREFIXES == OLD_BLIP2_PREFIXES
    assert VIDEO_BRANCH_PREFIXES == OLD_VIDEO_BRANCH_PREFIXES


def test_named_groups_are_towers():
    assert FUSION == ("frame_qformer", "video_qformer")
    assert ALIGNER == (*FUSION, "projection")
    assert set(PLACEMENTS) == {"vision", "fusion", "llm", "both", "all"}
    assert PLACEMENTS["fusion"] == FUSION and PLACEMENTS["both"] == ("vision", "llm")
    assert set(PLACEMENTS["all"]) == {*PLACEMENTS["vision"], *FUSION, *PLACEMENTS["llm"]}
    for names in [FUSION, ALIGNER, *PLACEMENTS.values()]:
        assert all(name in TOWER_NAMES for name in names)
    with pytest.raises(ValueError, match="unknown tower 'audio'"):
        tower("audio")


def test_gate_axis_labels_name_the_tower_and_layer():
    assert _short_name("vision_model.encoder.layers.3.mlp.fc1") == "vision.3.mlp.fc1"
    assert (
        _short_name("qformer.encoder.layer.1.attention.attention.query")
        == "frame_qformer.1.attention.attention.query"
    )
    assert _short_name("video_projection") == "video_projection"


def test_checkpointed_towers_resolves_groups_and_refuses_unknown_names():
    assert checkpointed_towers(True) == ("vision", "frame_qformer", "video_qformer", "llm")
    assert checkpointed_towers(False) == ()
    assert checkpointed_towers(["llm", "vision"]) == ("vision", "llm")
    assert checkpointed_towers(["fusion"]) == ("frame_qformer", "video_qformer")
    with pytest.raises(ValueError, match="'projection' is not a tower with layers"):
        checkpointed_towers(["projection"])
