"""Write the README's Performance section from the benchmark results.

    python -m benchmarks.report [--results benchmarks/results] [--readme README.md]

Reads every ``<results>/*.json`` written by `benchmarks.harness.write_result` and replaces what lies
between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in the README (nothing else is touched):
first the goals the issues set, with the measured ratio per device and whether it is met; then one
table per result with its ratios, the device and the date of the run, and a plot where a result has
curves to show (`benchmarks.plots`, written next to its JSON). Timings are side-by-side
ratios from one run; absolute seconds are listed only for GPU runs, where they mean something to a
reader with the same GPU. The output depends only on the JSON files, so running it twice changes
nothing.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.plots import PLOTTERS
from trainer.experiments.readme_markers import replace_between_markers

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"  # as benchmarks.harness, without importing torch for a README
REQUIRED_KEYS = ("benchmark", "created", "machine", "config", "figures", "ratios")
MAX_TIME_ROWS = 24  # absolute-time rows per GPU result; the JSON has them all


@dataclass(frozen=True)
class Goal:
    """A ratio the issues set a bound on: ``at_most`` or ``at_least`` (one of the two)."""

    benchmark: str
    ratio: str
    what: str
    at_most: float | None = None
    at_least: float | None = None

    def bound(self) -> str:
        return f"≤ {self.at_most:g}" if self.at_most is not None else f"≥ {self.at_least:g}"

    def met(self, value: float) -> bool:
        return value <= self.at_most if self.at_most is not None else value >= self.at_least

    def shown(self, value: float) -> str:
        """The measured value and ✓ / ✗, with as many digits as it takes not to read as the bound
        itself (1.1006 against ≤ 1.1 is "1.101 ✗", not "1.1 ✗")."""
        limit = self.at_most if self.at_most is not None else self.at_least
        digits = 3
        while value != limit and float(f"{value:.{digits}g}") == limit and digits < 8:
            digits += 1
        return f"{value:.{digits}g} {'✓' if self.met(value) else '✗'}"


GOALS = (
    Goal("train_memory_1b", "1b/qlora_over_lora_step_peak", "QLoRA step peak memory / LoRA's, ~1B preset", at_most=0.5),
    Goal("train_memory_1b_bfloat16", "1b/qlora_over_lora_step_peak", "the same in bf16, the GPU runs' dtype (issue #22: 0.40)", at_most=0.40),
    Goal("train_memory_1b_bfloat16", "1b/qlora_over_lora_step_tensor_peak", "the same by tensor bytes (CPU counterpart of CUDA's allocated)", at_most=0.40),
    Goal("train_memory_1b_bfloat16_checkpointed_fusion_quantized", "1b/qlora_over_lora_step_peak", "the same, both checkpointing every tower, QLoRA's frozen Q-Formers in NF4 too (`{fusion: nf4}`)", at_most=0.40),
    Goal("train_memory_1b_bfloat16_checkpointed_fusion_quantized", "1b/qlora_over_lora_step_tensor_peak", "the same by tensor bytes", at_most=0.40),
    Goal("train_memory_1b_bfloat16_checkpointed_fusion_quantized", "1b/qlora_checkpointed_over_not_step_cpu_time", "QLoRA step CPU time, every tower checkpointed / none (one thread)", at_most=1.10),
    Goal("train_memory_1b_bfloat16_checkpointed_vision_fusion_quantized", "1b/qlora_over_lora_step_peak", "QLoRA / LoRA step peak, only the ViT checkpointed, Q-Formers in NF4", at_most=0.40),
    Goal("train_memory_1b_bfloat16_checkpointed_vision_fusion_quantized", "1b/qlora_over_lora_step_tensor_peak", "the same by tensor bytes", at_most=0.40),
    Goal("train_memory_1b_bfloat16_checkpointed_vision_fusion_quantized", "1b/qlora_checkpointed_over_not_step_cpu_time", "QLoRA step CPU time, ViT checkpointed / not (one thread)", at_most=1.10),
    Goal("train_memory_1b_bfloat16_checkpointed_vision_fusion_quantized", "1b/qlora_over_plain_qlora_step_cpu_time", "QLoRA step CPU time with both / plain QLoRA's (two threads, separate processes, under the RSS meter)", at_most=1.10),
    Goal("train_memory_1b_bfloat16_checkpointed_paged_adamw_8bit_fusion_quantized", "1b/qlora_over_lora_step_peak", "QLoRA / LoRA step peak, every tower checkpointed, Q-Formers in NF4, paged 8-bit AdamW (on CPU its step dequantizes the whole partition)", at_most=0.40),
    Goal("train_memory_optimizers_1b_bfloat16", "1b/paged_adamw_8bit_over_adamw_optimizer_state", "paged 8-bit AdamW optimizer state / AdamW's, QLoRA ~1B preset", at_most=0.3),
    Goal("train_memory_optimizers_1b_bfloat16", "1b/paged_adamw_8bit_over_adamw_step_peak", "paged 8-bit AdamW step peak memory / AdamW's, QLoRA ~1B preset", at_most=1.0),
    Goal("train_memory_optimizers_1b_bfloat16", "1b/offload_over_adamw_step_peak", "CPU-offload AdamW step peak memory / AdamW's, QLoRA ~1B preset", at_most=1.0),
    Goal("step_overhead", "ours_vs_bare", "our training step time / a bare peft + bitsandbytes loop", at_most=1.05),
    Goal("step_overhead", "tracking_cpu_share", "MLflow tracking CPU time / step time", at_most=0.01),
    Goal("temporal_lora", "temporal_scale_over_lora_step_time", "temporal LoRA step time / LoRA's", at_most=1.10),
    Goal("temporal_lora", "ranked_over_lora_step_time", "ranked LoRA (per-tower ranks, QLoRA's count) step time / LoRA's", at_most=1.10),
    Goal("temporal_lora", "ranked_over_lora_all_step_time", "ranked LoRA step time / LoRA's on the same towers (placement all)", at_most=1.10),
    Goal("pipeline", "pipeline_over_raw_decord", "streaming pipeline frames/s / raw decord's", at_least=0.9),
    Goal("frame_selection", "selector_over_decode/hybrid", "frame selector time / decode time, per frame", at_most=0.05),
    Goal("frame_selection", "event_recall/hybrid", "events with a selected frame, hybrid K=4 of N=32", at_least=0.95),
    Goal("frame_selection", "real_shot_coverage_k1x/hybrid", "real-footage shots with a kept frame, hybrid K = #shots of N=64", at_least=0.90),
    Goal("frame_selection", "real_shot_coverage_k1x/hybrid_over_pyscenedetect_defaults", "the same / PySceneDetect's (best of Content, Adaptive at their defaults)", at_least=1.0),
    Goal("threads", "default_over_best", "demo step time, default threads / best of 1 and 2 per process", at_most=1.05),
    Goal("inference", "merged_over_unmerged_latency", "captioning latency, LoRA merged / unmerged, tiny preset", at_most=1.0),
    Goal("inference_1b", "merged_over_unmerged_latency", "the same, ~1B preset", at_most=1.0),
    Goal("inference_1b", "nf4_over_bf16_peak", "captioning peak memory, NF4 base / bf16 base (+ LoRA), ~1B preset", at_most=0.5),
)  # fmt: skip

# The GPU check's figures (benchmarks.gpu_check `ratios`) with the CPU result and ratio that measure
# the same thing, for the rows that set them side by side; None: no CPU counterpart.
GPU_CHECK_ROWS = (
    ("nf4_forward_rel_error", "NF4 + DQ layer vs its dequantized reference, relative error", None),
    ("checkpointing_worst_grad_rel_error", "temporal QLoRA gradients, checkpointed vs not, worst relative error", None),
    ("selector_frames_per_s", "frame selector frames/s, hybrid, N=64 at 224²", None),
    ("mid_qlora_over_lora_step_peak", "QLoRA / LoRA step peak, ~1B preset, bf16", ("train_memory_1b_bfloat16", "1b/qlora_over_lora_step_peak")),
    ("mid_qlora_step_peak_gb", "QLoRA step peak GB, ~1B preset, bf16", None),
    ("mid_recipe_qlora_over_lora_step_peak", "the same, both checkpointed with paged 8-bit AdamW, QLoRA's Q-Formers in NF4 (goal ≤ 0.40)", ("train_memory_1b_bfloat16_checkpointed_paged_adamw_8bit_fusion_quantized", "1b/qlora_over_lora_step_peak")),
    ("large_qlora_over_lora_step_peak", "QLoRA / LoRA step peak, 7B-shaped, 8 frames x batch 4 (VideoLLaMA2 on A100: 36/44 = 0.82)", None),
    ("large_qlora_step_peak_gb", "QLoRA step peak GB, 7B-shaped (goal ≤ 24; VideoLLaMA2: 36)", None),
    ("large_lora_step_peak_gb", "LoRA step peak GB, 7B-shaped (VideoLLaMA2: 44)", None),
    ("large_qlora_step_time_s", "QLoRA step time s, 7B-shaped", None),
    ("large_qlora_tokens_per_s", "QLoRA tokens/s, 7B-shaped", None),
    ("large_qlora_mfu_measured_peak", "QLoRA MFU of the 790 TFLOP/s measured peak, 7B-shaped", None),
    ("decode_frames_per_s", "pipeline decode frames/s, 16 workers, 224²", None),
)  # fmt: skip


def result_stem(benchmark: str, device: str) -> str:
    """File name, without suffix, of `benchmark`'s result on `device` ("cuda:0" → ``<benchmark>-cuda``):
    the JSON `benchmarks.harness.write_result` writes and the plot drawn from it."""
    return f"{benchmark}-{device.split(':')[0]}"


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every result JSON in `folder`, sorted by benchmark then device; a file that is not a result
    raises ValueError naming it."""
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        missing = [k for k in REQUIRED_KEYS if not isinstance(result, dict) or k not in result]
        if missing:
            raise ValueError(f"{path}: not a benchmark result, missing {', '.join(missing)}")
        results.append(result)
    return sorted(results, key=lambda r: (r["benchmark"], r["machine"].get("device", "")))


