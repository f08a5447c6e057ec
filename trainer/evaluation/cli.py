"""Evaluate a trained adapter: captioning scores, retrieval R@K and a qualitative HTML report.

    python -m trainer.evaluation --config configs/demo.yaml --checkpoint outputs/demo/adapter \\
        [--split eval|test] [--tasks caption,retrieval] [--out DIR] [key=value ...]
    torchrun --nproc_per_node 2 -m trainer.evaluation …    (or the deepspeed launcher: ranks share the clips)

``--checkpoint`` is a peft adapter folder as the trainer writes it (``<output_dir>/adapter``:
adapter_config.json, adapter_model.safetensors, the processor, run_info.json). DeepSpeed checkpoint
folders hold the same trainable tensors; the adapter export is the portable form and the one read
here. The base model comes from the config (``model.name_or_path``, ``model.quantization``).

Writes ``<out>/eval_results.json`` and ``<out>/report.html`` (default out: ``<checkpoint>/../eval_<split>``)
and logs ``<split>/<metric>`` to MLflow (``tracking.*``): into the training run when the adapter
folder records its run id, else into a new run tagged ``eval``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from models.adapters import load_adapter
from models.loading import load_model
from models.processor import CONFIG_NAME, VideoLlamaProcessor
from trainer.assets import generate
from trainer.caption_language import check_caption_language
from trainer.config import RunConfig, load_config
from trainer.distributed import DistInfo, barrier, init_distributed, resolve_dtype
from trainer.evaluation.clip_results import EvalResult
from trainer.evaluation.eval_pass import TASKS, evaluate
from trainer.evaluation.html_report import write_report
from trainer.evaluation.retrieval_metrics import chance_metrics
from trainer.run_setup import before_process_group, build_selector
from trainer.tracking import Tracker

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, help="YAML run config (the one the adapter was trained with)"
    )
    parser.add_argument("--checkpoint", required=True, help="peft adapter folder (<output_dir>/adapter)")
    parser.add_argument(
        "--split", choices=("eval", "test"), default="eval", help="data.eval_shards or data.test_shards"
    )
    parser.add_argument(
        "--tasks", default=None, help=f"comma list of {TASKS}; default: caption (+ retrieval with a head)"
    )
    parser.add_argument("--out", default=None, help="output folder (default <checkpoint>/../eval_<split>)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. eval.num_samples=100")
    return parser.parse_args(argv)


def load_for_eval(
    cfg: RunConfig, adapter_dir: Path, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """(model with the adapter loaded, processor) for ``adapter_dir``; clear errors for wrong folders."""
    if not (adapter_dir / "adapter_config.json").is_file() or not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        hint = (
            " (a DeepSpeed checkpoint: use the adapter folder <output_dir>/adapter)"
            if (adapter_dir / "latest").exists() or adapter_dir.name.startswith("global_step")
            else ""
        )
        raise FileNotFoundError(
            f"--checkpoint {adapter_dir} is not a peft adapter folder: it needs adapter_config.json and "
            f"{ADAPTER_WEIGHTS}{hint}"
        )
    processor_dir = adapter_dir if (adapter_dir / CONFIG_NAME).is_file() else Path(cfg.model.name_or_path)
    processor = VideoLlamaProcessor.from_pretrained(processor_dir)
    # With the training run's retrieval head (train.contrastive_*): peft then loads its trained copy.
    model = load_model(
        cfg.model.name_or_path,
        quantization=cfg.model.quantization,
        compute_dtype=dtype,
        device=device,
        retrieval_dim=cfg.train.retrieval_dim,
    )
    model = load_adapter(model, adapter_dir)
    model.eval()
    return model, processor


def results_json(result: EvalResult, checkpoint: Path, split: str, tasks: tuple[str, ...]) -> dict[str, Any]:
    """The results file: scores, chance-level retrieval figures and every clip's outputs."""
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "split": split,
        "tasks": list(tasks),
        "num_clips": len(result.clips),
        "scores": result.scores,
    }
    if "retrieval" in tasks:
        owner = [v for v, c in enumerate(result.clips.values()) for _ in range(len(c.text_embeddings))]
        out["retrieval_chance"] = chance_metrics(owner)
    out["clips"] = {
        key: {
            "prediction": c.prediction,
            "references": c.references,
            "selected_frames": c.selected,
            **({"retrieval_top5": result.rankings[key]} if key in result.rankings else {}),
        }
        for key, c in result.clips.items()
    }
    return out


