"""Generated inputs only where the config asks (a null path and something to generate), named paths
checked before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

import trainer.assets as assets_module
from data.synthvid import HELD_OUT
from tests.conftest import REPO, training_env
from trainer.assets import Asset, generate, resolve_assets
from trainer.config import ConfigError, load_config

SMALL = ["data.synthvid.num_train=4", "data.synthvid.num_eval=2", "data.synthvid.samples_per_shard=4"]


def _demo(tmp_path: Path, *overrides: str):
    return load_config(REPO / "configs/demo.yaml", [f"assets_dir={tmp_path / 'assets'}", *SMALL, *overrides])


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_named_model_path_that_is_missing_is_an_error_and_nothing_is_written(tmp_path):
    missing = tmp_path / "checkpoints/typo"
    cfg = _demo(tmp_path, f"model.name_or_path={missing}")  # demo.yaml sets model.preset: tiny
    with pytest.raises(ConfigError, match=rf"model\.name_or_path: {missing} does not exist"):
        resolve_assets(cfg)
    assert not missing.exists() and not (tmp_path / "assets").exists()


def test_a_folder_without_a_saved_model_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no config.json"):
        resolve_assets(_demo(tmp_path, f"model.name_or_path={tmp_path / 'empty'}"))


@pytest.mark.parametrize("split", ["train", "eval", "test"])
def test_named_shards_that_are_missing_are_an_error(tmp_path, split):
    missing = tmp_path / "shards" / split
    with pytest.raises(ConfigError, match=rf"data\.{split}_shards: {missing} does not exist"):
        resolve_assets(_demo(tmp_path, f"data.{split}_shards={missing}"))
    assert not missing.exists()


def test_a_brace_pattern_with_missing_shards_is_an_error(tmp_path):
    pattern = f"{tmp_path}/{{00000..00001}}.tar"
    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data\.train_shards: 1 of 2 shards not found"):
        resolve_assets(_demo(tmp_path, f"data.train_shards={pattern}"))


def test_null_paths_with_nothing_to_generate_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.name_or_path is not set"):
        resolve_assets(_demo(tmp_path, "model.preset=null"))
    with pytest.raises(ConfigError, match="data.train_shards is not set"):
        resolve_assets(_demo(tmp_path, "data.synthvid=null"))
    with pytest.raises(ConfigError, match="model.preset: .*unknown preset 'huge'"):
        resolve_assets(_demo(tmp_path, "model.preset=huge"))
    # Without evaluation, no eval shards are needed (nor generated).
    cfg = _demo(tmp_path, "data.synthvid=null", f"data.train_shards={tmp_path}", "eval.num_samples=0")
    (tmp_path / "00000.tar").write_bytes(b"")
    assert [a.key for a in resolve_assets(cfg)] == ["model.name_or_path"]
    assert cfg.data.eval_shards is None


def test_generated_assets_are_named_after_their_settings_and_found_again(tmp_path):
    cfg = _demo(tmp_path)
    pending = resolve_assets(cfg)
    assert [a.key for a in pending] == ["model.name_or_path", "data.train_shards", "data.eval_shards"]
    assert Path(cfg.model.name_or_path).parent == tmp_path / "assets/base"
    assert Path(cfg.model.name_or_path).name.startswith("tiny-")
    assert Path(cfg.data.train_shards).name.startswith("pretrain-train-")
    generate(pending)
    assert (Path(cfg.model.name_or_path) / "config.json").is_file()
    assert sorted(os.listdir(cfg.data.train_shards)) == ["00000.tar", "00000_stats.json"]
    assert not [p for p in _tree(tmp_path / "assets") if ".tmp-" in p]

    again = _demo(tmp_path)
    assert resolve_assets(again) == []  # the same settings find the same folders
    assert (again.model.name_or_path, again.data.train_shards) == (cfg.model.name_or_path, cfg.data.train_shards)
    other = _demo(tmp_path, "data.synthvid.num_train=8")
    assert [a.key for a in resolve_assets(other)] == ["data.train_shards"]  # changed: a new folder
    assert other.data.train_shards != cfg.data.train_shards
    assert other.data.eval_shards == cfg.data.eval_shards


def test_a_data_seed_draws_other_training_clips_and_the_same_eval_clips(tmp_path):
    cfg, other = _demo(tmp_path), _demo(tmp_path, "data.synthvid.seed=3")
    resolve_assets(cfg)
    resolve_assets(other)
    assert other.data.train_shards != cfg.data.train_shards
    assert other.data.eval_shards == cfg.data.eval_shards  # paired comparisons need the same clips
    moved = _demo(tmp_path, "data.synthvid.eval_seed=1")
    resolve_assets(moved)
    assert moved.data.eval_shards != cfg.data.eval_shards and moved.data.train_shards == cfg.data.train_shards


def test_generate_keeps_the_copy_another_run_finished_first(tmp_path):
    final = tmp_path / "asset"

    def build(folder: Path) -> None:
        folder.mkdir()
        (folder / "part").write_text("mine")
        final.mkdir()  # another run renamed its complete copy into place meanwhile
        (final / "part").write_text("theirs")

    generate([Asset("data.train_shards", final, "a test asset", build)])
    assert (final / "part").read_text() == "theirs"
    assert _tree(tmp_path) == ["asset", "asset/part"]  # no temporary folder left behind


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(folder: Path) -> None:
        folder.mkdir()
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        generate([Asset("data.train_shards", tmp_path / "asset", "a test asset", build)])
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("override", ["model.name_or_path", "data.train_shards"])
def test_train_py_stops_on_a_missing_named_path(tmp_path, override):
    """The command of the issue: exits non-zero before anything loads, naming the key and the path,
    and writes nothing there (nor the synthetic assets the config would otherwise generate)."""
    missing = tmp_path / "does-not-exist"
    proc = subprocess.run(
        [
            sys.executable, "train.py", "--config", "configs/demo.yaml",
            f"output_dir={tmp_path / 'run'}", f"assets_dir={tmp_path / 'assets'}", f"{override}={missing}",
        ],
        cwd=REPO, env=training_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"{override}: {missing} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _tree(tmp_path) == []


def test_an_unknown_synthvid_task_is_a_config_error_naming_the_rename(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data\.synthvid\.task: 'temporal' is not one of .*renamed `temporal` to `order`"
    ):
        resolve_assets(_demo(tmp_path, "data.synthvid.task=temporal"))
    with pytest.raises(ConfigError, match=r"'sprase' is not one of \('pretrain', 'sparse'"):
        resolve_assets(_demo(tmp_path, "data.synthvid.task=sprase"))


def test_shift_shards_are_generated_per_split_with_the_held_out_pairs_only_at_eval(tmp_path):
    cfg = _demo(tmp_path, "data.synthvid.task=shift", "data.synthvid.size=16", "data.synthvid.num_frames=2")
    shards = [a for a in resolve_assets(cfg) if a.key != "model.name_or_path"]
    assert [a.key for a in shards] == ["data.train_shards", "data.eval_shards"]
    assert cfg.data.train_shards != cfg.data.eval_shards
    generate(shards)
    for folder, split in ((cfg.data.train_shards, "train"), (cfg.data.eval_shards, "eval")):
        tars = sorted(str(p) for p in Path(folder).glob("*.tar"))
        metas = [json.loads(s["json"]) for s in wds.WebDataset(tars, shardshuffle=False)]
        assert metas and all(m["split"] == split for m in metas)
        assert all(((m["shape"], m["color"]) in HELD_OUT) == (split == "eval") for m in metas)


def test_the_base_model_is_keyed_on_the_caption_corpus(tmp_path, monkeypatch):
    before = _demo(tmp_path)
    resolve_assets(before)
    monkeypatch.setattr(assets_module, "caption_corpus", lambda: ["a red circle"])
    after = _demo(tmp_path)
    resolve_assets(after)
    assert after.model.name_or_path != before.model.name_or_path  # a new corpus: a new tokenizer, a new base
