"""Train a Video-LLaMA adapter: ``deepspeed train.py --config configs/demo.yaml [key=value ...]``.

Also runs as ``python train.py …`` (one process) and under ``slurm/train.sbatch``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from trainer.config import ConfigError, load_config
from trainer.jit_ops import StaleJitLockError
from trainer.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument(
        "--preempted-file",
        type=Path,
        default=None,
        help="created (by rank 0) when the run stopped on SIGTERM/SIGUSR1 after a checkpoint; "
        "slurm/train.sbatch requeues the job when it exists",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    status = "FAILED"
    try:
        trainer.fit()
        if not trainer.preempted:  # a preempted job has seconds left: evaluation waits for the end
            trainer.evaluate()
        status = "FINISHED"
    finally:
        summary = trainer.close(status)
    if summary is not None and summary["preempted"] and args.preempted_file is not None:
        args.preempted_file.write_text(f"stopped at step {summary['steps']}\n")
    if summary is not None:
        print(json.dumps(summary, indent=2))
        print(
            f"summary: {cfg.output_dir}/summary.json | MLflow run {summary['run_id']} at {summary['tracking_uri']}"
        )


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, StaleJitLockError) as err:  # the message says what to do; a traceback would bury it
        sys.exit(f"train.py: {err}")
