"""train.optimizer: bitsandbytes optimizers as DeepSpeed client optimizers, trained and resumed exactly.

The engines are real (single rank, gloo) and built by the trainer's own `build_engine` over a small
MLP with a frozen first layer (as under LoRA): trainable tensors of 8,321 elements, above
bitsandbytes' 4,096-element floor for 8-bit state, so the 8-bit choices really keep uint8 moments.
On CPU the paged choices fall back to plain memory (bitsandbytes warns); their update is the same.
"""

from __future__ import annotations

import contextlib
import math
import shutil

import deepspeed
import pytest
import torch

from trainer import checkpoint
from trainer.compat import check_compatibility, resolve_quantization
from trainer.config import ConfigError, load_config
from trainer.distributed import init_distributed
from trainer.ds_config import load_ds_config
from trainer.optimizers import OPTIMIZERS
from trainer.run_setup import build_engine

pytestmark = pytest.mark.usefixtures("single_rank_group")

CPU = torch.device("cpu")
STEPS, SAVE_AT = 8, 4
BNB_CHOICES = [name for name, cls in OPTIMIZERS.items() if cls is not None]


def run_config(optimizer: str, ds_file: str = "ds_configs/zero2.json", *extra: str):
    cfg = load_config(
        None,
        [
            f"train.optimizer={optimizer}",
            f"deepspeed.config={ds_file}",
            "train.micro_batch_size=4",
            f"train.steps={STEPS}",
            "train.warmup_steps=0",
            "train.lr=1e-2",
            *extra,
        ],
    )
    cfg.model.quantization = resolve_quantization(cfg)
    return cfg


def make_engine(cfg, scramble: bool = False):
    """The trainer's engine over the MLP; ``scramble``: other trainable weights (the frozen layer
    stays: checkpoints leave it out, as the frozen base of a LoRA run)."""
    init_distributed()
    ds = load_ds_config(cfg, 1, CPU, torch.float32)
    check_compatibility(cfg, ds, CPU, torch.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
    )
    model[0].requires_grad_(False)
    if scramble:
        with torch.no_grad():
            for p in model[2:].parameters():
                p.normal_(0, 0.1)
    engine, _ = build_engine(model, cfg, ds)
    return engine


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same regression batch for a step in every run: x [32, 16], y [32, 1]."""
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(32, 16, generator=gen)
    return x, x[:, :1] - 0.5 * x[:, 1:2]


def train(engine, first: int, last: int) -> tuple[list[float], list[float]]:
    """Steps first..last; returns (loss per step, learning rate each step ran at)."""
    losses, lrs = [], []
    for step in range(first, last + 1):
        x, y = batch(step)
        lrs.append(engine.optimizer.param_groups[0]["lr"])
        loss = (engine(x) - y).pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses, lrs


def held_out_loss(engine) -> float:
    x, y = batch(10_000)
    with torch.no_grad():
        return (engine(x) - y).pow(2).mean().item()


def trainable(engine) -> dict[str, torch.Tensor]:
    """Copies of the trained weights (gathered from their partitions under ZeRO-3)."""
    params = {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
    with deepspeed.zero.GatheredParameters(
        list(params.values()), enabled=engine.zero_optimization_stage() == 3
    ):
        return {n: p.detach().clone() for n, p in params.items()}


def base_optimizer(engine):
    """The bitsandbytes (or DeepSpeed) optimizer inside DeepSpeed's ZeRO wrapper."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


@pytest.fixture(scope="module")
def adamw_lrs():
    """The learning rates today's optimizer (DeepSpeed's AdamW from the JSON) steps at."""
    return train(make_engine(run_config("adamw")), 1, STEPS)[1]


# Every choice under ZeRO-2, the paged 8-bit one under ZeRO-0 (no flat partition: one state per
# tensor), and an 8-bit one under ZeRO-3 (its checkpoint files are named per data-parallel rank).
CASES = [(name, "ds_configs/zero2.json") for name in BNB_CHOICES] + [
    ("paged_adamw_8bit", "ds_configs/zero0.json"),
    ("adamw_8bit", "ds_configs/zero3.json"),
]


