"""Peak memory of one training step per method (full, lora, qlora, temporal_qlora, …), same model and batch;
with --optimizers, step peak, time and optimizer state per optimizer (AdamW, 8-bit, paged, offload).

    python -m benchmarks.train_memory --device cpu [--quick] [--preset tiny|1b] [--methods lora,qlora]
        [--gradient-checkpointing [TOWERS]] [--optimizer adamw_8bit] [--quantize-fusion]
    python -m benchmarks.train_memory --device cpu --preset 1b \
        --optimizers adamw,adamw_8bit,paged_adamw_8bit,offload

Each method runs in its own child process, so one method's allocations (and the allocator's cached
memory) cannot inflate another's peak. A child:

1. imports everything (torch, DeepSpeed, bitsandbytes, peft, the model code) and records the memory
   in use: the *baseline* (on CPU the RSS of the Python runtime and libraries, on CUDA ~0);
2. loads the checkpoint in the method's declared weight format (`models.methods`: 16-bit/fp32 for
   full and lora, NF4 + double quant for the qlora methods, int8 for qlora8) and sets up the method
   with `models.adapters.apply_adapter`; the weights are copied out of the memory-mapped
   checkpoint (`benchmarks.memory.materialize_weights`) so that they count in full;
3. wraps it with `deepspeed.initialize` and ``ds_configs/zero2.json`` (ZeRO-2, no offload), the
   config filled by the trainer's own `trainer.ds_config.load_ds_config`: the trainer's path, so the
   step's memory includes what a real step holds — AdamW's two fp32 moments (8 B per trained
   parameter: every parameter for full fine-tuning), ZeRO's fp32 partition of the trained parameters and its gradient
   buckets — rather than what a bare torch AdamW would hold. Offload is left out because it moves
   exactly the optimizer memory being compared to the host (on CPU: to the same memory);
4. resets the peak (loading NF4 from a 16-bit checkpoint passes through the 16-bit weights, which is
   a property of the checkpoint, not of the step) and runs ``--steps`` steps (default 3): forward,
   backward, optimizer step. The peak is over all of them: from the second step on, forward and
   backward run with the optimizer state held, as in every step of a real run.

With ``--gradient-checkpointing`` every method recomputes the activations of every ViT / Q-Former /
LLM layer in backward (``model.gradient_checkpointing``), or only those of the towers named
(``--gradient-checkpointing vision``: `models.checkpointing`), and qlora runs once more without it:
what checkpointing saves. What it costs is timed in one more qlora child, after its measured steps,
by `ALTERNATE_STEPS` pairs of steps with it off and on in turn (CPU seconds, medians; on CPU with
OMP_NUM_THREADS=1, whose CPU seconds do not include OpenMP's spinning). That child measures no
memory: on CPU the RSS meter maps every allocation above 1 MiB afresh (`benchmarks.memory`), and
the page faults count as CPU seconds, in favour of whatever allocates less. The other children's
step times include them: their ratios compare the methods under that meter.

``--optimizer`` trains every method with one `train.optimizer` (default adamw), so that both sides of
a ratio hold the same optimizer state; ``--quantize-fusion`` stores the frozen Q-Formers of the
quantized methods in their format too (``model.quantization={fusion: auto}``; the 16-bit methods
are unchanged). Each is added to the result's name, and qlora then also runs plain (AdamW, 16-bit
Q-Formers, no checkpointing): ``qlora_over_plain_qlora_step_peak`` / ``_step_cpu_time`` say what all
the reductions together save and cost.

Reported per method: the absolute peak (whole process, load included), the baseline, the step's peak
above the baseline (the figure the ``_step_peak`` ratios use) and its parts that can be counted
exactly (weights, trained parameters, optimizer state). On CPU these memory figures are RSS (see
`benchmarks.memory`); on CUDA `torch.cuda.max_memory_allocated` / `_reserved`. On CPU one more step
after the measured ones runs under torch's profiler for the bytes tensors hold
(`benchmarks.memory.tensor_step_peak`: ``step_start_tensor_bytes``, ``step_tensor_peak_bytes``), the
CPU counterpart of CUDA's allocated bytes, which the ``_step_tensor_peak`` ratios use; its time is
not kept. The issue's goal: qlora <= 0.5 x lora at 1b.

``--optimizers`` compares optimizers instead, for one method (``--methods``, default qlora): each
name is a `train.optimizer` choice under ``ds_configs/zero2.json`` (the bitsandbytes ones built by
the trainer's `trainer.optimizers.client_optimizer`), or ``offload``: DeepSpeed's AdamW under
``ds_configs/zero2_offload.json`` (ZeRO-Offload, the demo's). Each runs ``--steps`` steps (default
3): the optimizer state is created in the first step's ``engine.step()``, after backward has freed
the activations, so only a later step's forward and backward run with the state held. The peak is
over all steps, the step time (wall, and CPU seconds of the process) the median of the steps after
the first. Ratios are to ``adamw``: step peak, step time, step CPU time and the optimizer state's
bytes. On CPU "paged" falls back to ordinary memory (bitsandbytes warns), and offload moves the
state into the same memory, so there both differ from plain AdamW only by their code paths; on
CUDA paged state is CUDA unified memory, which `torch.cuda.max_memory_allocated` does not count
(the driver pages it out under pressure), and offloaded state is host memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import parse_args, write_result
from benchmarks.memory import materialize_weights, measure_description

# The methods compared (`models.methods` names); each is loaded in its declared weight format.
VARIANTS = ("full", "lora", "qlora", "temporal_qlora", "qlora8")
DEFAULT_VARIANTS = VARIANTS
# Full fine-tuning in fp32 under ZeRO-2 holds ~20 B per parameter before activations: weights 4,
# gradients 4, ZeRO's fp32 partition 4, AdamW moments 8 (bf16: 2 + 2 + 4 + 8 = 16).
FULL_BYTES_PER_PARAM = 20
# (batch size, frames K) per preset: 1b at one clip, as a 24 GiB machine or a consumer GPU would run it.
# 7b: VideoLLaMA2's published memory anchor (8 frames, batch 4; benchmarks.gpu_check).
BATCH = {"tiny": (2, 4), "1b": (1, 4), "7b": (4, 8)}
DS_CONFIG = "ds_configs/zero2.json"
RANK, ALPHA = 16, 32
# --optimizers: name → (train.optimizer, DeepSpeed JSON); the ratios are to the first.
OPTIMIZER_VARIANTS = {
    "adamw": ("adamw", DS_CONFIG),
    "adamw_8bit": ("adamw_8bit", DS_CONFIG),
    "paged_adamw": ("paged_adamw", DS_CONFIG),
    "paged_adamw_8bit": ("paged_adamw_8bit", DS_CONFIG),
    "offload": ("adamw", "ds_configs/zero2_offload.json"),
}
# Steps per child: the optimizer state is created in the first step's ``engine.step()``, after
# backward has freed the activations, so only the later steps run forward and backward with it
# held, as every step of a real run does (at the 1b preset in bf16 the QLoRA peak is 1.11x the
# first step's). Peaks are over all steps, step times the median of the steps after the first.
STEPS = 3
# With --gradient-checkpointing, a qlora child of its own runs this many pairs of steps with
# checkpointing off and on in turn, for its cost in CPU time measured under one and the same load.
ALTERNATE_STEPS = 6
# (ratio name, figure it divides) of the ratios between two children: RSS step peak, tensor peak
# (CPU only), step CPU seconds.
RATIO_FIGURES = (
    ("step_peak", "step_peak_above_baseline_bytes"),
    ("step_tensor_peak", "step_tensor_peak_bytes"),
    ("step_cpu_time", "step_cpu_s"),
)


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", choices=sorted(BATCH))
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated names from {sorted(VARIANTS)}; default {','.join(DEFAULT_VARIANTS)}",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default per preset: tiny 2, 1b 1")
    parser.add_argument("--frames", type=int, default=None, help="frames K per clip; default 4")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float32")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use this saved base model")
    parser.add_argument(
        "--optimizers",
        default=None,
        help=f"compare these optimizers (from {','.join(OPTIMIZER_VARIANTS)}; adamw required) for one method",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps per variant; default {STEPS}",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        nargs="?",
        const="all",
        default=None,
        metavar="TOWERS",
        help="every method with gradient checkpointing (model.gradient_checkpointing) of every tower, or of "
        "the comma-separated towers / groups given (e.g. vision), and qlora also without it (the memory "
        "saved) and in alternate steps with it off and on (the time)",
    )
    parser.add_argument(
        "--optimizer",
        default="adamw",
        choices=[name for name in OPTIMIZER_VARIANTS if name != "offload"],
        help="the train.optimizer every method trains with (ZeRO-2, no offload)",
    )
    parser.add_argument(
        "--quantize-fusion",
        action="store_true",
        help="the quantized methods store the frozen Q-Formers in their format too ({fusion: auto})",
    )
    parser.add_argument(
        "--count-flops",
        action="store_true",
        help="also count one forward + backward's FLOPs (trainer.flops) and the attended tokens per step, for MFU",
    )
    parser.add_argument(
        "--torch-adam",
        action="store_true",
        help="DeepSpeed's AdamW as torch's (optimizer.params.torch_adam): no FusedAdam op to build",
    )
    # Internal: run one method (with one optimizer) in this process and write its figures to --child-out.
    parser.add_argument("--child-optimizer", default="adamw", help=argparse.SUPPRESS)
    parser.add_argument("--child-checkpointing", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--alternate-steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)


def available_variants(requested: str | None) -> list[str]:
    """The variants to run: `requested` (all must be known), or the defaults."""
    if requested is None:
        return list(DEFAULT_VARIANTS)
    names = [n.strip() for n in requested.split(",") if n.strip()]
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"--methods: unknown method {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return names


def available_optimizers(requested: str) -> list[str]:
    """The `OPTIMIZER_VARIANTS` named in `requested` (adamw among them: the ratios are to it)."""
    names = [n.strip() for n in requested.split(",") if n.strip()]
    for name in names:
        if name not in OPTIMIZER_VARIANTS:
            raise SystemExit(
                f"--optimizers: unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_VARIANTS)}"
            )
    if "adamw" not in names:
        raise SystemExit("--optimizers must include adamw: the ratios are to it")
    return names


def checkpointing_setting(towers: str | None) -> bool | tuple[str, ...]:
    """`model.gradient_checkpointing` from ``--gradient-checkpointing``'s value: None → False,
    "all" → True, "vision,llm" → ("vision", "llm"); an unknown tower exits naming the valid ones."""
    if not towers:
        return False
    if towers == "all":
        return True
    from models.towers import checkpointed_towers

    names = tuple(n.strip() for n in towers.split(",") if n.strip())
    try:
        checkpointed_towers(names)
    except ValueError as err:
        raise SystemExit(f"--{err}") from None
    return names


def quantization_of(method: str, quantize_fusion: bool = False) -> str | dict[str, str]:
    """The `models.loading` quantization `method` trains on: its declared default weight format; with
    `quantize_fusion`, a quantized method's Q-Formers in that format too."""
    from models.methods import adapter_method
    from models.weight_formats import FULL_PRECISION, canonical, tower_formats

    fmt = adapter_method(method).weight_format
    if not quantize_fusion or fmt == FULL_PRECISION:
        return fmt
    return canonical(tower_formats({"fusion": "auto"}, default=fmt))


