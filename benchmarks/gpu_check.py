"""The prepared GPU check: the CUDA path proved and its memory, speed and MFU measured, in one go.

    python -m benchmarks.gpu_check --device cuda --out DIR [--parts nf4,selector,...]   (make gpu-check)
    python -m benchmarks.gpu_check --device cpu --small --out DIR                       (the CPU rehearsal)

Every part runs through the project's own code (models.loading, models.adapters,
trainer.run_setup.build_engine, data.frame_selector, benchmarks.train_memory's child processes and
the CUDA allocator counters of benchmarks.memory, trainer.flops), guarded: a part that fails is
recorded with its error and the others still run. Parts:

- ``nf4``: a Linear4bit of the tiny preset loaded NF4 + double quant on the device, forward and
  backward against the same layer computed from its dequantized weight (bitsandbytes'
  ``dequantize_4bit``): relative error of output and input gradient.
- ``selector``: `FrameSelector` (hybrid) on the device returns the CPU's indices; its frames/s at
  224² for N=64 candidates (``--small``: 64²).
- ``checkpointing``: one temporal-QLoRA step with gradient checkpointing against one without: loss
  and every trained parameter's gradient.
- ``train``: 8 steps through ``deepspeed.initialize`` (`build_engine`) with ZeRO-2 and then ZeRO-3
  (4-bit weights partitioned: their storage is the compute dtype), QLoRA on the tiny preset, bf16 on
  CUDA, SynthVid clips generated in memory through the frame selector on the device: the loss
  falls. No tracking (MLflow is not carried).
- ``memory_1b``: the 1b preset's QLoRA vs LoRA step peak (bf16, CUDA max_memory_allocated), by
  `benchmarks.train_memory`'s children.
- ``memory_7b``: the 7b preset (EVA-ViT-g vision, Llama-2-7B LLM, random init) at 8 frames, batch 4:
  QLoRA vs LoRA step peak (the published anchor: VideoLLaMA2's 36 GB vs 44 GB on an A100; goal
  QLoRA <= 24 GB), and QLoRA's step time, tokens/s and MFU (`trainer.flops` FLOP count; against
  the data-sheet peak and against the 790 TFLOP/s measured on the H200).
- ``decode``: the pipeline's decode frames/s with 16 workers (``--small``: 2) over SynthVid shards
  written there (needs the ``decode`` wheel set: decord, webdataset, PyAV).

DeepSpeed trains with ``torch_adam`` (torch's AdamW): the GPU machine's deepspeed is installed from
its sdist without prebuilt ops, and a JIT FusedAdam build would cost minutes of the loan.

Writes ``<out>/gpu_check-<device>.json`` (``gpu_check_decode-…`` for a decode-only call; the harness's
format: ``figures`` per part, ``ratios``), after each part ``<out>/gpu_check-partial.json`` (what was
measured should the call's time limit stop the rest), and exits 1 with a summary line per failed part.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import check_device, write_result

PARTS = ("nf4", "selector", "checkpointing", "train", "memory_1b", "memory_7b", "decode")
# The figures in the ratios (and the README rows): H200 bf16 dense peak as measured on the lent
# machine (shared/KINDS.md: 769-798 TFLOP/s on an 8192³ matmul), beside the data sheet's 989.
MEASURED_PEAK_TFLOPS = 790.0
# Tolerances: NF4 layer vs its dequantized reference, and checkpointed vs plain step. The same
# weights and inputs in the same dtype; what differs is the kernels' accumulation order.
NF4_REL_TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}
CHECKPOINT_REL_TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}
# GB (1e9 bytes), as the published anchors (VideoLLaMA2: 36 GB QLoRA, 44 GB LoRA) are given
GB = 1e9
PARTIAL_FILE = "gpu_check-partial.json"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in fp32."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class Sizes:
    """The check's sizes: the issue's on a GPU, the smallest that still run every code path with --small."""

    def __init__(self, small: bool) -> None:
        self.small = small
        self.selector_size, self.candidates, self.selector_batch = (64, 16, 2) if small else (224, 64, 8)
        self.train_steps = 4 if small else 8
        self.memory_steps = 2 if small else 3
        self.large_preset = "tiny" if small else "7b"
        self.large_batch, self.large_frames = (1, 2) if small else (4, 8)
        self.mid_preset = "tiny" if small else "1b"
        self.mid_batch, self.mid_frames = (1, 2) if small else (1, 4)
        self.decode_workers, self.decode_clips, self.decode_size = (2, 8, 64) if small else (16, 256, 224)


def _tiny_checkpoint(tmp: Path) -> Path:
    from benchmarks.workload import write_checkpoint

    path = tmp / "tiny"
    return path if (path / "config.json").is_file() else write_checkpoint("tiny", path)


def part_nf4(device: torch.device, dtype: torch.dtype, sizes: Sizes, tmp: Path) -> tuple[dict, dict]:
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    from models.loading import load_model

    model = load_model(_tiny_checkpoint(tmp), quantization="nf4", compute_dtype=dtype, device=device)
    name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    state = layer.weight.quant_state
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, layer.in_features, generator=gen).to(device, dtype)
    x_layer, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = layer(x_layer)
    weight = dequantize_4bit(layer.weight.data, state).to(dtype)  # [out, in]
    ref = torch.nn.functional.linear(x_ref, weight, layer.bias)
    grad_out = torch.randn(out.shape, generator=gen).to(device, dtype)
    out.backward(grad_out)
    ref.backward(grad_out)
    figures = {
        "layer": name,
        "double_quant": bool(state.nested),
        "weight_device": str(layer.weight.device),
        "forward_rel_error": _rel(out, ref),
        "input_grad_rel_error": _rel(x_layer.grad, x_ref.grad),
        "tolerance": NF4_REL_TOL[dtype],
    }
    checks = {
        "on the device": layer.weight.device.type == device.type,
        "double quant": figures["double_quant"],
        "forward matches": figures["forward_rel_error"] < NF4_REL_TOL[dtype],
        "backward matches": figures["input_grad_rel_error"] < NF4_REL_TOL[dtype],
    }
    return figures, checks


def part_selector(device: torch.device, dtype: torch.dtype, sizes: Sizes, tmp: Path) -> tuple[dict, dict]:
    from benchmarks.harness import time_call
    from benchmarks.workload import candidate_frames
    from data.frame_selector import FrameSelector

    frames = candidate_frames(
        sizes.selector_batch, sizes.candidates, sizes.selector_size, torch.device("cpu")
    )
    selector = FrameSelector(k=8, policy="hybrid").eval()
    on_cpu = selector(frames)
    frames_dev = frames.to(device)
    on_device = selector(frames_dev)
    times = time_call(lambda: selector(frames_dev), device, repeats=5)
    median = statistics.median(times)
    figures = {
        "frames": list(frames.shape),
        "indices_equal_fraction": float((on_device.indices.cpu() == on_cpu.indices).float().mean()),
        "scores_max_abs_diff": float((on_device.scores.cpu() - on_cpu.scores).abs().max()),
        "step_s": median,
        "frames_per_s": frames.shape[0] * frames.shape[1] / median,
    }
    checks = {
        "same indices as on CPU": figures["indices_equal_fraction"] == 1.0,
        "normalized frames on the device": on_device.frames.device.type == device.type,
    }
    return figures, checks


def _temporal_step(checkpoint: Path, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    from benchmarks.workload import model_batch
    from models.adapters import apply_adapter
    from models.loading import load_model
    from models.processor import VideoLlamaProcessor

    model = load_model(checkpoint, quantization="nf4", compute_dtype=dtype, device=device)
    torch.manual_seed(0)
    model = apply_adapter(
        model, "temporal_qlora", r=8, alpha=16, dropout=0.0, gradient_checkpointing=checkpointing
    ).train()
    processor = VideoLlamaProcessor.from_pretrained(checkpoint)
    batch = model_batch(processor, 2, 4, model.config.vision_config.image_size, device, dtype)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def part_checkpointing(
    device: torch.device, dtype: torch.dtype, sizes: Sizes, tmp: Path
) -> tuple[dict, dict]:
    checkpoint = _tiny_checkpoint(tmp)
    loss_plain, grads_plain = _temporal_step(checkpoint, device, dtype, checkpointing=False)
    loss_ckpt, grads_ckpt = _temporal_step(checkpoint, device, dtype, checkpointing=True)
    nonzero = [n for n, g in grads_plain.items() if g.abs().sum() > 0]
    worst = max(_rel(grads_ckpt[n], grads_plain[n]) for n in nonzero)
    figures = {
        "loss_plain": loss_plain,
        "loss_checkpointed": loss_ckpt,
        "trained_tensors": len(grads_plain),
        "nonzero_grad_tensors": len(nonzero),
        "worst_grad_rel_error": worst,
        "tolerance": CHECKPOINT_REL_TOL[dtype],
    }
    checks = {
        "same trained tensors": grads_plain.keys() == grads_ckpt.keys(),
        "gradients reach the adapters": len(nonzero) > 0,
        "same loss": abs(loss_ckpt - loss_plain) <= CHECKPOINT_REL_TOL[dtype] * abs(loss_plain),
        "same gradients": worst < CHECKPOINT_REL_TOL[dtype],
    }
    return figures, checks


def _synthvid_batch(processor, batch_size: int, candidates: int, size: int, device: torch.device):
    """uint8 candidates [B, N, 3, S, S] of SynthVid pretrain clips drawn in memory, and their captions' tokens."""
    from data.synthvid import generate_clip

    clips = [generate_clip(i, seed=0, size=size, num_frames=candidates) for i in range(batch_size)]
    frames = torch.stack([torch.from_numpy(f).permute(0, 3, 1, 2) for f, _, _ in clips]).to(device)
    tokens = processor.pad([processor.training_example(caption) for _, caption, _ in clips])
    return frames, {k: v.to(device) for k, v in tokens.items()}


