"""Captioning latency, tokens/s and peak memory, frame selector in the path: bf16 + LoRA, NF4 + LoRA, merged.

    python -m benchmarks.inference --device cpu [--quick] [--preset tiny|1b]

Three variants of one LoRA adapter, compared on the same clips:

- ``bf16``: the 16-bit base (bf16) with the adapter unmerged (peft's LoRA layers run beside the base);
- ``nf4``: the base loaded in NF4 + double quant (`models.loading`, as QLoRA trains it) with the
  same adapter unmerged;
- ``merged``: the adapter merged into the 16-bit weights by the project's export
  (`trainer.export.export_merged`: peft's ``merge_and_unload``, then ``save_pretrained``), loaded
  as a plain bf16 model.

The adapter is the trainer's own adapter folder (`trainer.checkpoint.export_adapter`) of a ``lora``
run (r 16, alpha 32) whose B matrices hold seeded random values in place of training: B starts at
zero, and an all-zero update would make the merged model the base itself. The clips are SynthVid
``pretrain`` clips (`data.synthvid.generate_clip`) encoded to H.264 mp4 files
(`data.video_io.encode_mp4`); each variant decodes its N candidate frames with decord
(`data.video_io.decode_frames`, as the pipeline does), then every timed call runs what evaluation
runs per batch: the hybrid frame selector (`data.frame_selector`, K of N, scores included) and
greedy generation through `trainer.evaluation.batch_outputs.generate_caption_ids`, with eos held
back so that every call generates exactly ``new_tokens`` tokens per clip and tokens/s compare.

Each variant runs in its own child process (as `benchmarks.train_memory` does), so one variant's
allocations and allocator caches cannot inflate another's peak. A child records its baseline (the
Python runtime and libraries, after the imports), loads its model (weights copied out of the
memory-mapped checkpoint, `benchmarks.memory.materialize_weights`), resets the peak, captions the
batch once (warm-up) and ``repeats`` times more. The children run in ``--rounds`` rounds, one per
variant each, in an order rotated every round, so that load from other jobs on a shared machine
falls on every variant alike. Reported per variant: peak memory above the baseline (weights +
generation, first call included; the median run's), what one more batch adds to the warm model,
the weights' bytes, the latency per clip (median over every timed call), generated tokens/s and
the captions' token ids. On CPU memory is RSS, measured as the train
benchmarks measure it (`benchmarks.memory`); on CUDA `torch.cuda.max_memory_allocated`. On CPU
bitsandbytes dequantizes each NF4 weight before its matmul (`models.loading.keep_4bit_training_layout`
keeps that path on every CPU), so NF4 is slower there; the ratio is reported as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import parse_args, time_call, write_result
from benchmarks.memory import PeakMemory, materialize_weights, measure_description
from benchmarks.threads import run_order
from benchmarks.workload import write_checkpoint
from data.frame_selector import FrameSelector
from data.synthvid import generate_clip
from data.video_io import decode_frames, encode_mp4
from models.adapters import apply_adapter, load_adapter
from models.configuration_video_llama import VideoLlamaConfig
from models.loading import load_model
from models.processor import VideoLlamaProcessor
from trainer.checkpoint import export_adapter
from trainer.config import RunConfig
from trainer.evaluation.batch_outputs import generate_caption_ids
from trainer.export import export_merged

VARIANTS = ("bf16", "nf4", "merged")
# Base weight format per variant (`models.loading.QUANTIZATIONS`); merged loads its own checkpoint.
QUANTIZATION = {"bf16": "none", "nf4": "nf4", "merged": "none"}
DTYPE = torch.bfloat16  # the issue's 16-bit format, and NF4's compute dtype
RANK, ALPHA = 16, 32
POLICY = "hybrid"  # scores every candidate frame: the selector's full cost is in the path
# Std of the seeded values that stand in for trained LoRA B matrices (peft starts B at zero):
# small, so the update perturbs the base rather than replacing it.
LORA_B_STD = 0.02
CLIP_SEED = 0
CLIP_SOURCE_FRAMES = 32  # frames per SynthVid clip; N candidates are decoded uniformly from them


@dataclass(frozen=True)
class Sizes:
    """One run's workload: `batch` clips of `candidates` decoded frames, `frames` kept by the
    selector, `new_tokens` generated per clip, `repeats` timed calls after one warm-up."""

    batch: int
    candidates: int
    frames: int
    new_tokens: int
    repeats: int


SIZES = {
    "tiny": Sizes(batch=4, candidates=16, frames=4, new_tokens=16, repeats=5),
    # ~1.1B parameters on CPU: two clips, three timed calls per variant and round.
    "1b": Sizes(batch=2, candidates=16, frames=4, new_tokens=16, repeats=3),
}
QUICK = Sizes(batch=2, candidates=8, frames=2, new_tokens=4, repeats=1)
# Rounds of one child per variant, the order rotated each round (`benchmarks.threads.run_order`): on
# a machine shared with other jobs, load that comes and goes then falls on every variant alike.
ROUNDS = {"tiny": 3, "1b": 2}


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", choices=sorted(SIZES))
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="children per variant, in rotated order; default tiny 3, 1b 2",
    )
    # Internal: prepare the models and clips, or run one variant, in this process.
    parser.add_argument("--child", default=None, choices=("prepare", *VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)


def result_name(preset: str) -> str:
    """``inference`` for the tiny preset, ``inference_1b`` for 1b (as `train_memory` names them)."""
    return "inference" if preset == "tiny" else f"inference_{preset}"


def sizes_of(preset: str, quick: bool) -> Sizes:
    return QUICK if quick else SIZES[preset]


# --- preparation (one child): base checkpoint, adapter, merged model, clips -------------------------


def prepare(root: Path, preset: str, sizes: Sizes) -> None:
    """Write ``root/base`` (the preset's random-init checkpoint), ``root/adapter`` (a lora run's
    adapter folder), ``root/merged`` (the adapter merged by `trainer.export`) and ``root/clips``."""
    checkpoint = write_checkpoint(preset, root / "base")
    write_adapter(checkpoint, root / "adapter")
    export_merged(root / "adapter", root / "merged", DTYPE)
    image_size = VideoLlamaConfig.from_pretrained(checkpoint).vision_config.image_size
    write_clips(root / "clips", sizes.batch, image_size)


def write_adapter(checkpoint: Path, out_dir: Path) -> Path:
    """A ``lora`` adapter on the 16-bit base, saved as the trainer saves a run's adapter (with the
    processor and run_config.json, which `trainer.export` reads); B holds seeded random values."""
    model = load_model(checkpoint, quantization="none", compute_dtype=DTYPE, device="cpu")
    model = apply_adapter(model, "lora", r=RANK, alpha=ALPHA)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_B_STD)
    cfg = RunConfig()
    cfg.model.name_or_path, cfg.model.quantization = str(checkpoint), "none"
    cfg.adapter.method, cfg.adapter.r, cfg.adapter.alpha = "lora", RANK, ALPHA
    processor = VideoLlamaProcessor.from_pretrained(checkpoint)
    return export_adapter(
        model, processor, out_dir, cfg.to_dict(), run_info={"source": "benchmarks.inference"}
    )


def write_clips(out_dir: Path, count: int, size: int) -> list[Path]:
    """`count` SynthVid pretrain clips (seed `CLIP_SEED`) as ``out_dir/<index>.mp4``, size x size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        frames, _, _ = generate_clip(index, seed=CLIP_SEED, size=size, num_frames=CLIP_SOURCE_FRAMES)
        path = out_dir / f"{index:05d}.mp4"
        path.write_bytes(encode_mp4(frames))
        paths.append(path)
    return paths