def result_name(
    preset: str,
    dtype: str,
    optimizers: bool = False,
    checkpointing: str | None = None,
    optimizer: str = "adamw",
    quantize_fusion: bool = False,
) -> str:
    """``train_memory`` for the tiny preset, ``train_memory_1b`` for 1b; a dtype other than auto is
    added (``train_memory_1b_bfloat16``), so a bf16 run on CPU does not replace the default one, and
    so are gradient checkpointing (``train_memory_1b_bfloat16_checkpointed`` for every tower,
    ``…_checkpointed_vision`` for the towers given, `checkpointing_setting`), an optimizer other
    than adamw (``…_adamw_8bit``) and quantized Q-Formers (``…_fusion_quantized``).
    The optimizer comparison is ``train_memory_optimizers`` (``train_memory_optimizers_1b``, …)."""
    name = "train_memory_optimizers" if optimizers else "train_memory"
    name = name if preset == "tiny" else f"{name}_{preset}"
    name = name if dtype == "auto" else f"{name}_{dtype}"
    if checkpointing:
        towers = checkpointing_setting(checkpointing)
        name = f"{name}_checkpointed" if towers is True else "_".join((f"{name}_checkpointed", *towers))
    name = name if optimizer == "adamw" else f"{name}_{optimizer}"
    return f"{name}_fusion_quantized" if quantize_fusion else name