def _train_run(ds_file: str, checkpoint: Path, device, dtype, steps: int) -> dict[str, Any]:
    import bitsandbytes as bnb

    from data.frame_selector import FrameSelector
    from models.adapters import apply_adapter
    from models.loading import load_model
    from models.processor import VideoLlamaProcessor
    from trainer.config import RunConfig
    from trainer.ds_config import load_ds_config
    from trainer.run_setup import build_engine

    cfg = RunConfig()
    cfg.deepspeed.config = ds_file
    cfg.train.micro_batch_size, cfg.train.steps, cfg.train.warmup_steps, cfg.train.lr = 4, steps, 0, 1e-3
    ds_config = load_ds_config(cfg, 1, device, dtype)
    ds_config["optimizer"]["params"]["torch_adam"] = True
    model = load_model(checkpoint, quantization="nf4", compute_dtype=dtype, device=device)
    torch.manual_seed(0)
    model = apply_adapter(model, "qlora", r=8, alpha=16).train()
    engine, _ = build_engine(model, cfg, ds_config)
    processor = VideoLlamaProcessor.from_pretrained(checkpoint)
    size = model.config.vision_config.image_size
    frames, tokens = _synthvid_batch(processor, cfg.train.micro_batch_size, 16, size, device)
    selected = FrameSelector(k=4, policy="hybrid").eval()(frames, dtype=dtype)
    batch = {"pixel_values": selected.frames, "frame_scores": selected.scores.to(dtype), **tokens}
    losses = []
    for _ in range(steps):
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    four_bit = [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    return {
        "losses": losses,
        "zero_stage": ds_config["zero_optimization"]["stage"],
        "optimizer_class": type(getattr(engine.optimizer, "optimizer", engine.optimizer)).__name__,
        "four_bit_weights": len(four_bit),
        "four_bit_weights_partitioned": sum(hasattr(w, "ds_id") for w in four_bit),
        "selected_frames_device": str(selected.frames.device),
    }


def part_train(device: torch.device, dtype: torch.dtype, sizes: Sizes, tmp: Path) -> tuple[dict, dict]:
    from trainer.distributed import init_distributed

    init_distributed()
    checkpoint = _tiny_checkpoint(tmp)
    figures: dict[str, Any] = {
        name: _train_run(f"ds_configs/{name}.json", checkpoint, device, dtype, sizes.train_steps)
        for name in ("zero2", "zero3")
    }
    figures["backend"] = torch.distributed.get_backend()
    # the collectives ZeRO's steps ran through: NCCL on a GPU, gloo on CPU
    checks = {"process group backend": figures["backend"] == ("nccl" if device.type == "cuda" else "gloo")}
    for name in ("zero2", "zero3"):
        run = figures[name]
        checks[f"{name}: loss falls"] = run["losses"][-1] < run["losses"][0]
        checks[f"{name}: frames selected on the device"] = run["selected_frames_device"].startswith(
            device.type
        )
    checks["zero3: 4-bit weights partitioned"] = (
        figures["zero3"]["four_bit_weights"] > 0
        and figures["zero3"]["four_bit_weights_partitioned"] == figures["zero3"]["four_bit_weights"]
    )
    return figures, checks


_MEASURED: dict[tuple, dict[str, Any]] = {}


def _memory(
    preset: str, batch: int, frames: int, device, dtype, sizes: Sizes, tmp: Path, flops: bool
) -> dict:
    """QLoRA and LoRA through `benchmarks.train_memory`'s children on a `preset` checkpoint written here.

    With --small both memory parts are the tiny preset at the same sizes: its FLOPs are counted for
    both and the children run once (two children cost ~20 s of the rehearsal on 2 cores)."""
    from benchmarks import train_memory

    flops = flops or sizes.small
    key = (preset, batch, frames, flops)
    if key in _MEASURED:
        return _MEASURED[key]
    from benchmarks.workload import write_checkpoint

    checkpoint = tmp / preset
    if not (checkpoint / "config.json").is_file():
        # built on the device and saved in the compute dtype: the 7b preset's fp32 CPU init and 28 GB
        # checkpoint would take minutes of the loan
        write_checkpoint(preset, checkpoint, device=str(device), dtype=dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args = argparse.Namespace(
        device=str(device), preset=preset, dtype=str(dtype).removeprefix("torch."), batch_size=batch,
        frames=frames, steps=sizes.memory_steps, count_flops=flops, torch_adam=True,
    )  # fmt: skip
    _MEASURED[key] = {m: train_memory.measure_in_child(args, m, checkpoint, tmp) for m in ("qlora", "lora")}
    return _MEASURED[key]


def _memory_figures(per_method: dict, preset: str) -> dict[str, Any]:
    qlora, lora = per_method["qlora"], per_method["lora"]
    return {
        "preset": preset,
        **{f"{m}_step_peak_gb": f["step_peak_above_baseline_bytes"] / GB for m, f in per_method.items()},
        **{f"{m}_step_time_s": f["step_time_s"] for m, f in per_method.items()},
        "qlora_over_lora_step_peak": qlora["step_peak_above_baseline_bytes"]
        / lora["step_peak_above_baseline_bytes"],
        "per_method": per_method,
    }


def _memory_checks(per_method: dict, sizes: Sizes) -> dict[str, bool]:
    """Both steps measured; at the real sizes QLoRA's peak below LoRA's. At the tiny preset the
    weights are a few MB and the CPU's RSS peaks differ by noise, so the rehearsal cannot ask that."""
    checks = {
        f"{m}: step peak measured": f["step_peak_above_baseline_bytes"] > 0 for m, f in per_method.items()
    }
    if not sizes.small:
        checks["qlora below lora"] = (
            per_method["qlora"]["step_peak_above_baseline_bytes"]
            < per_method["lora"]["step_peak_above_baseline_bytes"]
        )
    return checks


# The memory reductions of issue #22 together: gradient checkpointing of every tower and paged 8-bit
# AdamW for both methods, and QLoRA's frozen Q-Formers in NF4 as well (`train_memory --gradient-
# checkpointing --optimizer paged_adamw_8bit --quantize-fusion`). On CPU bitsandbytes' 8-bit step
# dequantizes ZeRO's whole flat partition to fp32 and the peak rises; its CUDA kernel updates in place.
RECIPE_OPTIMIZER = "paged_adamw_8bit"


def _recipe(device, dtype, sizes: Sizes, tmp: Path) -> dict:
    """QLoRA and LoRA at the 1b sizes with the reductions of `RECIPE_OPTIMIZER`'s comment."""
    from benchmarks import train_memory

    # the plain measurement wrote the checkpoint (or measures now and writes it): both use the same
    _memory(sizes.mid_preset, sizes.mid_batch, sizes.mid_frames, device, dtype, sizes, tmp, False)
    args = argparse.Namespace(
        device=str(device), preset=sizes.mid_preset, dtype=str(dtype).removeprefix("torch."),
        batch_size=sizes.mid_batch, frames=sizes.mid_frames, steps=sizes.memory_steps, quantize_fusion=True,
    )  # fmt: skip
    return {
        m: train_memory.measure_in_child(
            args, m, tmp / sizes.mid_preset, tmp, RECIPE_OPTIMIZER, checkpointing="all"
        )
        for m in ("qlora", "lora")
    }


def part_memory_1b(device: torch.device, dtype: torch.dtype, sizes: Sizes, tmp: Path) -> tuple[dict, dict]:
    per_method = _memory(
        sizes.mid_preset, sizes.mid_batch, sizes.mid_frames, device, dtype, sizes, tmp, False
    )
    figures = _memory_figures(per_method, sizes.mid_preset)
    recipe = _recipe(device, dtype, sizes, tmp)
    figures["recipe"] = _memory_figures(recipe, sizes.mid_preset)
    checks = _memory_checks(per_method, sizes)
    checks.update({f"recipe {k}": v for k, v in _memory_checks(recipe, sizes).items()})
    checks["recipe: Q-Formers in NF4"] = recipe["qlora"]["quantization"] == {
        "vision": "nf4",
        "fusion": "nf4",
        "llm": "nf4",
    }
    return figures, checks


def part_memory_7b(device: torch.device, dtype: torch.dtype, sizes: Sizes, tmp: Path) -> tuple[dict, dict]:
    from trainer.flops import flops_metrics, peak_tflops

    per_method = _memory(
        sizes.large_preset, sizes.large_batch, sizes.large_frames, device, dtype, sizes, tmp, True
    )
    figures = _memory_figures(per_method, sizes.large_preset)
    qlora = per_method["qlora"]
    step_s = qlora["step_time_s"]
    figures["qlora_tflop_per_step"] = qlora["flops_per_step"] / 1e12
    figures["qlora_tokens_per_s"] = qlora["tokens_per_step"] / step_s
    mfu = flops_metrics(qlora["flops_per_step"], 1, step_s, peak_tflops(device)).get("flops/mfu")
    figures["qlora_mfu_datasheet_peak"] = mfu
    figures["qlora_mfu_measured_peak"] = (
        qlora["flops_per_step"] / step_s / (MEASURED_PEAK_TFLOPS * 1e12) if device.type == "cuda" else None
    )
    checks = {**_memory_checks(per_method, sizes), "flops counted": qlora["flops_per_step"] > 0}
    if not sizes.small:
        checks["qlora <= 24 GB (goal)"] = qlora["step_peak_above_baseline_bytes"] <= 24 * GB
    return figures, checks


def part_decode(device: torch.device, dtype: torch.dtype, sizes: Sizes, tmp: Path) -> tuple[dict, dict]:
    from data.loader import build_loader
    from data.pipeline import build_dataset
    from data.synthvid import write_synthvid

    shards = write_synthvid(
        str(tmp / "shards"),
        num=sizes.decode_clips,
        samples_per_shard=sizes.decode_clips // (2 * sizes.decode_workers),
        size=sizes.decode_size,
    )
    size = (sizes.decode_size, sizes.decode_size)
    dataset = build_dataset(shards, num_frames=16, frame_size=size, batch_size=4, text_fn=None)
    loader = build_loader(dataset, num_workers=sizes.decode_workers)
    start, frames = time.perf_counter(), 0
    for batch in loader:
        frames += batch.frames.shape[0] * batch.frames.shape[1]
    elapsed = time.perf_counter() - start
    figures = {"workers": sizes.decode_workers, "clips": sizes.decode_clips, "size": sizes.decode_size, "frames": frames,
               "seconds": elapsed, "frames_per_s": frames / elapsed}  # fmt: skip
    return figures, {"every clip decoded": frames == sizes.decode_clips * 16}


PART_FUNCTIONS: dict[str, Callable[..., tuple[dict, dict]]] = {
    "nf4": part_nf4,
    "selector": part_selector,
    "checkpointing": part_checkpointing,
    "train": part_train,
    "memory_1b": part_memory_1b,
    "memory_7b": part_memory_7b,
    "decode": part_decode,
}


def run_part(name: str, *args: Any) -> dict[str, Any]:
    """One guarded part: its figures, its named checks, ok, seconds, and the error if it raised."""
    start = time.perf_counter()
    try:
        figures, checks = PART_FUNCTIONS[name](*args)
        failed = [check for check, passed in checks.items() if not passed]
        result = {"ok": not failed, "figures": figures, "checks": checks, "failed_checks": failed}
    except Exception as exc:  # noqa: BLE001 - recorded; the other parts' figures must still come out
        result = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
    result["seconds"] = time.perf_counter() - start
    status = "ok" if result["ok"] else f"FAILED ({result.get('error') or ', '.join(result['failed_checks'])})"
    print(f"== {name}: {status} in {result['seconds']:.1f} s", flush=True)
    return result


def ratios_of(parts: dict[str, dict]) -> dict[str, float]:
    """The figures the README rows show, by name."""
    picks = {
        "nf4_forward_rel_error": ("nf4", "forward_rel_error"),
        "selector_frames_per_s": ("selector", "frames_per_s"),
        "checkpointing_worst_grad_rel_error": ("checkpointing", "worst_grad_rel_error"),
        "mid_qlora_over_lora_step_peak": ("memory_1b", "qlora_over_lora_step_peak"),
        "mid_qlora_step_peak_gb": ("memory_1b", "qlora_step_peak_gb"),
        "mid_lora_step_peak_gb": ("memory_1b", "lora_step_peak_gb"),
        "mid_recipe_qlora_over_lora_step_peak": ("memory_1b", "recipe", "qlora_over_lora_step_peak"),
        "large_qlora_over_lora_step_peak": ("memory_7b", "qlora_over_lora_step_peak"),
        "large_qlora_step_peak_gb": ("memory_7b", "qlora_step_peak_gb"),
        "large_lora_step_peak_gb": ("memory_7b", "lora_step_peak_gb"),
        "large_qlora_step_time_s": ("memory_7b", "qlora_step_time_s"),
        "large_qlora_tokens_per_s": ("memory_7b", "qlora_tokens_per_s"),
        "large_qlora_mfu_measured_peak": ("memory_7b", "qlora_mfu_measured_peak"),
        "decode_frames_per_s": ("decode", "frames_per_s"),
    }
    ratios = {}
    for key, (part, *path) in picks.items():
        value = parts.get(part, {}).get("figures", {})
        for name in path:  # a figure, or a figure of a nested group ("recipe")
            value = value.get(name) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            ratios[key] = float(value)
    return ratios


def result_name(parts: list[str]) -> str:
    """``gpu_check``; ``gpu_check_decode`` for a call that runs only the decode part (its own wheel set)."""
    return "gpu_check_decode" if parts == ["decode"] else "gpu_check"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda[:N], or cpu for the rehearsal")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check-<device>.json")
    parser.add_argument("--small", action="store_true", help="smallest sizes (the CPU rehearsal)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="parts not begun by then are skipped")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = Sizes(args.small)
    start, parts = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in names:
            if time.perf_counter() - start > args.budget_s:
                parts[name] = {"ok": False, "error": f"skipped: the {args.budget_s:.0f} s budget was spent"}
                print(f"== {name}: skipped (budget)", flush=True)
                continue
            parts[name] = run_part(name, device, dtype, sizes, Path(tmp))
            # what was measured so far, should the call's time limit stop the rest
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / PARTIAL_FILE).write_text(json.dumps(parts, indent=1, default=str) + "\n")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    config = {"small": args.small, "parts": names, "dtype": str(dtype), "budget_s": args.budget_s,
              "total_s": time.perf_counter() - start, "measured_peak_tflops": MEASURED_PEAK_TFLOPS}  # fmt: skip
    write_result(result_name(names), device, config, parts, ratios_of(parts), args.out)
    (args.out / PARTIAL_FILE).unlink(missing_ok=True)
    failed = [name for name, part in parts.items() if not part["ok"]]
    for name in failed:
        part = parts[name]
        print(f"FAILED {name}: {part.get('error') or ', '.join(part['failed_checks'])}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
