import json

import pytest
import torch

from models.footprint import (
    COMPONENTS,
    NF4_FLOOR_BYTES,
    estimate_weight_bytes,
    main,
    model_weight_bytes,
    preset_footprint,
)
from models.loading import load_model


@pytest.mark.parametrize(("fmt", "quantization"), [("nf4-dq", "nf4"), ("int8", "int8"), ("bf16", "none")])
def test_estimate_equals_a_real_quantized_load(tiny_ckpt, fmt, quantization):
    """The meta-device estimate counts exactly the bytes a quantized `from_pretrained` holds."""
    model = load_model(tiny_ckpt, quantization=quantization, compute_dtype=torch.bfloat16, device="cpu")
    assert estimate_weight_bytes(model.config, fmt) == model_weight_bytes(model)


def test_nf4_double_quant_linears_of_1b_preset_within_qlora_budget():
    """QLoRA's 4.127 bits: NF4 + double quant linears <= 0.52 bytes/param, measured on 1b's shapes."""
    report = preset_footprint("1b", formats=("nf4-dq", "nf4", "bf16"))
    dq = report["formats"]["nf4-dq"]["quantized_linear_bytes_per_param"]
    nodq = report["formats"]["nf4"]["quantized_linear_bytes_per_param"]
    assert NF4_FLOOR_BYTES < dq <= 0.52
    assert dq < nodq <= 0.5625 + 1e-4  # fp32 absmax per 64 weights: +0.5 bit
    bf16 = report["formats"]["bf16"]
    assert bf16["quantized_linear_bytes_per_param"] is None
    assert set(bf16["components"]) == set(COMPONENTS)
    assert 0.9e9 < bf16["total"]["params"] < 1.3e9  # "~1B"
    assert bf16["total"]["bytes"] == 2 * bf16["total"]["params"]
    # only the towers shrink; the Q-Formers and projection stay 16-bit
    for name in ("qformer", "video_qformer", "projection"):
        assert report["formats"]["nf4-dq"]["components"][name] == bf16["components"][name]


def test_cli_json(capsys):
    main(["--preset", "tiny", "--vocab-size", "500", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["vocab_size"] == 500 and set(report["formats"]) == {"bf16", "int8", "nf4", "nf4-dq"}
    totals = [report["formats"][f]["total"]["bytes"] for f in ("bf16", "int8", "nf4")]
    assert totals == sorted(totals, reverse=True)


def test_cli_adds_per_tower_formats(capsys):
    main(["--preset", "tiny", "--vocab-size", "500", "--mixed", '{"vision": "none", "llm": "nf4"}'])
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("component"))
    assert header.endswith("  vision none, llm nf4 MiB")  # its own column, not run into the one before
    assert any(line.startswith("  vision none, llm nf4  0.") for line in lines)  # bytes/param of its NF4 LLM


def test_7b_preset_is_llama_2_7b_and_eva_vit_g_sized():
    """The GPU check's 7B-shaped Video-LLaMA: at LLaMA's vocabulary its LLM has Llama-2-7B's exact
    parameter count (6,738,415,616) and its ViT EVA-ViT-g's ~1.0B."""
    components = preset_footprint("7b", formats=("bf16",))["formats"]["bf16"]["components"]
    assert components["llm"]["params"] == 6_738_415_616
    assert 0.95e9 < components["vision"]["params"] < 1.05e9