def measure_in_child(
    args: argparse.Namespace,
    variant: str,
    checkpoint: Path,
    out_dir: Path,
    optimizer: str = "adamw",
    checkpointing: str | None = None,
    alternate_steps: int = 0,
    quantize_fusion: bool | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run method `variant` with `optimizer` (an `OPTIMIZER_VARIANTS` name), with gradient
    checkpointing of the towers `checkpointing` names ("all", "vision", ...) or none, in a fresh
    Python process (this module with --child); returns its figures.
    `quantize_fusion` None: as ``args.quantize_fusion`` says; `threads`: the child's
    OMP_NUM_THREADS (None: this process's environment)."""
    if quantize_fusion is None:
        quantize_fusion = getattr(args, "quantize_fusion", False)
    tags = (f"-checkpointed-{checkpointing}" if checkpointing else "") + (
        "-fusion" if quantize_fusion else ""
    )
    tags += f"-threads{threads}" if threads else ""
    out = out_dir / f"{variant}-{optimizer}{tags}.json"
    cmd = [
        sys.executable, "-m", "benchmarks.train_memory",
        "--device", args.device, "--preset", args.preset, "--dtype", args.dtype,
        "--batch-size", str(args.batch_size), "--frames", str(args.frames),
        "--steps", str(getattr(args, "steps", 1)), "--child-optimizer", optimizer,
        "--checkpoint", str(checkpoint), "--child", variant, "--child-out", str(out),
        *(["--child-checkpointing", checkpointing, "--alternate-steps", str(alternate_steps)] if checkpointing else []),
        *(["--count-flops"] if getattr(args, "count_flops", False) else []),
        *(["--quantize-fusion"] if quantize_fusion else []),
        *(["--torch-adam"] if getattr(args, "torch_adam", False) else []),
    ]  # fmt: skip
    from trainer.distributed import PROCESS_GROUP_ENV

    # A caller that has a process group of its own (a test session) must not hand it down.
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_ENV}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(
            f"train_memory child for {variant!r} ({optimizer}) failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-4000:]}"
        )
    figures = json.loads(out.read_text())
    figures["process_s"] = time.perf_counter() - start
    # CPU seconds of the child: what the run costs on a machine shared with other jobs
    figures["process_cpu_s"] = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    return figures


def run_child(args: argparse.Namespace) -> None:
    """Steps 1-4 of the module docstring for one variant, in this process."""
    # Imports first (DeepSpeed with trainer.run_setup): they are the baseline's content.
    from transformers.modeling_layers import GradientCheckpointingLayer

    from benchmarks.memory import PeakMemory, tensor_step_peak
    from benchmarks.workload import model_batch
    from models.adapters import apply_adapter, trainable_parameter_count
    from models.checkpointing import checkpointed_layers
    from models.loading import load_model
    from models.processor import VideoLlamaProcessor
    from trainer.config import RunConfig
    from trainer.distributed import init_distributed, resolve_dtype
    from trainer.ds_config import load_ds_config
    from trainer.optimizers import check_optimizer
    from trainer.run_setup import build_engine

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    # A child that times checkpointing (--alternate-steps) measures no memory: on CPU the meter
    # gives every allocation above 1 MiB its own mapping, and the page faults of those fresh pages
    # are CPU seconds too (there, steps that checkpoint, holding fewer activations, ran faster).
    timing = args.alternate_steps > 0
    meter = None if timing else PeakMemory(device)
    dist = init_distributed()
    if meter is not None:
        meter.reset()
        baseline = meter.read()["current"]

    method, quantization = args.child, quantization_of(args.child, args.quantize_fusion)
    torch.manual_seed(0)
    processor = VideoLlamaProcessor.from_pretrained(args.checkpoint)
    model = load_model(args.checkpoint, quantization=quantization, compute_dtype=dtype, device=device)
    model = apply_adapter(
        model,
        method,
        r=RANK,
        alpha=ALPHA,
        gradient_checkpointing=checkpointing_setting(args.child_checkpointing),
    ).train()
    materialize_weights(model)
    trainable, total = trainable_parameter_count(model)
    weight_bytes = model.get_memory_footprint()
    cfg = RunConfig()
    cfg.train.optimizer, cfg.deepspeed.config = OPTIMIZER_VARIANTS[args.child_optimizer]
    cfg.train.micro_batch_size = args.batch_size
    ds_config = load_ds_config(cfg, dist.world_size, device, dtype)
    if args.torch_adam:
        ds_config["optimizer"]["params"]["torch_adam"] = True
    check_optimizer(cfg, ds_config)
    engine, _ = build_engine(model, cfg, ds_config)
    batch = model_batch(
        processor, args.batch_size, args.frames, model.config.vision_config.image_size, device, dtype
    )
    if meter is not None:
        setup = meter.read()
        meter.reset()
        start = meter.read()["current"]
    step_times, step_cpu_times = [], []

    def train_step() -> torch.Tensor:
        began, began_cpu = time.perf_counter(), time.process_time()
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - began)
        step_cpu_times.append(time.process_time() - began_cpu)
        return loss

    for _ in range(args.steps):
        loss = train_step()
    tensors, memory = {}, {}
    if meter is not None:
        step = meter.read()
        memory = {
            "baseline_bytes": baseline,
            "setup_peak_bytes": setup["peak"],
            "step_start_bytes": start,
            "step_peak_bytes": step["peak"],
            "absolute_peak_bytes": max(setup["peak"], step["peak"]),
            "step_peak_above_baseline_bytes": step["peak"] - baseline,
        }
        if "peak_reserved" in step:
            memory["step_peak_reserved_bytes"] = step["peak_reserved"]
    if meter is not None and device.type == "cpu":
        # one more step under torch's profiler for the bytes tensors hold (CUDA's counters count
        # them already); it runs slower there, so its time is not kept
        tensors = tensor_step_peak(train_step, device)
        step_times.pop()
        step_cpu_times.pop()
    alternating = {}
    checkpointed = checkpointed_layers(model)
    if args.child_checkpointing and args.alternate_steps:
        # Steps with checkpointing off and on in turn, in one process, so that what it costs is
        # timed under the same load (a machine shared with other jobs drifts).
        layers = [
            m
            for m in model.modules()
            if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
        ]
        alternating = {"on": [], "off": []}
        for pair in range(args.alternate_steps):
            for setting in ("off", "on") if pair % 2 == 0 else ("on", "off"):
                for layer in layers:
                    layer.gradient_checkpointing = setting == "on"
                train_step()
                alternating[setting].append(step_cpu_times.pop())
                step_times.pop()
    flops = {}
    if args.count_flops:
        from trainer.flops import count_flops

        def one_step() -> None:
            engine.backward(engine(**batch).loss)
            engine.step()

        # one more step after the measured ones, so that the counter's overhead is in neither their
        # peak nor their time (the optimizer's elementwise work is no matmul and counts ~0)
        flops["flops_per_step"], _ = count_flops(one_step)
        flops["tokens_per_step"] = int(batch["attention_mask"].sum())

    figures = {
        **flops,
        "method": method,
        "gradient_checkpointing": checkpointed,
        "torch_threads": torch.get_num_threads(),
        "optimizer": args.child_optimizer,
        "deepspeed_config": cfg.deepspeed.config,
        "optimizer_class": type(getattr(engine.optimizer, "optimizer", engine.optimizer)).__name__,
        "quantization": quantization,
        "dtype": str(dtype),
        "trainable_params": trainable,
        "total_params": total,
        "weight_bytes": weight_bytes,
        "optimizer_state_bytes": _optimizer_state_bytes(engine.optimizer),
        **memory,
        "loss": float(loss.detach()),
        "steps": args.steps,
        "step_times_s": step_times,
        # the first step also creates the optimizer state (and, for offload, its host buffers)
        "step_time_s": statistics.median(step_times[1:] or step_times),
        # CPU seconds of this process's threads: steadier than wall time on a machine shared with other jobs
        "step_cpu_times_s": step_cpu_times,
        "step_cpu_s": statistics.median(step_cpu_times[1:] or step_cpu_times),
    }
    if alternating:
        figures["alternating_step_cpu_times_s"] = alternating
        figures["alternating_checkpointed_over_not_step_cpu"] = statistics.median(
            alternating["on"]
        ) / statistics.median(alternating["off"])
    if tensors:
        figures["step_start_tensor_bytes"] = tensors["start"]
        figures["step_tensor_peak_bytes"] = tensors["peak"]
    args.child_out.write_text(json.dumps(figures))


