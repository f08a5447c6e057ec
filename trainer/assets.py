"""The run's inputs — base model and shards — as the config names them, or generated where it asks.

A path the config names is used as it is and must exist: a missing one stops the run before anything
loads, with the key and the path in the message, and nothing is written there. Synthetic stand-ins are
made only where the config leaves the path out (null) and says what to generate instead:

=========================================  ===========================================================
``model.name_or_path: null``               the random-init base of ``model.preset``, built at
                                           ``<assets_dir>/base/<preset>-<digest>``
``data.train_shards`` / ``eval_shards:``   SynthVid shards of ``data.synthvid``, written at
``null``                                   ``<assets_dir>/synthvid/<task>-<split>-<digest>``
=========================================  ===========================================================

The digest hashes everything the asset is generated from, its generator's version included: a changed
setting gives a new folder instead of silently reusing the old one, and the same settings find the
same folder from any run. An asset is written under a temporary name and renamed when complete, so a
folder that exists is whole, and two runs generating the same asset at once both end with one copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.pipeline import expand_shards
from data.synthvid import SYNTHVID_VERSION, TASKS, caption_corpus, write_synthvid
from models.presets import BASE_VERSION, create_pretrained, preset_fields
from trainer.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

# The eval split's clips come from data.synthvid.eval_seed + this offset: another stream than the
# training clips of any data.synthvid.seed below it.
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Asset:
    """Something to generate: `build(folder)` writes it into an empty `folder`."""

    key: str  # the config key the asset stands in for
    path: Path
    description: str
    build: Callable[[Path], Any]


def resolve_assets(
    cfg: RunConfig, splits: tuple[str, ...] = ("train", "eval", "test"), base_model: bool = True
) -> list[Asset]:
    """Check the base model and the shards of `splits` that ``cfg`` names, put the generated assets'
    paths in place of its null ones (``cfg`` is changed in place, as the run then records it), and
    return the assets still to generate. ``base_model=False`` leaves the model out: the data of runs
    whose base is still being trained (`trainer.experiments.sweep --prepare-data`).

    Raises:
        ConfigError: a named path is missing, or a path is null with nothing to generate in its place.
    """
    pending = [_base_model(cfg) if base_model else None, *(_shards(cfg, split) for split in splits)]
    return [a for a in pending if a is not None and not a.path.exists()]


def generate(assets: list[Asset]) -> None:
    """Write each asset into a temporary folder beside its path, then rename it into place."""
    for asset in assets:
        if asset.path.exists():  # another run finished it meanwhile
            continue
        log.info("%s is null: writing %s to %s", asset.key, asset.description, asset.path)
        asset.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = asset.path.with_name(f"{asset.path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            asset.build(tmp)
            os.rename(tmp, asset.path)
        except OSError:
            if not asset.path.exists():
                raise
            log.info("%s was written by another run meanwhile; using that copy", asset.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_assets(cfg: RunConfig) -> None:
    """`resolve_assets`, then `generate` what is missing (one process: rank 0, or a test)."""
    generate(resolve_assets(cfg))


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _base_model(cfg: RunConfig) -> Asset | None:
    model = cfg.model
    if model.name_or_path is not None:
        path = Path(model.name_or_path)
        if not (path / "config.json").is_file():
            what = (
                "does not exist"
                if not path.exists()
                else "holds no config.json (not a save_pretrained folder)"
            )
            raise ConfigError(
                f"model.name_or_path: {path} {what}. Name a saved model folder, or set "
                "model.name_or_path=null and model.preset=<name> to build a random-init base."
            )
        if model.preset is not None:
            log.info("model.preset %r not used: model.name_or_path names %s", model.preset, path)
        return None
    if model.preset is None:
        raise ConfigError(
            "model.name_or_path is not set: name a saved model folder (save_pretrained layout), or set "
            "model.preset (e.g. tiny) to build a random-init base"
        )
    try:
        fields = preset_fields(model.preset)
    except KeyError as err:
        raise ConfigError(f"model.preset: {err.args[0]}") from None
    corpus = caption_corpus()
    spec = {"preset": fields, "corpus": corpus, "version": BASE_VERSION}
    path = Path(cfg.assets_dir) / "base" / f"{model.preset}-{_digest(spec)}"
    model.name_or_path = str(path)
    return Asset(
        "model.name_or_path",
        path,
        f"a random-init {model.preset!r} base model",
        lambda folder: create_pretrained(model.preset, folder, corpus=corpus),
    )


def _shards(cfg: RunConfig, split: str) -> Asset | None:
    key = f"data.{split}_shards"
    named = getattr(cfg.data, f"{split}_shards")
    if named is not None:
        _check_shards(key, named)
        return None
    if split == "test" or (split == "eval" and cfg.eval.num_samples <= 0):
        return None  # no test split (never generated); nothing evaluates
    synth = cfg.data.synthvid
    if synth is None:
        hint = " (or eval.num_samples=0 to evaluate nothing)" if split == "eval" else ""
        raise ConfigError(
            f"{key} is not set: name a shard folder, a brace pattern or a tar, or set data.synthvid "
            f"to generate SynthVid shards{hint}"
        )
    if synth.task not in TASKS:
        renamed = " (SynthVid v2 renamed `temporal` to `order`)" if synth.task == "temporal" else ""
        raise ConfigError(f"data.synthvid.task: {synth.task!r} is not one of {TASKS}{renamed}")
    num = synth.num_train if split == "train" else synth.num_eval
    if num <= 0:
        raise ConfigError(f"{key} is null and data.synthvid.num_{split} is {num}: nothing to generate")
    seed = synth.eval_seed + EVAL_SEED_OFFSET if split == "eval" else synth.seed
    options = {
        "task": synth.task,
        "num": num,
        "seed": seed,
        "samples_per_shard": synth.samples_per_shard,
        "size": synth.size,
        "num_frames": synth.num_frames,
        # shift draws its held-out colour/shape pairs only for eval / test; in the digest, so a
        # split's folder is named after it as well as after its seed.
        "split": split,
    }
    digest = _digest({**options, "version": SYNTHVID_VERSION})
    path = Path(cfg.assets_dir) / "synthvid" / f"{synth.task}-{split}-{digest}"
    setattr(cfg.data, f"{split}_shards", str(path))
    return Asset(
        key,
        path,
        f"{num} SynthVid {synth.task!r} clips ({split})",
        lambda folder: write_synthvid(str(folder), **options),
    )


def _check_shards(key: str, shards: str) -> None:
    if not any(c in shards for c in "{}*") and "://" not in shards and not Path(shards).exists():
        raise ConfigError(
            f"{key}: {shards} does not exist (a folder of .tar shards, a brace pattern "
            "dir/{00000..00009}.tar or one .tar); set it to null with data.synthvid set to generate SynthVid"
        )
    try:
        expand_shards(shards)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None