def _run_info(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "run_info.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def log_to_mlflow(
    cfg: RunConfig, adapter_dir: Path, out_dir: Path, split: str, scores: dict[str, float]
) -> str | None:
    """Log ``<split>/<metric>`` and the files of ``out_dir``; returns the MLflow run id."""
    info = _run_info(adapter_dir)
    tracker = Tracker(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        cfg.tracking.run_name,
        spool_path=out_dir / "mlflow_spool.jsonl",
        flush_interval_s=cfg.tracking.flush_interval_s,
        tags={"eval": "true", "adapter.method": cfg.adapter.method},
        artifact_location=cfg.tracking.artifact_location,
        resume_run_id=info.get("mlflow_run_id"),
    )
    tracker.set_tags({"eval.checkpoint": str(adapter_dir), f"eval.{split}.done": "true"})
    tracker.log({f"{split}/{k}": v for k, v in scores.items()}, step=int(info.get("step", 0)))
    for name in ("eval_results.json", "report.html"):
        tracker.log_artifact(out_dir / name, f"{split}_report")
    tracker.close()
    return tracker.run_id


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Evaluate; returns the results dict on rank 0 (None on the other ranks)."""
    cfg = load_config(args.config, args.overrides)
    # As in training (threads, weight format, stale JIT locks); the base and the split's shards are
    # resolved as training resolved them, so generated ones are found again.
    _, missing_assets = before_process_group(cfg, splits=(args.split,))
    adapter_dir = Path(args.checkpoint)
    shards = cfg.data.eval_shards if args.split == "eval" else cfg.data.test_shards
    if shards is None:
        raise ValueError(
            f"--split {args.split} needs data.{args.split}_shards in the config (or as an override)"
        )
    tasks = tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else None
    dist: DistInfo = init_distributed(cfg.deepspeed.dist_backend)
    if dist.is_main:
        generate(missing_assets)
    barrier()
    dtype = resolve_dtype(cfg.model.dtype, dist.device)
    torch.manual_seed(cfg.seed)
    model, processor = load_for_eval(cfg, adapter_dir, dist.device, dtype)
    check_caption_language(cfg, processor.tokenizer, splits=(args.split,))
    selector = build_selector(cfg)
    result = evaluate(
        model,
        processor,
        selector,
        cfg,
        dist,
        dtype,
        shards=shards,
        tasks=tasks,
        keep_frames=cfg.eval.report_samples,
    )
    if result is None:
        barrier()
        return None
    out_dir = Path(args.out) if args.out else adapter_dir.parent / f"eval_{args.split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = results_json(result, adapter_dir, args.split, result.tasks)
    (out_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    write_report(
        out_dir / "report.html",
        result.clips,
        result.scores,
        result.rankings,
        title=f"{adapter_dir} · {args.split} · {len(result.clips)} clips",
        max_clips=cfg.eval.report_samples,
    )
    results["mlflow_run_id"] = log_to_mlflow(cfg, adapter_dir, out_dir, args.split, result.scores)
    results["out_dir"] = str(out_dir)
    # Again with the run the scores went to (the copy uploaded into that run cannot name it yet).
    (out_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    barrier()
    return results


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(parse_args(argv))
    if results is not None:
        summary = {k: v for k, v in results.items() if k != "clips"}
        print(json.dumps(summary, indent=2))