def _does_not_fit(variant: str, checkpoint: Path, device: torch.device) -> str | None:
    """Why full fine-tuning of `checkpoint` would not fit on `device` (None if it fits or for other
    methods): its optimizer-state floor alone (`FULL_BYTES_PER_PARAM`) against the available memory."""
    from safetensors import safe_open

    from benchmarks.memory import available_bytes
    from models.method_spec import WHOLE_MODEL_FORMAT
    from models.methods import adapter_method

    # Only a method saved as the whole model trains every weight.
    if adapter_method(variant).saved_as != WHOLE_MODEL_FORMAT:
        return None
    params = 0
    for file in checkpoint.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    need, free = params * FULL_BYTES_PER_PARAM, available_bytes(device)
    if need <= free:
        return None
    gib = 1024**3
    return f"needs >= {need / gib:.1f} GiB ({params:,} params x {FULL_BYTES_PER_PARAM} B), {free / gib:.1f} GiB available"


def _optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of the optimizer's per-parameter state (AdamW moments), ZeRO's wrapper unwrapped."""
    inner = getattr(optimizer, "optimizer", optimizer)
    seen: set[int] = set()
    total = 0
    for state in inner.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.untyped_storage().data_ptr() not in seen:
                seen.add(value.untyped_storage().data_ptr())
                total += value.untyped_storage().nbytes()
    return total


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    default_batch, default_frames = BATCH[args.preset]
    args.batch_size = args.batch_size or (1 if args.quick else default_batch)
    args.frames = args.frames or (2 if args.quick else default_frames)
    args.steps = args.steps or STEPS
    if args.child is not None:
        run_child(args)
        return
    device = torch.device(args.device)
    if args.optimizers is not None:
        if args.optimizer != "adamw":
            raise SystemExit(
                "--optimizer sets every method's optimizer; --optimizers compares them: give one"
            )
        compare_optimizers(args, device)
        return
    variants = available_variants(args.methods)
    if "lora" not in variants:
        raise SystemExit("--methods must include lora: the ratios are to lora")

    with tempfile.TemporaryDirectory(prefix="train_memory-") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from benchmarks.workload import write_checkpoint

            checkpoint = write_checkpoint(args.preset, Path(tmp) / "base")
        per_method, skipped = {}, {}
        for variant in variants:
            reason = _does_not_fit(variant, checkpoint, device)
            if reason:
                print(f"skipping {variant}: {reason}")
                skipped[variant] = reason
                continue
            per_method[variant] = measure_in_child(
                args,
                variant,
                checkpoint,
                Path(tmp),
                args.optimizer,
                checkpointing=args.gradient_checkpointing,
            )
        if args.gradient_checkpointing and "qlora" in per_method:
            # what checkpointing saves: the same qlora steps without it
            per_method["qlora_not_checkpointed"] = measure_in_child(
                args, "qlora", checkpoint, Path(tmp), args.optimizer
            )
            # what it costs: steps with it off and on in turn in a child of its own that measures no
            # memory (run_child), on CPU on one thread: two threads' CPU seconds include OpenMP's
            # spinning, which moved identical steps by ±20%; one thread's vary by ~5%
            per_method["qlora_checkpointing_timed"] = measure_in_child(
                args,
                "qlora",
                checkpoint,
                Path(tmp),
                args.optimizer,
                checkpointing=args.gradient_checkpointing,
                alternate_steps=ALTERNATE_STEPS,
                threads=1 if device.type == "cpu" else None,
            )
        if "qlora" in per_method and (args.optimizer != "adamw" or args.quantize_fusion):
            # what all the reductions together cost and save: plain qlora (AdamW, 16-bit Q-Formers,
            # no checkpointing) in the next child, on the same machine
            per_method["qlora_plain"] = measure_in_child(
                args, "qlora", checkpoint, Path(tmp), "adamw", quantize_fusion=False
            )

    lora = per_method["lora"]
    ratios = {}
    for variant, figures in per_method.items():
        if variant in ("lora", "qlora_not_checkpointed", "qlora_checkpointing_timed", "qlora_plain"):
            continue
        for ratio, key in RATIO_FIGURES:
            if key in figures:
                ratios[f"{args.preset}/{variant}_over_lora_{ratio}"] = figures[key] / lora[key]
    if "qlora_not_checkpointed" in per_method:
        plain, checkpointed = per_method["qlora_not_checkpointed"], per_method["qlora"]
        key = "step_peak_above_baseline_bytes"
        ratios[f"{args.preset}/qlora_checkpointed_over_not_step_peak"] = checkpointed[key] / plain[key]
        if "step_tensor_peak_bytes" in plain:
            ratios[f"{args.preset}/qlora_checkpointed_over_not_step_tensor_peak"] = (
                checkpointed["step_tensor_peak_bytes"] / plain["step_tensor_peak_bytes"]
            )
        # what it costs: steps with it off and on in turn in the timing child (run_child)
        ratios[f"{args.preset}/qlora_checkpointed_over_not_step_cpu_time"] = per_method[
            "qlora_checkpointing_timed"
        ]["alternating_checkpointed_over_not_step_cpu"]
    if "qlora_plain" in per_method:
        plain, reduced_run = per_method["qlora_plain"], per_method["qlora"]
        for ratio, key in RATIO_FIGURES:
            if key in plain:
                ratios[f"{args.preset}/qlora_over_plain_qlora_{ratio}"] = reduced_run[key] / plain[key]
    write_result(
        result_name(
            args.preset,
            args.dtype,
            checkpointing=args.gradient_checkpointing,
            optimizer=args.optimizer,
            quantize_fusion=args.quantize_fusion,
        ),
        device,
        config={
            "quick": args.quick,
            "preset": args.preset,
            "methods": {
                v: {"method": v, "quantization": quantization_of(v, args.quantize_fusion)} for v in variants
            },
            "batch_size": args.batch_size,
            "frames": args.frames,
            "rank": RANK,
            "alpha": ALPHA,
            "dtype": args.dtype,
            "steps": args.steps,
            "gradient_checkpointing": checkpointing_setting(args.gradient_checkpointing),
            "optimizer": f"deepspeed.initialize with {DS_CONFIG} (ZeRO-2, no offload), "
            f"train.optimizer={args.optimizer}",
            "quantize_fusion": args.quantize_fusion,
            "memory_measure": measure_description(device),
            "ratio_figures": "step_peak_above_baseline_bytes (over all steps), step_cpu_s (median after the first)",
            "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "load_average": os.getloadavg(),
        },
        figures={**per_method, "skipped": skipped},
        ratios=ratios,
        out=args.out,
    )


def compare_optimizers(args: argparse.Namespace, device: torch.device) -> None:
    """--optimizers: each optimizer for one method, in its own child process; ratios to adamw."""
    optimizers = available_optimizers(args.optimizers)
    methods = available_variants(args.methods or "qlora")
    if len(methods) != 1:
        raise SystemExit(f"--optimizers compares one method; --methods names {len(methods)}")
    method = methods[0]
    with tempfile.TemporaryDirectory(prefix="train_memory-") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from benchmarks.workload import write_checkpoint

            checkpoint = write_checkpoint(args.preset, Path(tmp) / "base")
        per_optimizer = {
            name: measure_in_child(args, method, checkpoint, Path(tmp), name) for name in optimizers
        }
    adamw = per_optimizer["adamw"]
    ratios = {}
    for name, figures in per_optimizer.items():
        if name == "adamw":
            continue
        for ratio, key in (
            ("step_peak", "step_peak_above_baseline_bytes"),
            ("step_tensor_peak", "step_tensor_peak_bytes"),
            ("step_time", "step_time_s"),
            ("step_cpu_time", "step_cpu_s"),
            ("optimizer_state", "optimizer_state_bytes"),
        ):
            if key in figures:
                ratios[f"{args.preset}/{name}_over_adamw_{ratio}"] = figures[key] / adamw[key]
    write_result(
        result_name(args.preset, args.dtype, optimizers=True, quantize_fusion=args.quantize_fusion),
        device,
        config={
            "quick": args.quick,
            "preset": args.preset,
            "method": method,
            "quantization": quantization_of(method, args.quantize_fusion),
            "optimizers": {
                name: dict(
                    zip(("train.optimizer", "deepspeed.config"), OPTIMIZER_VARIANTS[name], strict=True)
                )
                for name in optimizers
            },
            "batch_size": args.batch_size,
            "frames": args.frames,
            "steps": args.steps,
            "rank": RANK,
            "alpha": ALPHA,
            "dtype": args.dtype,
            "memory_measure": measure_description(device),
            "ratio_figures": "step_peak_above_baseline_bytes (over all steps), step_time_s and step_cpu_s "
            "(medians after the first), optimizer_state_bytes",
            "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
            # 1/5/15-minute load averages at the end: step times from a machine busy with other jobs
            # are not comparable, and this says whether it was
            "load_average": os.getloadavg(),
        },
        figures=per_optimizer,
        ratios=ratios,
        out=args.out,
    )


if __name__ == "__main__":
    main()
