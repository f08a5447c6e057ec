"""What makes two runs "the same configuration": one definition that sweeps and comparisons read.

A configuration is a run's settings (the flat keys of `trainer.config.RunConfig`) without the ones
that differ between the seeds and copies of one configuration (`RUN_SPECIFIC_KEYS`), each value
written as MLflow holds it as a param (`trainer.config.param_text`). A sweep tags every run with the
`config_id` of its resolved config (``sweep.config_id``); a comparison reads that tag and, for a run
made some other way, computes the same id from the run's logged params, where the figures a run
logs next to its settings (``model.trainable_params``, ``world_size``, …) are no settings and do
not count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from trainer.config import is_setting, param_text

# Settings that differ between the seeds / runs of one configuration without changing what is
# compared. assets_dir only says where generated inputs are kept; what they hold follows from the
# settings. data.synthvid.seed draws the training clips: a seed of the data, as `seed` is of the
# initialisation (the eval clips have their own, data.synthvid.eval_seed, which does count).
RUN_SPECIFIC_KEYS = (
    "seed",
    "data.synthvid.seed",
    "output_dir",
    "assets_dir",
    "tracking.run_name",
    "tracking.experiment",
    "tracking.uri",
)


def configuration(settings: Mapping[str, Any]) -> dict[str, str]:
    """The entries of ``settings`` (a flat run config, or a run's MLflow params) that define its
    configuration, key → param text."""
    return {k: param_text(v) for k, v in settings.items() if is_setting(k) and k not in RUN_SPECIFIC_KEYS}


def config_id(settings: Mapping[str, Any]) -> str:
    """A 12-hex-digit hash of `configuration`: the same for a config and its logged params, and for
    every seed of one configuration."""
    return hashlib.sha1(json.dumps(configuration(settings), sort_keys=True).encode()).hexdigest()[:12]
