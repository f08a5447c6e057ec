"""Sweep specs: ``--grid`` items or a YAML sweep file read into groups of axes of variants.

The format is described in ``trainer.experiments.sweep``; values stay YAML text, the form
``key=value`` overrides take, until a run's config is resolved from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config import ConfigError

# Sections of a sweep file that the comparison reads (trainer.experiments.claims), not the sweep.
COMPARISON_KEYS = ("metric", "baselines", "claims", "contrasts")


@dataclass(frozen=True)
class Variant:
    """One value of an axis: a label for names and the overrides (key → YAML text) it stands for."""

    label: str
    overrides: dict[str, str]


@dataclass(frozen=True)
class Axis:
    name: str
    variants: tuple[Variant, ...]
    is_key: bool  # a config key swept over values (label "r=8"), or a named variant list


@dataclass
class Group:
    name: str
    axes: list[Axis]
    overrides: dict[str, str] = field(default_factory=dict)
    seeds: list[int] | None = None  # this group's seeds; None: the sweep's


@dataclass
class SweepSpec:
    experiment: str
    config: str
    seeds: list[int]
    groups: list[Group]
    overrides: dict[str, str] = field(default_factory=dict)
    # The keys set to the run's seed: "seed" (initialisation, data order, dropout) and, for sweeps
    # whose seeds should also draw other training data, e.g. data.synthvid.seed.
    seed_keys: list[str] = field(default_factory=lambda: ["seed"])
    # The command line's --set: over every run, above the groups' own settings.
    forced: dict[str, str] = field(default_factory=dict)


def split_values(text: str) -> list[str]:
    """``"8,16,[a,b]"`` → ``["8", "16", "[a,b]"]``: commas inside brackets/braces belong to a value."""
    values, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    if depth != 0 or any(not v.strip() for v in values):
        raise ConfigError(f"grid values {text!r}: unbalanced brackets or an empty value")
    return [v.strip() for v in values]


def grid_group(items: list[str], name: str = "grid") -> Group:
    """``["adapter.r=8,16", "selector.k=4,8"]`` → one group with two key axes."""
    axes = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} is not of the form section.key=v1,v2,...")
        key, text = item.split("=", 1)
        axes.append(_key_axis(key.strip(), split_values(text)))
    return Group(name, axes)


def _key_axis(key: str, texts: list[str]) -> Axis:
    return Axis(key, tuple(Variant(t, {key: t}) for t in texts), is_key=True)


def _yaml_text(value: Any) -> str:
    """A YAML value as override text that ``parse_override`` reads back to the same value."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _overrides(mapping: Any, where: str) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping of section.key: value, got {mapping!r}")
    return {str(k): _yaml_text(v) for k, v in mapping.items()}


def load_sweep_file(path: str | Path) -> SweepSpec:
    """Read a YAML sweep file (see configs/synthvid/experiments.yaml for the format)::

    experiment: NAME            config: base.yaml            seeds: 3 (or [0, 1, 2])
    seed_keys: [seed, data.synthvid.seed]   keys set to the run's seed (default [seed])
    set: {key: value}           overrides of every run
    variants: {axis: {label: {key: value, ...}, ...}}   named variant lists
    groups:
      - name: rank
        seeds: [0]                  optional: this group's seeds instead of the sweep's
        set: {adapter.method: qlora}
        grid: {task: [order], adapter.r: [8, 16, 32]}   an axis name or a config key
    metric / baselines / claims: what the comparison reports (trainer.experiments.claims)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {"experiment", "config", "seeds", "seed_keys", "set", "variants", "groups", *COMPARISON_KEYS}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    for required in ("config", "groups"):
        if required not in raw:
            raise ConfigError(f"{path}: missing {required!r}")
    named: dict[str, dict[str, dict[str, str]]] = {}
    for axis, variants in (raw.get("variants") or {}).items():
        if not isinstance(variants, dict):
            raise ConfigError(f"{path}: variants.{axis} must map labels to overrides")
        named[axis] = {
            str(label): _overrides(o, f"{path}: variants.{axis}.{label}") for label, o in variants.items()
        }
    groups = []
    for i, g in enumerate(raw["groups"]):
        where = f"{path}: groups[{i}]"
        if not isinstance(g, dict) or "name" not in g:
            raise ConfigError(f"{where} must be a mapping with a name")
        extra = sorted(set(g) - {"name", "set", "grid", "seeds"})
        if extra:
            raise ConfigError(
                f"{where} ({g['name']}): unknown keys {', '.join(extra)}; valid: grid, name, seeds, set"
            )
        axes = []
        for axis, values in (g.get("grid") or {}).items():
            values = values if isinstance(values, list) else [values]
            if axis in named:
                missing = [v for v in values if str(v) not in named[axis]]
                if missing:
                    raise ConfigError(
                        f"{where} ({g['name']}): {axis} has no variants {missing}; known: {', '.join(named[axis])}"
                    )
                axes.append(Axis(axis, tuple(Variant(str(v), named[axis][str(v)]) for v in values), False))
            elif "." in axis:
                axes.append(_key_axis(axis, [_yaml_text(v) for v in values]))
            else:
                raise ConfigError(
                    f"{where} ({g['name']}): grid axis {axis!r} is neither a named variant list "
                    f"({', '.join(named) or 'none defined'}) nor a section.key"
                )
        seeds = seed_list(g["seeds"]) if "seeds" in g else None
        groups.append(Group(str(g["name"]), axes, _overrides(g.get("set"), f"{where}.set"), seeds))
    return SweepSpec(
        experiment=str(raw.get("experiment") or path.stem),
        config=str(raw["config"]),
        seeds=seed_list(raw.get("seeds", 1)),
        groups=groups,
        overrides=_overrides(raw.get("set"), f"{path}: set"),
        seed_keys=_seed_keys(raw.get("seed_keys", ["seed"]), path),
    )


def _seed_keys(keys: Any, path: Path) -> list[str]:
    if not isinstance(keys, list) or "seed" not in keys or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{path}: seed_keys must be a list of config keys that includes seed, got {keys!r}")
    return keys


def seed_list(seeds: Any) -> list[int]:
    """``3`` → ``[0, 1, 2]``; ``"0,5"`` or ``[0, 5]`` → those seeds."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    if isinstance(seeds, str):
        text = seeds.strip()
        return seed_list(int(text)) if "," not in text else [int(s) for s in split_values(text)]
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
        return list(seeds)
    raise ConfigError(f"seeds must be a count or a list of integers, got {seeds!r}")