def describe(benchmark: str) -> str:
    """First docstring paragraph of the script that wrote `benchmark` (``train_memory_1b`` →
    train_memory.py), on one line."""
    parts = benchmark.split("_")
    for end in range(len(parts), 0, -1):
        script = BENCH_DIR / f"{'_'.join(parts[:end])}.py"
        if script.is_file():
            doc = (ast.get_docstring(ast.parse(script.read_text())) or "").strip()
            return " ".join(doc.split("\n\n")[0].split())
    return ""


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"`{value}`"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _times(figures: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, seconds) for every numeric figure whose key says seconds (``*_s``, ``*_s_*``)."""
    rows: list[tuple[str, float]] = []
    if isinstance(figures, dict):
        for key, value in figures.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                rows += _times(value, name + ".")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if key.endswith("_s") or "_s_" in key:
                    rows.append((name, float(value)))
    return rows


def render_goals(results: list[dict[str, Any]]) -> str:
    """A table of `GOALS`: one column per device that measured any of them, value and ✓ / ✗."""
    value = {
        (r["benchmark"], r["machine"].get("device", "?"), k): v
        for r in results
        for k, v in r["ratios"].items()
    }
    devices = sorted({device for (_, device, _) in value})
    rows = []
    for goal in GOALS:
        cells = []
        for device in devices:
            measured = value.get((goal.benchmark, device, goal.ratio))
            cells.append("" if measured is None else goal.shown(measured))
        if any(cells):
            rows.append(
                f"| {goal.what} | `{goal.benchmark}` `{goal.ratio}` | {goal.bound()} | {' | '.join(cells)} |"
            )
    if not rows:
        return ""
    head = [
        "### Goals",
        "",
        f"| | ratio | goal | {' | '.join(devices)} |",
        "|---|---|---|" + "---|" * len(devices),
    ]
    return "\n".join(head + rows)


def render_result(result: dict[str, Any], plot: Path | None = None) -> str:
    """Markdown for one result: heading, where it ran, the ratio table (and times on GPU), and
    `plot` (a path relative to the README) if given."""
    machine = result["machine"]
    device = machine.get("device", "?")
    name = result["benchmark"]
    lines = [f"### {name} — {device}", ""]
    description = describe(name)
    if description:
        lines += [description, ""]
    quick = " (`--quick` sizes)" if result["config"].get("quick") else ""
    lines += [
        f"{machine.get('device_name', '?')}, {machine.get('cpu_count', '?')} CPUs, torch "
        f"{machine.get('torch', '?')}, run {result['created'][:10]}{quick}, commit "
        f"`{str(machine.get('git_commit', '?'))[:8]}`.",
        "",
        "| ratio | value |",
        "|---|---|",
    ]
    lines += [f"| `{key}` | {_number(value)} |" for key, value in result["ratios"].items()]
    if not result["ratios"]:
        lines.append("| (none) | |")
    if str(device).startswith("cuda"):
        times = _times(result["figures"])
        if times:
            lines += ["", "| time (GPU) | seconds |", "|---|---|"]
            lines += [f"| `{key}` | {value:.4g} |" for key, value in times[:MAX_TIME_ROWS]]
    if plot is not None:
        lines += ["", f"![{name} on {device}]({plot.as_posix()})"]
    return "\n".join(lines)


def write_plots(results: list[dict[str, Any]], results_dir: Path, readme_dir: Path) -> list[Path | None]:
    """Per result, the plot `benchmarks.plots` draws for its benchmark (``<results_dir>/<benchmark>-
    <device type>.png``), as a path relative to `readme_dir`; None where there is none."""
    paths: list[Path | None] = []
    for result in results:
        plotter = PLOTTERS.get(result["benchmark"])
        device = str(result["machine"].get("device", "cpu"))
        png = results_dir / f"{result_stem(result['benchmark'], device)}.png"
        drawn = plotter is not None and plotter(result, png)
        paths.append(Path(os.path.relpath(png, readme_dir)) if drawn else None)
    return paths


def render_gpu_check(results: list[dict[str, Any]]) -> str:
    """The GPU check's rows (`GPU_CHECK_ROWS`) from its CUDA results (``gpu_check``, ``gpu_check_decode``),
    each beside its CPU counterpart where one was measured, and the parts that failed; "" without any."""
    gpu = [
        r
        for r in results
        if r["benchmark"].startswith("gpu_check") and str(r["machine"].get("device", "")).startswith("cuda")
    ]
    if not gpu:
        return ""
    measured = {k: (v, r) for r in gpu for k, v in r["ratios"].items()}
    cpu = {
        (r["benchmark"], k): v
        for r in results
        if r["machine"].get("device") == "cpu"
        for k, v in r["ratios"].items()
    }
    names = sorted(
        {
            f"{r['machine'].get('device_name', '?')}, torch {r['machine'].get('torch', '?')}, run {r['created'][:10]}"
            for r in gpu
        }
    )
    lines = ["### GPU check", "", f"`make gpu-check` on {'; '.join(names)} (absolute figures).", "",
             "| figure | GPU | CPU counterpart | CPU |", "|---|---|---|---|"]  # fmt: skip
    for key, what, counterpart in GPU_CHECK_ROWS:
        if key not in measured:
            continue
        cpu_cells = "| |"
        if counterpart is not None and counterpart in cpu:
            cpu_cells = f"| `{counterpart[0]}` `{counterpart[1]}` | {_number(cpu[counterpart])} |"
        lines.append(f"| {what} | {_number(measured[key][0])} {cpu_cells}")
    failed = [f"`{name}`: {part.get('error') or ', '.join(part.get('failed_checks', []))}"
              for r in gpu for name, part in r["figures"].items() if isinstance(part, dict) and not part.get("ok", True)]  # fmt: skip
    if failed:
        lines += ["", "Failed parts: " + "; ".join(failed) + "."]
    return "\n".join(lines)


def render_section(results: list[dict[str, Any]], plots: list[Path | None] | None = None) -> str:
    """The text that goes between the markers."""
    head = [
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json` (`make bench` runs "
        "the CPU set, then this). Timings are ratios of variants measured side by side in one run on "
        "the machine named; absolute times are shown only for GPU runs. Full figures and configuration "
        "are in the JSON files.",
    ]
    if not results:
        head += ["", "No results yet: run `make bench`."]
    goals = render_goals(results)
    gpu_check = render_gpu_check(results)
    body = [render_result(r, p) for r, p in zip(results, plots or [None] * len(results), strict=True)]
    return "\n\n".join(
        ["\n".join(head), *([goals] if goals else []), *([gpu_check] if gpu_check else []), *body]
    )


def update_readme(readme: Path, results_dir: Path) -> bool:
    """Rewrite `readme`'s Performance section from `results_dir`; returns whether the file changed."""
    old = readme.read_text()
    replace_between_markers(old, "", START, END, str(readme))  # no markers: fail before drawing
    results = load_results(results_dir)
    section = render_section(results, write_plots(results, results_dir, readme.resolve().parent))
    new = replace_between_markers(old, section, START, END, str(readme))
    if new != old:
        readme.write_text(new)
    return new != old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of result JSON files")
    parser.add_argument("--readme", type=Path, default=README, help="README with the bench markers")
    args = parser.parse_args()
    try:
        changed = update_readme(args.readme, args.results)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"benchmarks.report: {exc}") from exc
    print(f"{args.readme}: Performance section {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
