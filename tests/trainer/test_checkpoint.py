"""Atomic DeepSpeed checkpoints on a real (single-rank, gloo) engine."""

import deepspeed
import pytest
import torch

from trainer import checkpoint
from trainer.config import load_config
from trainer.distributed import init_distributed
from trainer.ds_config import load_ds_config
from trainer.run_setup import build_engine

pytestmark = pytest.mark.usefixtures("single_rank_group")


@pytest.fixture(scope="module")
def engine(single_rank_group):
    info = single_rank_group
    cfg = load_config(None, ["train.micro_batch_size=2", "deepspeed.config=ds_configs/zero2_offload.json"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model[0].requires_grad_(False)  # a frozen base, as under (Q)LoRA
    eng, _ = build_engine(model, cfg, load_ds_config(cfg, 1, info.device, torch.float32))
    return eng


def train_steps(eng, n):
    for _ in range(n):
        loss = eng(torch.randn(2, 4)).pow(2).mean()
        eng.backward(loss)
        eng.step()


def weights(eng):
    return {k: v.detach().clone() for k, v in eng.module.state_dict().items()}


def test_save_load_round_trip_and_pruning(engine, tmp_path):
    train_steps(engine, 2)
    checkpoint.save_checkpoint(engine, tmp_path, 2, {"step": 2}, keep_last=2)
    saved = weights(engine)
    train_steps(engine, 1)
    checkpoint.save_checkpoint(engine, tmp_path, 3, {"step": 3}, keep_last=2)
    train_steps(engine, 1)
    checkpoint.save_checkpoint(engine, tmp_path, 4, {"step": 4}, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("global_step*")) == ["global_step3", "global_step4"]
    assert (tmp_path / "latest").read_text() == "global_step4"
    saved_module = torch.load(tmp_path / "global_step4/mp_rank_00_model_states.pt", weights_only=False)[
        "module"
    ]
    assert set(saved_module) == {"2.weight", "2.bias"}  # the frozen layer is not copied into checkpoints

    state = checkpoint.load_checkpoint(engine, tmp_path, tag="global_step3")
    assert state["step"] == 3
    assert not all(torch.equal(saved[k], v) for k, v in weights(engine).items())


def test_interrupted_save_leaves_previous_checkpoint_usable(engine, tmp_path):
    train_steps(engine, 1)
    checkpoint.save_checkpoint(engine, tmp_path, 10, {"step": 10}, keep_last=3)
    good = weights(engine)
    # A kill during the next save: DeepSpeed had written its files under the temporary tag only.
    train_steps(engine, 1)
    engine.save_checkpoint(
        str(tmp_path), tag=".tmp-global_step11", client_state={"step": 11}, save_latest=False
    )
    assert checkpoint.latest_tag(tmp_path) == "global_step10"
    train_steps(engine, 1)
    state = checkpoint.load_checkpoint(engine, tmp_path)
    assert state["step"] == 10
    assert all(torch.equal(good[k], v) for k, v in weights(engine).items())
    # The next complete save cleans the leftover.
    checkpoint.save_checkpoint(engine, tmp_path, 12, {"step": 12}, keep_last=3)
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_without_a_trainable_tensor_is_refused(engine, tmp_path):
    checkpoint.save_checkpoint(engine, tmp_path, 1, {"step": 1}, keep_last=1)
    states_file = tmp_path / "global_step1/mp_rank_00_model_states.pt"
    states = torch.load(states_file, weights_only=False)
    del states["module"]["2.bias"]
    torch.save(states, states_file)
    with pytest.raises(KeyError, match="lacks 1 trainable tensors.*2.bias"):
        checkpoint.load_checkpoint(engine, tmp_path)


def test_missing_checkpoint_is_named(engine, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        checkpoint.load_checkpoint(engine, tmp_path)


# ZeRO-3 keeps a parameter partitioned when it has more than stage3_param_persistence_threshold (1e5
# in the JSONs) elements, the smaller ones whole on every rank after the first forward: the
# 128x1024 weight below is partitioned, the biases and the last layer are not, so a resume has to
# restore both kinds.
RESUME_STEPS, RESUME_AT = 8, 5


def resume_engine(ds_file, scramble=False):
    """A fresh engine from ``ds_file`` over an MLP whose first layer is frozen (as under LoRA).

    ``scramble``: other trainable weights, which the checkpoint must overwrite."""
    info = init_distributed()
    overrides = [f"deepspeed.config={ds_file}", "train.micro_batch_size=4", f"train.steps={RESUME_STEPS}"]
    cfg = load_config(None, [*overrides, "train.warmup_steps=2", "train.lr=1e-3"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1),
    )
    model[0].requires_grad_(False)
    if scramble:
        with torch.no_grad():
            for p in model[2:].parameters():
                p.normal_(0, 0.05)
    eng, _ = build_engine(model, cfg, load_ds_config(cfg, 1, info.device, torch.float32))
    return eng


def regression_steps(eng, first, last):
    """Steps first..last on batches fixed by the step number; returns the loss of each."""
    losses = []
    for step in range(first, last + 1):
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(step))
        loss = (eng(x) - x[:, :1]).pow(2).mean()
        eng.backward(loss)
        eng.step()
        losses.append(loss.item())
    return losses


def gathered_trainable(eng):
    """Copies of the trainable weights, gathered from their ZeRO-3 partitions."""
    params = {n: p for n, p in eng.module.named_parameters() if p.requires_grad}
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=eng.zero_optimization_stage() == 3):
        return {n: p.detach().clone() for n, p in params.items()}


@pytest.mark.parametrize(
    "ds_file", ["ds_configs/zero2_offload.json", "ds_configs/zero3.json", "ds_configs/zero3_offload.json"]
)
def test_resumed_run_reproduces_the_uninterrupted_one(ds_file, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    straight = resume_engine(ds_file)
    # ds_persist: held whole on every rank once gathered; the other ZeRO-3 parameters stay partitioned.
    params = straight.module.named_parameters()
    partitioned = [n for n, p in params if p.requires_grad and hasattr(p, "ds_id") and not p.ds_persist]
    assert partitioned == (["2.weight"] if straight.zero_optimization_stage() == 3 else [])
    losses = regression_steps(straight, 1, RESUME_AT)
    checkpoint.save_checkpoint(straight, tmp_path, RESUME_AT, {"step": RESUME_AT}, keep_last=1)
    at_save = gathered_trainable(straight)
    losses += regression_steps(straight, RESUME_AT + 1, RESUME_STEPS)
    lr_after = straight.get_lr()

    # The weights DeepSpeed's own consolidation reads back from the checkpoint are the trained ones.
    consolidated = get_fp32_state_dict_from_zero_checkpoint(tmp_path, exclude_frozen_parameters=True)
    assert consolidated.keys() == at_save.keys()
    for name, value in at_save.items():
        assert torch.equal(consolidated[name], value), name

    resumed = resume_engine(ds_file, scramble=True)
    assert checkpoint.load_checkpoint(resumed, tmp_path)["step"] == RESUME_AT
    assert all(torch.equal(v, at_save[k]) for k, v in gathered_trainable(resumed).items())
    assert regression_steps(resumed, RESUME_AT + 1, RESUME_STEPS) == losses[RESUME_AT:]
    assert resumed.get_lr() == lr_after
    final = gathered_trainable(straight)
    for name, value in gathered_trainable(resumed).items():
        assert torch.equal(value, final[name]), name


def test_interrupted_zero3_save_leaves_previous_checkpoint_usable(tmp_path):
    eng = resume_engine("ds_configs/zero3.json")
    regression_steps(eng, 1, 2)
    checkpoint.save_checkpoint(eng, tmp_path, 2, {"step": 2}, keep_last=3)
    good = gathered_trainable(eng)
    # A kill during the next save: DeepSpeed had written ZeRO-3's files under the temporary tag only.
    regression_steps(eng, 3, 3)
    eng.save_checkpoint(str(tmp_path), tag=".tmp-global_step3", client_state={"step": 3}, save_latest=False)
    written = sorted(p.name for p in (tmp_path / ".tmp-global_step3").iterdir())
    assert written == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ]
    assert checkpoint.resume_source("auto", tmp_path) == (tmp_path, "global_step2")
    regression_steps(eng, 4, 4)
    assert checkpoint.load_checkpoint(eng, tmp_path)["step"] == 2
    assert all(torch.equal(good[k], v) for k, v in gathered_trainable(eng).items())
    checkpoint.save_checkpoint(eng, tmp_path, 4, {"step": 4}, keep_last=3)
    assert not list(tmp_path.glob(".tmp-*"))
    assert checkpoint.model_states_files(tmp_path / "global_step4") == [
        tmp_path / "global_step4/zero_pp_rank_0_mp_rank_00_model_states.pt"
    ]


def test_model_states_files_of_every_layout_first_rank_first(tmp_path):
    names = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (10, 2, 0, 1)]
    others = ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    others += ["expert_0_mp_rank_00_model_states.pt", "layer_01-model_00-model_states.pt"]
    for name in names + others:
        (tmp_path / name).touch()
    ranks = [p.name.split("_")[3] for p in checkpoint.model_states_files(tmp_path)]
    assert ranks == ["0", "1", "2", "10"]
    (tmp_path / "zero2").mkdir()
    (tmp_path / "zero2/mp_rank_00_model_states.pt").touch()
    assert checkpoint.model_states_files(tmp_path / "zero2") == [
        tmp_path / "zero2/mp_rank_00_model_states.pt"
    ]
