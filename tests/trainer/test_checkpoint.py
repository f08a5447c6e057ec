"""Atomic DeepSpeed checkpoints on a real (single-rank, gloo) engine."""

import deepspeed
import pytest
import torch

from trainer import checkpoint
from trainer.config import load_config
from trainer.distributed import init_distributed
from trainer.ds_config import load_ds_config, size_buckets


@pytest.fixture(scope="module")
def engine():
    info = init_distributed()
    cfg = load_config(None, ["train.micro_batch_size=2", "deepspeed.config=ds_configs/zero2_offload.json"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model[0].requires_grad_(False)  # a frozen base, as under (Q)LoRA
    trainable = [p for p in model.parameters() if p.requires_grad]
    ds = size_buckets(load_ds_config(cfg, 1, info.device, torch.float32), sum(p.numel() for p in trainable))
    eng, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds)
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
