import json

import pytest
import torch

from trainer.config import ConfigError, RunConfig, changed_settings, load_config, parse_override
from trainer.ds_config import MAX_BUCKET_ELEMENTS, load_ds_config, size_buckets


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_cli_wins(tmp_path):
    path = write(tmp_path, "train:\n  steps: 10\n  lr: 1.0e-3\nadapter:\n  method: lora\n")
    cfg = load_config(path, ["train.steps=25", "adapter.target_modules=[q_proj,v_proj]", "model.preset=null"])
    assert cfg.train.steps == 25
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.adapter.method == "lora"
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.preset is None
    # untouched values keep their defaults
    assert cfg.train.micro_batch_size == RunConfig().train.micro_batch_size


def test_float_written_without_dot_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 2e-3\n"))
    assert cfg.train.lr == pytest.approx(2e-3)


def test_unknown_key_names_it_and_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "adapter:\n  rnak: 64\n"))
    msg = str(err.value)
    assert "adapter.rnak" in msg and "valid keys in adapter" in msg and "r," in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key trainer.*valid keys in the top level"):
        load_config(None, ["trainer.steps=3"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match="train.steps must be int, got 'many'"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="model.gradient_checkpointing: 3 fits none of"):
        load_config(None, ["model.gradient_checkpointing=3"])


def test_nested_optional_section_can_be_disabled():
    cfg = load_config(None, ["data.synthvid=null"])
    assert cfg.data.synthvid is None
    cfg = load_config(None, ["data.synthvid.num_train=7"])
    assert cfg.data.synthvid.num_train == 7


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.steps")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_flat_params():
    flat = RunConfig().flat()
    assert flat["train.lr"] == RunConfig().train.lr
    assert flat["data.synthvid"] is None  # nothing is generated unless a config asks
    assert load_config("configs/demo.yaml").flat()["data.synthvid.num_train"] == 1024


def test_demo_config_loads():
    cfg = load_config("configs/demo.yaml")
    assert cfg.adapter.method == "qlora" and cfg.model.quantization == "auto"


@pytest.mark.parametrize("name", ["zero2_offload.json", "zero2.json"])
def test_ds_config_autos_filled_from_run_config(name):
    cfg = load_config(
        None, [f"deepspeed.config=ds_configs/{name}", "train.micro_batch_size=3", "train.grad_accum=2"]
    )
    ds = load_ds_config(cfg, world_size=2, device=torch.device("cpu"), dtype=torch.float32)
    assert ds["train_batch_size"] == 12
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["optimizer"]["params"]["lr"] == cfg.train.lr
    # One iteration more: step s trains at iteration s, the last at the schedule's end (scheduler_block).
    assert ds["scheduler"]["params"]["total_num_steps"] == cfg.train.steps + 1
    assert ds["bf16"]["enabled"] is False
    # the bucket sizes are left to the engine builder, which knows what is trained
    assert ds["zero_optimization"]["reduce_bucket_size"] == "auto"
    assert "auto" not in json.dumps(size_buckets(ds, 1000))


def test_buckets_sized_to_the_trained_parameters_up_to_the_cap():
    ds = {"zero_optimization": {"reduce_bucket_size": "auto", "allgather_bucket_size": "auto"}}
    small = size_buckets(ds, 14_698_496)["zero_optimization"]
    assert small == {"reduce_bucket_size": 14_698_496, "allgather_bucket_size": 14_698_496}
    assert size_buckets(ds, 8_257)["zero_optimization"]["reduce_bucket_size"] == 8_448  # 33 x 256
    assert size_buckets(ds, 10**9)["zero_optimization"]["reduce_bucket_size"] == MAX_BUCKET_ELEMENTS
    assert ds["zero_optimization"]["reduce_bucket_size"] == "auto"  # the input is not changed
    written = {"zero_optimization": {"reduce_bucket_size": 123}}
    assert size_buckets(written, 10**6)["zero_optimization"]["reduce_bucket_size"] == 123


def test_ds_config_unfillable_auto_is_an_error(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "mystery": {"x": "auto"}}))
    cfg = load_config(None, [f"deepspeed.config={path}"])
    with pytest.raises(ConfigError, match="mystery.x"):
        load_ds_config(cfg, 1, torch.device("cpu"), torch.float32)


def test_changed_settings_lists_differences_but_not_the_run_length():
    saved = load_config(None, ["train.lr=0.001", "train.steps=10"]).flat()
    current = load_config(
        None, ["train.lr=0.002", "train.steps=20", "train.resume=none", "output_dir=x"]
    ).flat()
    assert changed_settings(saved, current) == {"train.lr": (0.001, 0.002)}
    assert changed_settings(saved, saved) == {}
    # a key the older checkpoint did not have
    del saved["train.vit_lr"]
    current["train.vit_lr"] = 1e-4
    assert changed_settings(saved, current)["train.vit_lr"] == (None, 1e-4)