@pytest.mark.parametrize(("name", "ds_file"), CASES)
def test_bitsandbytes_optimizer_trains_on_the_schedule_and_resumes_exactly(
    name, ds_file, adamw_lrs, tmp_path
):
    import bitsandbytes as bnb

    cfg = run_config(name, ds_file)
    straight = make_engine(cfg)
    inner = base_optimizer(straight)
    assert type(inner) is getattr(bnb.optim, OPTIMIZERS[name])
    assert inner.param_groups[0]["betas"] == (0.9, 0.999) and inner.param_groups[0]["eps"] == 1e-8
    assert inner.param_groups[0]["weight_decay"] == 0.0  # train.weight_decay, not bitsandbytes' 1e-2
    assert "optimizer" not in straight.config
    assert straight.config.get("zero_allow_untested_optimizer", False) == (
        straight.zero_optimization_stage() > 0
    )
    start, start_loss = trainable(straight), held_out_loss(straight)

    fallback = "Paged optimizers are not supported on CPU. Falling back to non-paged optimizer behavior."
    expect_warning = (
        pytest.warns(UserWarning, match=fallback) if "paged" in name else contextlib.nullcontext()
    )
    with expect_warning:
        losses, lrs = train(straight, 1, SAVE_AT)
    checkpoint.save_checkpoint(straight, tmp_path, SAVE_AT, {"step": SAVE_AT}, keep_last=1)
    more, more_lrs = train(straight, SAVE_AT + 1, STEPS)
    losses, lrs = losses + more, lrs + more_lrs

    assert lrs == adamw_lrs  # the JSON's warm-up + cosine, as DeepSpeed's AdamW
    assert len(set(lrs)) > 2
    assert all(torch.isfinite(torch.tensor(losses)))
    assert held_out_loss(straight) < 0.9 * start_loss
    assert not any(torch.equal(start[k], v) for k, v in trainable(straight).items())
    # 8-bit moments where a state tensor has >= 4096 elements: the flat ZeRO partition, or under
    # ZeRO-0 the 128x64 weight (its bias and the last layer keep fp32 moments).
    moments = {v.dtype for s in inner.state.values() for k, v in s.items() if k in ("state1", "state2")}
    assert (torch.uint8 in moments) == ("8bit" in name)
    assert (torch.float32 in moments) == ("8bit" not in name or straight.zero_optimization_stage() == 0)

    # A fresh engine from other weights, loaded at step 4, continues as if never stopped.
    resumed = make_engine(cfg, scramble=True)
    assert checkpoint.load_checkpoint(resumed, tmp_path)["step"] == SAVE_AT
    resumed_losses, resumed_lrs = train(resumed, SAVE_AT + 1, STEPS)
    assert resumed_losses == losses[SAVE_AT:]
    assert resumed_lrs == lrs[SAVE_AT:]
    final = trainable(straight)
    for key, value in trainable(resumed).items():
        assert torch.equal(value, final[key]), key


def test_paged_8bit_under_zero3_trains():
    engine = make_engine(run_config("paged_adamw_8bit", "ds_configs/zero3.json"))
    start, start_loss = trainable(engine), held_out_loss(engine)
    losses, _ = train(engine, 1, STEPS)
    assert all(torch.isfinite(torch.tensor(losses))) and held_out_loss(engine) < 0.9 * start_loss
    assert not any(torch.equal(start[k], v) for k, v in trainable(engine).items())
    moments = {v.dtype for s in base_optimizer(engine).state.values() for k, v in s.items() if k == "state1"}
    assert moments == {torch.uint8} and "optimizer" not in engine.config


def test_unknown_optimizer_lists_the_choices():
    cfg = run_config("lion_8bit")
    with pytest.raises(
        ConfigError,
        match="train.optimizer must be one of adamw, adamw_8bit, paged_adamw, paged_adamw_8bit; "
        "got 'lion_8bit'",
    ):
        check_compatibility(cfg, load_ds_config(cfg, 1, CPU, torch.float32), CPU, torch.float32)


