"""Grid expansion: a sweep spec resolved into its runs, each with a stable name, overrides and tags.

Every combination is resolved into its full run config here, so a typo stops the sweep before any
run starts, and combinations with the same resolved config run once.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from trainer.config import ConfigError, load_config
from trainer.experiments.config_identity import config_id
from trainer.experiments.sweep_spec import SweepSpec


@dataclass
class SweepRun:
    index: int
    name: str
    label: str  # the name without the seed: the same for every seed of a configuration
    seed: int
    groups: list[str]
    overrides: list[str]  # key=value, in order: sweep, group, combination, seed
    params: dict[str, str]  # the swept keys of this combination → YAML text
    axis_labels: dict[str, str]
    config_id: str
    train_steps: int  # its train.steps: how long it runs, for the order runs are launched in

    def tags(self, experiment: str) -> dict[str, str]:
        return {
            "sweep.name": experiment,
            "sweep.run": self.name,
            "sweep.label": self.label,
            "sweep.index": str(self.index),
            "sweep.seed": str(self.seed),
            "sweep.groups": ",".join(self.groups),
            "sweep.config_id": self.config_id,
            **{f"sweep.axis.{k}": v for k, v in self.axis_labels.items()},
            **{f"sweep.param.{k}": v for k, v in self.params.items()},
        }


def expand(spec: SweepSpec) -> list[SweepRun]:
    """Every run of the sweep, in a stable order (group, product of axes, seed), duplicates merged."""
    runs: list[SweepRun] = []
    by_config: dict[tuple[str, int], SweepRun] = {}
    for group in spec.groups:
        short = _short_keys([a.name for a in group.axes if a.is_key])
        for combo in itertools.product(*(a.variants for a in group.axes)):
            params: dict[str, str] = {}
            for variant in combo:
                params.update(variant.overrides)
            labels = [
                f"{short[a.name]}={v.label}" if a.is_key else v.label
                for a, v in zip(group.axes, combo, strict=True)
            ]
            label = _slug("-".join([group.name, *labels]))
            base = {**spec.overrides, **group.overrides, **params, **spec.forced}
            for seed in group.seeds or spec.seeds:
                overrides = [f"{k}={v}" for k, v in base.items() if k not in spec.seed_keys]
                overrides += [f"{k}={seed}" for k in spec.seed_keys]
                try:
                    flat = load_config(spec.config, overrides).flat()
                except ConfigError as err:
                    raise ConfigError(f"sweep group {group.name!r}, combination {label}: {err}") from None
                identity = config_id(flat)
                seen = by_config.get((identity, seed))
                if seen is not None:  # the same run: it carries every group's tags
                    if group.name not in seen.groups:
                        seen.groups.append(group.name)
                    for k, v in {**group.overrides, **params}.items():
                        if k not in spec.seed_keys:
                            seen.params.setdefault(k, v)
                    seen.axis_labels.update(
                        {a.name: v.label for a, v in zip(group.axes, combo, strict=True) if not a.is_key}
                    )
                    continue
                run = SweepRun(
                    index=len(runs),
                    name=f"{label}-s{seed}",
                    label=label,
                    seed=seed,
                    groups=[group.name],
                    overrides=overrides,
                    params={
                        k: v for k, v in {**group.overrides, **params}.items() if k not in spec.seed_keys
                    },
                    axis_labels={
                        a.name: v.label for a, v in zip(group.axes, combo, strict=True) if not a.is_key
                    },
                    config_id=identity,
                    train_steps=int(flat["train.steps"]),
                )
                runs.append(run)
                by_config[(identity, seed)] = run
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"sweep runs with different configs share the names {duplicates}: rename a group or label"
        )
    return runs


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with (``adapter.r`` → ``r``)."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != key and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        short[key] = suffix
    return short


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")
