"""Train a Video-LLaMA adapter: ``deepspeed train.py --config configs/demo.yaml [key=value ...]``.

Also runs as ``python train.py …`` (one process) and under ``slurm/train.sbatch``.
"""

from __future__ import annotations

import argparse
import json
import logging

from trainer.config import load_config
from trainer.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
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
        trainer.evaluate()
        status = "FINISHED"
    finally:
        summary = trainer.close(status)
    if summary is not None:
        print(json.dumps(summary, indent=2))
        print(
            f"summary: {cfg.output_dir}/summary.json | MLflow run {summary['run_id']} at {summary['tracking_uri']}"
        )


if __name__ == "__main__":
    main()
