"""train_memory's child-process measurement, for real, on the tiny preset at --quick sizes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from benchmarks import train_memory
from benchmarks.memory import allocation_peak, live_tensor_bytes, materialize_weights, tensor_step_peak
from benchmarks.workload import write_checkpoint


def test_child_measures_one_qlora_step(tmp_path: Path) -> None:
    checkpoint = write_checkpoint("tiny", tmp_path / "base")
    args = argparse.Namespace(device="cpu", preset="tiny", dtype="auto", batch_size=1, frames=2)
    figures = train_memory.measure_in_child(args, "qlora", checkpoint, tmp_path)

    assert figures["method"] == "qlora" and figures["quantization"] == "nf4"
    assert 0 < figures["trainable_params"] < figures["total_params"]
    # ZeRO-2's AdamW keeps two fp32 moments per trained parameter
    assert figures["optimizer_state_bytes"] == 8 * figures["trainable_params"]
    # the Python runtime + torch + DeepSpeed alone take well over 100 MB of RSS
    assert figures["baseline_bytes"] > 100 * 2**20
    assert figures["step_peak_bytes"] >= figures["step_start_bytes"] > figures["baseline_bytes"]
    assert figures["absolute_peak_bytes"] >= figures["step_peak_bytes"]
    assert figures["step_peak_above_baseline_bytes"] == figures["step_peak_bytes"] - figures["baseline_bytes"]
    # the tensors alone: the weights, the optimizer state and what the step adds
    tensors = figures["step_tensor_peak_bytes"]
    assert (
        tensors
        > figures["step_start_tensor_bytes"]
        >= figures["weight_bytes"] + figures["optimizer_state_bytes"]
    )
    assert tensors < figures["step_peak_above_baseline_bytes"] + figures["baseline_bytes"]
    assert figures["loss"] > 0


def test_child_with_gradient_checkpointing_trains_the_same_steps(tmp_path: Path) -> None:
    """Recomputing the activations in backward changes the memory, not the training: after two steps
    (the second one's loss follows the first update) the losses match the plain run's."""
    checkpoint = write_checkpoint("tiny", tmp_path / "base")
    args = argparse.Namespace(device="cpu", preset="tiny", dtype="auto", batch_size=1, frames=2, steps=2)
    plain = train_memory.measure_in_child(args, "qlora", checkpoint, tmp_path)
    checkpointed = train_memory.measure_in_child(
        args, "qlora", checkpoint, tmp_path, checkpointing="vision", alternate_steps=1, threads=1
    )

    # only the ViT's layers recompute (the tiny preset has two)
    assert checkpointed["gradient_checkpointing"] == {"vision": 2} and plain["gradient_checkpointing"] == {}
    assert checkpointed["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    # the alternating steps come after the measured ones and time each setting once per pair
    assert len(checkpointed["step_cpu_times_s"]) == 2
    alternating = checkpointed["alternating_step_cpu_times_s"]
    assert len(alternating["on"]) == len(alternating["off"]) == 1
    assert checkpointed["torch_threads"] == 1
    # the timing child measures no memory: the RSS meter's fresh mappings would bill page faults
    assert "step_peak_bytes" not in checkpointed and "step_tensor_peak_bytes" not in checkpointed
    assert (
        checkpointed["alternating_checkpointed_over_not_step_cpu"]
        == alternating["on"][0] / alternating["off"][0]
    )
    assert checkpointed["trainable_params"] == plain["trainable_params"]


def test_child_with_quantized_fusion_and_8bit_adamw(tmp_path: Path) -> None:
    """--quantize-fusion stores the Q-Formers in NF4 as well (fewer weight bytes, same trained
    parameters) and --optimizer adamw_8bit keeps its two moments in 8 bits."""
    checkpoint = write_checkpoint("tiny", tmp_path / "base")
    args = argparse.Namespace(device="cpu", preset="tiny", dtype="auto", batch_size=1, frames=2)
    plain = train_memory.measure_in_child(args, "qlora", checkpoint, tmp_path)
    args.quantize_fusion = True
    fused = train_memory.measure_in_child(args, "qlora", checkpoint, tmp_path, "adamw_8bit")

    assert fused["quantization"] == {"vision": "nf4", "fusion": "nf4", "llm": "nf4"}
    assert fused["optimizer"] == "adamw_8bit" and fused["trainable_params"] == plain["trainable_params"]
    assert fused["weight_bytes"] < plain["weight_bytes"]
    # bitsandbytes' 8-bit state: one byte per moment element (+ block scales) instead of four
    assert fused["optimizer_state_bytes"] < 0.4 * plain["optimizer_state_bytes"]
    assert fused["loss"] > 0
    assert train_memory.quantization_of("lora", quantize_fusion=True) == "none"


def test_unknown_method_is_refused_with_the_known_ones() -> None:
    with pytest.raises(SystemExit, match=r"unknown method 'qlora9'.*lora"):
        train_memory.available_variants("lora,qlora9")


def test_result_name_keeps_runs_of_other_presets_and_dtypes_apart() -> None:
    names = {train_memory.result_name(p, d) for p in ("tiny", "1b") for d in ("auto", "bfloat16")}
    assert names == {"train_memory", "train_memory_1b", "train_memory_bfloat16", "train_memory_1b_bfloat16"}
    assert (
        train_memory.result_name("1b", "bfloat16", checkpointing="all")
        == "train_memory_1b_bfloat16_checkpointed"
    )
    assert (
        train_memory.result_name(
            "1b", "bfloat16", checkpointing="all", optimizer="adamw_8bit", quantize_fusion=True
        )
        == "train_memory_1b_bfloat16_checkpointed_adamw_8bit_fusion_quantized"
    )
    assert (
        train_memory.result_name("1b", "bfloat16", checkpointing="vision", quantize_fusion=True)
        == "train_memory_1b_bfloat16_checkpointed_vision_fusion_quantized"
    )
    with pytest.raises(SystemExit, match="'vit' is not a tower with layers"):
        train_memory.checkpointing_setting("vision,vit")


def test_materialize_copies_mapped_weights_but_not_int8_storage(tmp_path: Path) -> None:
    """An int8 weight's data and its ``CB`` are one storage; copying the data would hold it twice."""
    from models.loading import load_model

    checkpoint = write_checkpoint("tiny", tmp_path / "base")
    model = load_model(
        checkpoint, quantization="int8", compute_dtype=torch.float32, device=torch.device("cpu")
    )
    before = {name: p.untyped_storage().data_ptr() for name, p in model.named_parameters()}
    materialize_weights(model)
    int8 = [(n, p) for n, p in model.named_parameters() if getattr(p, "CB", None) is not None]
    assert int8 and all(p.CB.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for _, p in int8)
    floats = [(n, p) for n, p in model.named_parameters() if p.dtype.is_floating_point]
    assert floats and all(p.untyped_storage().data_ptr() != before[n] for n, p in floats)


def test_child_measures_steps_with_a_bitsandbytes_8bit_optimizer(tmp_path: Path) -> None:
    checkpoint = write_checkpoint("tiny", tmp_path / "base")
    args = argparse.Namespace(device="cpu", preset="tiny", dtype="auto", batch_size=1, frames=2, steps=2)
    figures = train_memory.measure_in_child(args, "qlora", checkpoint, tmp_path, "paged_adamw_8bit")

    assert (
        figures["optimizer_class"] == "PagedAdamW8bit"
        and figures["deepspeed_config"] == "ds_configs/zero2.json"
    )
    assert figures["steps"] == 2 and len(figures["step_times_s"]) == len(figures["step_cpu_times_s"]) == 2
    assert figures["step_time_s"] == figures["step_times_s"][1] > 0
    # ZeRO-2 hands the optimizer one flat fp32 partition of the n trained parameters: two uint8
    # moments (2 B), an fp32 absmax per 256-element block for each, and the two 256-entry fp32 code maps
    n = figures["trainable_params"]
    assert figures["optimizer_state_bytes"] == 2 * n + 2 * 4 * -(-n // 256) + 2 * 256 * 4
    assert figures["loss"] > 0


def test_optimizer_comparison_needs_known_names_and_adamw() -> None:
    assert train_memory.available_optimizers("adamw, offload") == ["adamw", "offload"]
    with pytest.raises(SystemExit, match=r"unknown optimizer 'lion'.*paged_adamw_8bit"):
        train_memory.available_optimizers("adamw,lion")
    with pytest.raises(SystemExit, match="must include adamw"):
        train_memory.available_optimizers("adamw_8bit,offload")
    assert train_memory.result_name("1b", "auto", optimizers=True) == "train_memory_optimizers_1b"
    assert train_memory.result_name("tiny", "bfloat16", optimizers=True) == "train_memory_optimizers_bfloat16"


def test_tensor_step_peak_counts_what_a_call_holds_above_the_live_tensors() -> None:
    """The live storages are counted once however many views share them; inside the call the peak is
    the highest sum of its allocations (4 + 2 MiB before the 4 is freed), not what it keeps (1 MiB)."""
    mib = 2**20
    kept: list[torch.Tensor] = []

    def run() -> None:
        first = torch.empty(4 * mib, dtype=torch.uint8)
        second = torch.empty(2 * mib, dtype=torch.uint8)
        del first
        kept.append(torch.empty(mib, dtype=torch.uint8))
        del second

    before = live_tensor_bytes(torch.device("cpu"))
    held = torch.empty(8 * mib, dtype=torch.uint8)
    views = [held[:10], held.view(2, -1)]
    assert live_tensor_bytes(torch.device("cpu")) - before == 8 * mib and len(views) == 2

    assert allocation_peak(run, torch.device("cpu")) == (6 * mib, mib)
    peak = tensor_step_peak(run, torch.device("cpu"))
    assert peak["peak"] - peak["start"] == 6 * mib
    assert peak["start"] >= before + 9 * mib  # the 8 MiB held and the 1 MiB the first call kept
