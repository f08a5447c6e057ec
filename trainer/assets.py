"""Create what a run needs and does not find: SynthVid shards and a random-init base model.

Runs on rank 0 only (the other ranks wait at a barrier). Existing folders are never touched,
so a run pointed at real shards and real weights skips all of this.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data.synthvid import caption_corpus, write_synthvid
from models.presets import create_pretrained
from trainer.config import RunConfig

log = logging.getLogger(__name__)


def prepare_assets(cfg: RunConfig) -> None:
    synth = cfg.data.synthvid
    if synth is not None:
        for split, folder, num, seed in (
            ("train", cfg.data.train_shards, synth.num_train, synth.seed),
            ("eval", cfg.data.eval_shards, synth.num_eval, synth.seed + 1_000_003),
        ):
            if not Path(folder).exists() and num > 0:
                log.info("writing %d SynthVid %s clips (%s) to %s", num, synth.task, split, folder)
                write_synthvid(
                    folder,
                    task=synth.task,
                    num=num,
                    seed=seed,
                    samples_per_shard=synth.samples_per_shard,
                    size=synth.size,
                    num_frames=synth.num_frames,
                )
    base = Path(cfg.model.name_or_path)
    if not base.exists():
        if cfg.model.preset is None:
            raise FileNotFoundError(f"model.name_or_path {base} does not exist and model.preset is null")
        log.info("creating a random-init %r base model at %s", cfg.model.preset, base)
        create_pretrained(cfg.model.preset, base, corpus=caption_corpus())
