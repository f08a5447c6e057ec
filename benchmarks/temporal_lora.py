"""Temporal and ranked LoRA step time against plain LoRA: same model, same batch, same rank budget.

One training step = forward + backward + AdamW step, on a Video-LLaMA loaded in NF4 (QLoRA) with
LoRA on the ViT and LLM linears; temporal LoRA gates the ViT linears per frame from the frame
scores (and, in another variant, from the pooled frame feature too, and in rank mode); ranked LoRA
splits QLoRA's parameter count over the towers by rank. The methods' steps are interleaved round by
round so machine load drifts hit all alike; the figure is the median over rounds of the paired
ratio variant / plain (goal <= 1.10).

Ranked LoRA spreads its ranks over the two Q-Formers as well as the ViT and the LLM, so its ratio
holds two costs: LoRA on the fusion layers (which QLoRA on `adapter.placement=all` pays too,
``lora_all_over_lora``) and the uneven ranks themselves (``ranked_over_lora_all``: ranked against
QLoRA at r on the same four towers). At QLoRA's count static_llm gives the ViT and the Q-Formers
ranks 6-8 (the LLM 26), and MKL's fp32 GEMM ran LoRA B's backward products 3-10x slower at r <= 8
than the same products transposed; `models.low_rank_matmul` computes them transposed. On a quiet
2-core AVX2 CPU, 32 rounds: ranked over QLoRA 1.07-1.10x in three runs (without it 1.14x that day,
1.08-1.14x in four earlier runs of 16 rounds), of which fusion LoRA 1.02-1.06x and the uneven ranks
1.04-1.06x (1.12x without).

    python -m benchmarks.temporal_lora --device cpu [--quick]
"""

from __future__ import annotations

import statistics
import tempfile

import torch

from benchmarks.harness import parse_args, time_call, write_result
from benchmarks.workload import LARGER
from data.synthvid import caption_corpus
from models.adapters import apply_adapter
from models.loading import load_model
from models.presets import create_pretrained
from models.processor import VideoLlamaProcessor

# name → (method, its adapter options beyond r and alpha)
VARIANTS = {
    "lora": ("qlora", {}),
    "temporal_scale": (
        "temporal_qlora",
        {"gate": {"inputs": ["motion", "entropy", "scene_change"], "mode": "scale"}},
    ),
    # Per-tower ranks at QLoRA's parameter count (the static LLM-heavy split: no scores to measure).
    "ranked": ("ranked_qlora", {"allocation": "static_llm"}),
    "temporal_feature_rank": (
        "temporal_qlora",
        {"gate": {"inputs": ["motion", "entropy", "feature"], "mode": "rank"}},
    ),
    # QLoRA on the towers ranked LoRA spreads its ranks over: the reference of ranked_over_lora_all.
    "lora_all": ("qlora", {"placement": "all"}),
}
# Extra paired ratios: name → (variant, reference variant).
AGAINST = {"ranked_over_lora_all": ("ranked", "lora_all")}


def _batch(processor, batch_size: int, frames: int, size: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    captions = caption_corpus()[:batch_size]
    tokens = processor.pad([processor.training_example(c) for c in captions])
    return {
        "pixel_values": torch.randn(batch_size, frames, 3, size, size, generator=gen).to(device),
        "frame_scores": torch.rand(batch_size, frames, 3, generator=gen).to(device),
        **{k: v.to(device) for k, v in tokens.items()},
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch_size, frames, rounds = (2, 4, 4) if args.quick else (4, 8, 32)
    overrides = {} if args.quick else LARGER
    size = 64 if args.quick else LARGER["vision_config"]["image_size"]

    with tempfile.TemporaryDirectory() as tmp:
        path = create_pretrained("tiny", tmp, caption_corpus(), seed=0, **overrides)
        processor = VideoLlamaProcessor.from_pretrained(path)
        batch = _batch(processor, batch_size, frames, size, device)
        steps = {}
        # --quick: the gated variant the config example uses and the ranked one; the full run adds
        # feature gates in rank mode and QLoRA on every tower.
        variants = dict(list(VARIANTS.items())[:3]) if args.quick else VARIANTS
        for name, (method, options) in variants.items():
            torch.manual_seed(0)
            base = load_model(path, quantization="nf4", compute_dtype=dtype, device=device)
            model = apply_adapter(base, method, r=16, alpha=32, **options).train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

            def step(model=model, optimizer=optimizer) -> None:
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            steps[name] = step

        times: dict[str, list[float]] = {name: [] for name in steps}
        for step in steps.values():  # warm-up: allocator, AdamW state
            time_call(step, device, repeats=0, warmup=1)
        for _ in range(rounds):
            for name, step in steps.items():
                times[name].extend(time_call(step, device, repeats=1, warmup=0))

    median = {name: statistics.median(t) for name, t in times.items()}
    minimum = {name: min(t) for name, t in times.items()}
    # Paired per round (the two steps ran back to back, under the same machine load), then the median:
    # the figure least moved by other processes on a shared machine.
    pairs = {f"{name}_over_lora": (name, "lora") for name in times if name != "lora"}
    pairs |= {name: pair for name, pair in AGAINST.items() if set(pair) <= set(times)}
    paired = {
        name: statistics.median(a / b for a, b in zip(times[variant], times[ref], strict=True))
        for name, (variant, ref) in pairs.items()
    }
    write_result(
        "temporal_lora",
        device,
        config={
            "quick": args.quick,
            "batch_size": batch_size,
            "frames": frames,
            "image_size": size,
            "rank": 16,
            "quantization": "nf4",
            "dtype": str(dtype),
            "rounds": rounds,
            "model_overrides": overrides,
        },
        figures={
            "step_s_median": median,
            "step_s_min": minimum,
            "step_s_all": times,
            "ratio_of_medians": {name: median[v] / median[ref] for name, (v, ref) in pairs.items()},
            "ratio_of_minima": {name: minimum[v] / minimum[ref] for name, (v, ref) in pairs.items()},
        },
        ratios={f"{name}_step_time": ratio for name, ratio in paired.items()},
        out=args.out,
    )


if __name__ == "__main__":
    main()