@pytest.mark.parametrize("name", BNB_CHOICES)
def test_optimizer_offload_is_refused_naming_both_keys(name):
    cfg = run_config(name, "ds_configs/zero3_offload.json")
    with pytest.raises(ConfigError) as err:
        check_compatibility(cfg, load_ds_config(cfg, 1, CPU, torch.float32), CPU, torch.float32)
    message = str(err.value)
    assert f"train.optimizer={name}" in message
    assert "zero_optimization.offload_optimizer (device=cpu)" in message
    assert "deepspeed.config=ds_configs/zero3_offload.json" in message


def test_plain_adamw_keeps_the_json_optimizer():
    cfg = run_config("adamw", "ds_configs/zero2_offload.json")
    engine = make_engine(cfg)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    assert isinstance(base_optimizer(engine), DeepSpeedCPUAdam)
    assert engine.config["optimizer"]["type"] == "AdamW"


def test_zero_buckets_hold_the_trained_parameters():
    """The engine builder sizes ZeRO's "auto" buckets to the adapter, not DeepSpeed's 5e7 elements."""
    engine = make_engine(run_config("adamw"))
    trained = sum(p.numel() for p in engine.module.parameters() if p.requires_grad)
    assert trained == 128 * 64 + 64 + 64 + 1  # 8,257: one bucket of 33 x 256 elements
    assert engine.optimizer.reduce_bucket_size == engine.optimizer.allgather_bucket_size == 8_448


@pytest.mark.e2e
def test_train_py_with_paged_8bit_resumes_the_uninterrupted_run(demo_assets, tmp_path):
    """The demo's QLoRA through train.py (one process, ZeRO-2): stopped at step 3 and resumed ==
    never stopped, losses and adapter weights bit for bit, with bitsandbytes' paged 8-bit AdamW."""
    from tests.conftest import run_training, train_command
    from tests.trainer.test_runs import checkpoint_state, sqlite_uri

    common = [
        "train.optimizer=paged_adamw_8bit",
        "deepspeed.config=ds_configs/zero2.json",
        "train.steps=6",
        "eval.num_samples=0",
        "data.shuffle_buffer=16",
        "train.keep_last=3",
    ]
    uri = sqlite_uri(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = run_training(
        train_command(demo_assets, straight, uri, "train.save_every=3", "train.resume=none", *common),
        tmp_path / "straight.log",
    )
    assert "Paged optimizers are not supported on CPU" in proc.stdout + proc.stderr
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints/global_step3", resumed / "checkpoints/global_step3")
    (resumed / "checkpoints/latest").write_text("global_step3")
    run_training(train_command(demo_assets, resumed, uri, *common), tmp_path / "resumed.log")

    want, got = checkpoint_state(straight), checkpoint_state(resumed)
    assert len(want["losses"]) == len(got["losses"]) == 6
    assert all(math.isfinite(loss) for loss in want["losses"])
    assert got["losses"] == want["losses"]
    saved = torch.load(straight / "checkpoints/global_step6/mp_rank_00_model_states.pt", weights_only=False)
    assert "optimizer" not in saved["ds_config"] and saved["ds_config"]["zero_allow_untested_optimizer"]
    for name, value in want["module"].items():
        assert torch.equal(got["module"][name], value), name


def test_resuming_with_another_optimizer_is_refused_naming_both(tmp_path):
    engine = make_engine(run_config("adamw_8bit"))
    train(engine, 1, 1)
    state = {"step": 1, "config": {"train.optimizer": "adamw_8bit"}}
    checkpoint.save_checkpoint(engine, tmp_path, 1, state, keep_last=1)
    plain = make_engine(run_config("adamw"))
    with pytest.raises(
        ConfigError, match="trained with train.optimizer=adamw_8bit but this run has train.optimizer=adamw"
    ):
        checkpoint.load_checkpoint(plain, tmp_path, optimizer="adamw")
    # The same optimizer loads; a checkpoint whose config predates the key counts as adamw.
    assert checkpoint.load_checkpoint(engine, tmp_path, optimizer="adamw_8bit")["step"] == 1
    checkpoint.save_checkpoint(plain, tmp_path, 2, {"step": 2, "config": {"train.lr": 0.01}}, keep_last=1)
    with pytest.raises(
        ConfigError, match="train.optimizer=adamw but this run has train.optimizer=paged_adamw"
    ):
        checkpoint.load_checkpoint(make_engine(run_config("paged_adamw")), tmp_path, optimizer="paged_adamw")
