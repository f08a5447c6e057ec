"""How step time and step memory grow with frames per clip K and with batch size B (fitted slopes),
with and without frame selection and gradient checkpointing.

    python -m benchmarks.scaling --device cpu [--quick]

One process, one QLoRA model per checkpointing setting (NF4 base, LoRA r=16 on the ViT and LLM
linears, torch AdamW: the optimizer is the same for every point, so it only shifts the intercept).
A step is the trainer's: uint8 candidate frames [B, N=4K, 3, S, S] → `FrameSelector` (scores +
policy + normalization, on the device) → forward → backward → AdamW step. "selection" runs the
`hybrid` policy, "uniform" the `uniform` one; both compute the frame scores the temporal gates read,
so their difference is the policy's own cost.

Two sweeps: K at fixed B, and B at fixed K. At every point the four variants (selection x
checkpointing) run back to back, so load drift on a shared machine hits all of them alike. Per point:
the median step time over `repeats` steps, and the step's peak memory above the memory in use when it
started (activations, gradients, temporaries; CUDA: allocated bytes, CPU: RSS, see `benchmarks.memory`).
Slopes are least-squares lines through the points: seconds and bytes per frame, per sample.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

import numpy as np
import torch

from benchmarks.harness import parse_args, time_call, write_result
from benchmarks.memory import PeakMemory, measure_description
from benchmarks.workload import LARGER, candidate_frames, text_batch, write_checkpoint
from data.frame_selector import FrameSelector
from models.adapters import apply_adapter
from models.loading import load_model
from models.processor import VideoLlamaProcessor
from trainer.distributed import resolve_dtype

CANDIDATES_PER_KEPT = 4  # N = 4K candidate frames, as the demo's 16 → 4
POLICIES = {"selection": "hybrid", "uniform": "uniform"}


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", default=None, help="K values, comma-separated; default 2,4,8,16")
    parser.add_argument("--batch-sizes", default=None, help="B values, comma-separated; default 1,2,4,8")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per point; default 3")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float32")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def fit_line(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares y = intercept + slope * x, with R^2 (1 when every point lies on the line)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (intercept + slope * xs)
    spread = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


class StepRunner:
    """One training step of the trainer's shape for a given (B, K, policy) on a fixed model."""

    def __init__(self, model: Any, processor: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.image_size = model.config.vision_config.image_size

    def prepare(self, batch_size: int, frames: int, policy: str):
        """A zero-argument step for this point (inputs made once, outside the timed call)."""
        candidates = candidate_frames(batch_size, CANDIDATES_PER_KEPT * frames, self.image_size, self.device)
        text = text_batch(self.processor, batch_size, self.device)
        selector = FrameSelector(frames, policy)

        def step() -> None:
            selected = selector(candidates, dtype=self.dtype)
            out = self.model(pixel_values=selected.frames, frame_scores=selected.scores, **text)
            out.loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        return step


def measure_point(
    runners: dict[str, StepRunner], batch_size: int, frames: int, repeats: int, meter: PeakMemory
) -> dict[str, dict[str, float]]:
    """Every variant at one (B, K): median step seconds and peak bytes above the step's start."""
    steps = {
        f"{sel}/{ckpt}": runner.prepare(batch_size, frames, policy)
        for ckpt, runner in runners.items()
        for sel, policy in POLICIES.items()
    }
    result: dict[str, dict[str, float]] = {}
    for name, step in steps.items():
        time_call(step, meter.device, repeats=0, warmup=1)  # allocator and AdamW state at this size
        meter.reset()
        start = meter.read()["current"]
        step()
        result[name] = {"peak_bytes": float(meter.read()["peak"] - start)}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):  # round-robin over variants
        for name, step in steps.items():
            times[name] += time_call(step, meter.device, repeats=1, warmup=0)
    for name in steps:
        result[name]["step_s"] = statistics.median(times[name])
    return result


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    ks = _ints(args.frames) if args.frames else ([2, 4] if args.quick else [2, 4, 8, 16])
    bs = _ints(args.batch_sizes) if args.batch_sizes else ([1, 2] if args.quick else [1, 2, 4, 8])
    repeats = args.repeats or (1 if args.quick else 3)
    fixed_b, fixed_k = (1, 2) if args.quick else (2, 4)
    overrides = {} if args.quick else LARGER
    meter = PeakMemory(device)

    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        path = write_checkpoint("tiny", tmp, **overrides)
        processor = VideoLlamaProcessor.from_pretrained(path)
        runners = {}
        for ckpt, on in (("plain", False), ("checkpointing", True)):
            torch.manual_seed(0)
            base = load_model(path, quantization="nf4", compute_dtype=dtype, device=device)
            model = apply_adapter(base, "qlora", r=16, alpha=32, gradient_checkpointing=on).train()
            runners[ckpt] = StepRunner(model, processor, device, dtype)
        by_frames = {k: measure_point(runners, fixed_b, k, repeats, meter) for k in ks}
        by_batch = {b: measure_point(runners, b, fixed_k, repeats, meter) for b in bs}

    variants = list(next(iter(by_frames.values())))
    fits: dict[str, dict[str, Any]] = {}
    for name in variants:
        fits[name] = {}
        for axis, sweep in (("frames", by_frames), ("batch", by_batch)):
            xs = list(sweep)
            fits[name][axis] = {
                "step_s": fit_line(xs, [sweep[x][name]["step_s"] for x in xs]),
                "peak_bytes": fit_line(xs, [sweep[x][name]["peak_bytes"] for x in xs]),
            }

    def slope(name: str, axis: str, what: str) -> float:
        return fits[name][axis][what]["slope"]

    def median_ratio(sweep: dict, num: str, den: str, what: str) -> float:
        return statistics.median(point[num][what] / point[den][what] for point in sweep.values())

    ratios = {}
    for axis, sweep in (("frames", by_frames), ("batch", by_batch)):
        unit = "per_frame" if axis == "frames" else "per_sample"
        ratios[f"selection_over_uniform_step_time_{axis}_sweep"] = median_ratio(
            sweep, "selection/plain", "uniform/plain", "step_s"
        )
        ratios[f"checkpointing_over_plain_step_time_{axis}_sweep"] = median_ratio(
            sweep, "uniform/checkpointing", "uniform/plain", "step_s"
        )
        ratios[f"checkpointing_over_plain_{unit}_time_slope"] = slope(
            "uniform/checkpointing", axis, "step_s"
        ) / slope("uniform/plain", axis, "step_s")
        plain_mem = slope("uniform/plain", axis, "peak_bytes")
        if plain_mem > 0:
            ratios[f"checkpointing_over_plain_{unit}_memory_slope"] = (
                slope("uniform/checkpointing", axis, "peak_bytes") / plain_mem
            )
        # Cost of one more frame / sample relative to the step at the smallest point.
        smallest = sweep[min(sweep)]["uniform/plain"]["step_s"]
        ratios[f"uniform_plain_{unit}_time_slope_over_smallest_step"] = (
            slope("uniform/plain", axis, "step_s") / smallest
        )

    write_result(
        "scaling",
        device,
        config={
            "quick": args.quick,
            "model": "tiny" if args.quick else "tiny widened (benchmarks.workload.LARGER)",
            "model_overrides": overrides,
            "method": "qlora (nf4), r=16, torch AdamW",
            "dtype": str(dtype),
            "frames_sweep": {"k": ks, "batch_size": fixed_b},
            "batch_sweep": {"batch_size": bs, "k": fixed_k},
            "candidates_per_kept_frame": CANDIDATES_PER_KEPT,
            "policies": POLICIES,
            "repeats": repeats,
            "memory_measure": measure_description(device),
        },
        figures={
            "by_frames": {str(k): v for k, v in by_frames.items()},
            "by_batch": {str(b): v for b, v in by_batch.items()},
            "fits": fits,
        },
        ratios=ratios,
        out=args.out,
    )


if __name__ == "__main__":
    main()