# --- one variant (one child) ----------------------------------------------------------------------


def load_variant(variant: str, root: Path, device: torch.device) -> Any:
    """The model of `variant` (see the module docstring) on `device`, in eval mode."""
    if variant == "merged":
        return load_model(root / "merged", quantization="none", compute_dtype=DTYPE, device=device).eval()
    base = load_model(root / "base", quantization=QUANTIZATION[variant], compute_dtype=DTYPE, device=device)
    return load_adapter(base, root / "adapter").eval()


def run_variant(variant: str, root: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Measure one variant in this process; returns one run's figures. Everything is imported at
    module level, so the baseline holds the runtime and every library a variant uses."""
    meter = PeakMemory(device)
    meter.reset()
    baseline = meter.read()["current"]

    processor = VideoLlamaProcessor.from_pretrained(root / "base")
    model = load_variant(variant, root, device)
    materialize_weights(model)
    weight_bytes = model.get_memory_footprint()
    size = model.config.vision_config.image_size
    clips = sorted((root / "clips").glob("*.mp4"))
    start = time.perf_counter()
    frames = torch.stack([decode_frames(p.read_bytes(), sizes.candidates, (size, size)) for p in clips])
    decode_s = time.perf_counter() - start
    frames = frames.to(device)  # uint8 [B, N, 3, S, S], as a pipeline batch arrives
    selector = FrameSelector(sizes.frames, POLICY).eval()

    def caption() -> torch.Tensor:
        selected = selector(frames, dtype=DTYPE)
        return generate_caption_ids(
            model, processor, selected, sizes.new_tokens, 1, False, device, min_new_tokens=sizes.new_tokens
        )

    meter.reset()
    start_bytes = meter.read()["current"]
    with torch.no_grad():
        token_ids = caption()  # the warm-up call; greedy, so every call returns these ids
        # The first call also makes what stays for the process's life (kernels, caches, lazily
        # imported modules: ~30 MB at the tiny preset); the peak of the later calls is what each
        # further batch needs.
        first = meter.read()
        meter.reset()
        warm_bytes = meter.read()["current"]
        times = time_call(caption, device, sizes.repeats, warmup=0)
        selector_times = time_call(lambda: selector(frames, dtype=DTYPE), device, sizes.repeats, warmup=0)
    steady = meter.read()
    peak = max(first["peak"], steady["peak"])

    figures = {
        "variant": variant,
        "clips": len(clips),
        "weight_bytes": weight_bytes,
        "baseline_bytes": baseline,
        "generate_start_bytes": start_bytes,
        "first_call_peak_bytes": first["peak"],
        "warm_start_bytes": warm_bytes,
        "steady_peak_bytes": steady["peak"],
        "peak_bytes": peak,
        "peak_above_baseline_bytes": peak - baseline,
        "batch_s": times,
        "selector_batch_s": selector_times,
        "decode_s": decode_s,
        "token_ids": token_ids.tolist(),  # long [B, new_tokens]
        "captions": processor.decode(token_ids),
    }
    if "peak_reserved" in steady:
        figures["peak_reserved_bytes"] = max(first["peak_reserved"], steady["peak_reserved"])
    return figures


def measure_in_child(args: argparse.Namespace, child: str, root: Path, round_: int = 0) -> dict[str, Any]:
    """Run `child` ("prepare" or a variant) in a fresh Python process; returns a variant's figures
    (with the child's wall and CPU seconds), or {} for "prepare"."""
    out = root / f"{child}-{round_}.json"
    cmd = [
        sys.executable, "-m", "benchmarks.inference", "--device", args.device, "--preset", args.preset,
        *(["--quick"] if args.quick else []), "--root", str(root), "--child", child, "--child-out", str(out),
    ]  # fmt: skip
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(
            f"inference child {child!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    if child == "prepare":
        return {}
    figures = json.loads(out.read_text())
    figures["round"] = round_
    figures["process_s"] = time.perf_counter() - start
    figures["process_cpu_s"] = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    return figures


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's figures from its runs (one per round): times are medians over every timed
    call of every run, memory the median run's; the token ids are the first run's, and
    ``same_tokens_every_run`` says whether the others generated the same."""
    if not runs:
        raise ValueError("no runs to summarize")
    first, clips = runs[0], runs[0]["clips"]
    batch_s = statistics.median(t for run in runs for t in run["batch_s"])
    tokens = sum(len(row) for row in first["token_ids"])
    return {
        "variant": first["variant"],
        "quantization": QUANTIZATION[first["variant"]],
        "weight_bytes": first["weight_bytes"],
        "peak_above_baseline_bytes": statistics.median_low(r["peak_above_baseline_bytes"] for r in runs),
        # what a batch adds to the warm model: KV cache, activations, dequantized NF4 weights
        "batch_peak_bytes": statistics.median_low(
            r["steady_peak_bytes"] - r["warm_start_bytes"] for r in runs
        ),
        "batch_s": batch_s,
        "latency_per_clip_s": batch_s / clips,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / batch_s,
        "selector_s_per_clip": statistics.median(t for run in runs for t in run["selector_batch_s"]) / clips,
        "decode_s_per_clip": statistics.median(run["decode_s"] for run in runs) / clips,
        "token_ids": first["token_ids"],
        "captions": first["captions"],
        "same_tokens_every_run": all(run["token_ids"] == first["token_ids"] for run in runs),
        "runs": [{k: v for k, v in run.items() if k not in ("token_ids", "captions")} for run in runs],
    }


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of generated positions where two variants chose the same token (ids [B][T] each)."""
    pairs = [(x, y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True)]
    if not pairs:
        raise ValueError("no generated tokens to compare")
    return sum(x == y for x, y in pairs) / len(pairs)


def inference_ratios(per_variant: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The side-by-side ratios from the variants' summaries (`summarize`); unmerged bf16 is the
    reference of each."""
    missing = [v for v in VARIANTS if v not in per_variant]
    if missing:
        raise ValueError(f"inference ratios need every variant of {VARIANTS}; missing {missing}")
    bf16, nf4, merged = (per_variant[v] for v in VARIANTS)
    return {
        "nf4_over_bf16_peak": nf4["peak_above_baseline_bytes"] / bf16["peak_above_baseline_bytes"],
        "nf4_over_bf16_weights": nf4["weight_bytes"] / bf16["weight_bytes"],
        "nf4_over_bf16_latency": nf4["latency_per_clip_s"] / bf16["latency_per_clip_s"],
        "merged_over_unmerged_latency": merged["latency_per_clip_s"] / bf16["latency_per_clip_s"],
        "merged_over_unmerged_peak": merged["peak_above_baseline_bytes"] / bf16["peak_above_baseline_bytes"],
        # Shares of generated tokens equal to unmerged bf16's. Merged computes W + BA rounded to
        # bf16 once instead of Wx + BAx, so its logits differ by bf16 rounding (~0.05 at the tiny
        # preset) and greedy picks can part where a random-init model's top two logits are close;
        # NF4 changes the base weights themselves.
        "merged_token_agreement": token_agreement(merged["token_ids"], bf16["token_ids"]),
        "nf4_token_agreement": token_agreement(nf4["token_ids"], bf16["token_ids"]),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    device = torch.device(args.device)
    sizes = sizes_of(args.preset, args.quick)
    if args.child is not None:
        if args.root is None or args.child_out is None:
            raise SystemExit("--child needs --root and --child-out")
        if args.child == "prepare":
            prepare(args.root, args.preset, sizes)
        else:
            args.child_out.write_text(json.dumps(run_variant(args.child, args.root, sizes, device)))
        return
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else ROUNDS[args.preset])
    if rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {rounds}")

    with tempfile.TemporaryDirectory(prefix="inference-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        measure_in_child(args, "prepare", root)
        prepare_s = time.perf_counter() - start
        runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
        for round_, variant in run_order(list(VARIANTS), rounds):
            runs[variant].append(measure_in_child(args, variant, root, round_))
    per_variant = {variant: summarize(variant_runs) for variant, variant_runs in runs.items()}

    write_result(
        result_name(args.preset),
        device,
        config={
            "quick": args.quick,
            "preset": args.preset,
            **asdict(sizes),
            "rounds": rounds,
            "variants": {
                "bf16": "16-bit base + LoRA adapter, unmerged (peft)",
                "nf4": "NF4 + double quant base + the same adapter, unmerged (QLoRA)",
                "merged": "the adapter merged into the 16-bit weights (trainer.export, merge_and_unload)",
            },
            "dtype": str(DTYPE),
            "rank": RANK,
            "alpha": ALPHA,
            "policy": POLICY,
            "clips": f"SynthVid pretrain clips (seed {CLIP_SEED}, {CLIP_SOURCE_FRAMES} frames), H.264 mp4 "
            "files decoded by decord",
            "timed_call": "frame selector (K of N, scores included) + generate_caption_ids, greedy, "
            "eos held back",
            "memory_measure": measure_description(device),
            "ratio_figures": "peak_above_baseline_bytes (median run), latency_per_clip_s (median call)",
            "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "prepare_s": prepare_s,
        },
        figures=per_variant,
        ratios=inference_ratios(per_variant),
        out=args.out,
    )


if __name__ == "__main__":
    main()
