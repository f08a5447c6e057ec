"""The learning rate each of the first steps trains at, read from real DeepSpeed engines.

`trainer.ds_config.scheduler_block` writes the schedule and `start_schedule` (called by
`build_engine`) starts it: step s of a W-step warm-up trains at lr·s/W, the first step included
(DeepSpeed alone gave the first step lr 0, the second too with a warm-up, and a linear schedule
without warm-up never decayed).
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import load_config
from trainer.distributed import init_distributed
from trainer.ds_config import load_ds_config
from trainer.run_setup import build_engine

pytestmark = pytest.mark.usefixtures("single_rank_group")

STEPS, LR, MIN_RATIO = 10, 1e-2, 0.1


def cosine(progress: float) -> float:
    return MIN_RATIO + (1 - MIN_RATIO) * (1 + math.cos(math.pi * progress)) / 2


# Fractions of train.lr for steps 1..10 (train.steps=10).
EXPECTED = {
    ("constant", 0): [1.0] * 10,
    ("constant", 1): [1.0] * 10,
    ("constant", 4): [0.25, 0.5, 0.75] + [1.0] * 7,
    ("linear", 0): [1.0] + [(10 - k) / 9 for k in range(1, 10)],
    ("linear", 4): [0.25, 0.5, 0.75] + [(7 - k) / 7 for k in range(7)],
    ("cosine", 0): [1.0] + [cosine(k / 9) for k in range(1, 10)],
    ("cosine", 1): [1.0] + [cosine(k / 9) for k in range(1, 10)],
    ("cosine", 2): [0.5] + [cosine(k / 9) for k in range(1, 10)],
    ("cosine", 4): [0.25, 0.5, 0.75] + [cosine(k / 7) for k in range(1, 8)],
}


def engine_for(schedule: str, warmup: int, ds_file: str = "ds_configs/zero2.json"):
    init_distributed()
    cfg = load_config(
        None,
        [
            f"deepspeed.config={ds_file}",
            "train.micro_batch_size=2",
            f"train.steps={STEPS}",
            f"train.lr={LR}",
            f"train.schedule={schedule}",
            f"train.warmup_steps={warmup}",
            f"train.min_lr_ratio={MIN_RATIO}",
            "train.weight_decay=0",
        ],
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    engine, _ = build_engine(model, cfg, load_ds_config(cfg, 1, torch.device("cpu"), torch.float32))
    return engine


def step(engine) -> float:
    """One training step; returns the learning rate its optimizer step used."""
    lr = engine.optimizer.param_groups[0]["lr"]
    loss = engine(torch.ones(2, 4)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    return lr


@pytest.mark.parametrize(("schedule", "warmup"), list(EXPECTED), ids=[f"{s}-warmup{w}" for s, w in EXPECTED])
def test_learning_rate_of_each_step(schedule, warmup):
    engine = engine_for(schedule, warmup)
    lrs = [step(engine) for _ in range(STEPS)]
    assert lrs == pytest.approx([LR * f for f in EXPECTED[schedule, warmup]], rel=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("ds_file", ["ds_configs/zero2.json", "ds_configs/zero2_offload.json"])
def test_the_first_step_trains(schedule, ds_file):
    """Adam's first update is lr·g/(|g|+eps) per element: |Δw| = lr/4 at a 4-step warm-up."""
    engine = engine_for(schedule, 4, ds_file)
    before = engine.module.weight.detach().clone()
    step(engine)
    change = (engine.module.weight.detach() - before).abs()
    assert change == pytest.approx(torch.full_like(change, LR / 4), rel=1e-4)
