"""Run a grid of training runs into one MLflow experiment, in sequence or as a SLURM array.

::

    python -m trainer.sweep --config configs/demo.yaml \\
        --grid adapter.method=qlora,temporal_qlora adapter.r=8,16,32 selector.k=4,8 --seeds 3
    python -m trainer.sweep --sweep configs/synthvid/experiments.yaml          # named ablation groups
    python -m trainer.sweep … --count | --dry-run | --index 7 | --slurm --partition=gpu

A sweep is a list of *groups*, each the cartesian product of its *axes*, times the seeds. An axis
is a config key with values (``adapter.r: [8, 16, 32]``) or a named list of *variants*, each a set
of overrides that go together (``lora: {adapter.method: lora, model.quantization: none}``), so an
ablation need not be a full product. ``--grid`` is one group whose axes are all keys. Every
combination is resolved into its full run config up front (a typo stops the sweep before any run
starts); combinations with the same resolved config (a baseline shared by two ablations) run once.

Each run gets a stable name (from its group, axis labels and seed), its own ``output_dir`` under
``--out-root/<experiment>/`` and MLflow tags: ``sweep.name``, ``sweep.run``, ``sweep.groups``,
``sweep.seed``, ``sweep.config_id`` (a hash of the resolved config minus seed and paths: what
``trainer.compare`` groups seeds by), ``sweep.label`` and ``sweep.param.<key>`` for every swept key.
A run already FINISHED in the experiment is skipped, so a stopped sweep resumes where it was (an
unfinished run continues from its checkpoint into its MLflow run, as ``train.py`` does). A failed run
is recorded (MLflow status FAILED, ``sweep.error`` tag, ``sweep_status.json``) and the sweep goes on.

Launchers (``--launcher``):
    fork       (default) each run is ``train.main`` in a child forked from this process, which has
               imported torch/DeepSpeed/transformers once (~10 s saved per run on 2 CPU cores). The
               child is a fresh process: its own seed state, process group, MLflow tracker and peak
               memory counter (``ru_maxrss`` starts again in a child, so CPU memory figures stay per
               run), and a crash cannot take the sweep down.
    python     ``python train.py …`` per run (a clean interpreter; slower start).
    deepspeed  ``deepspeed --num_gpus N train.py …`` per run (several ranks per run).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config import ConfigError, load_config

# Keys that differ between the seeds / runs of one configuration without changing what is compared.
# assets_dir only says where generated inputs are kept; what they hold follows from the settings.
RUN_SPECIFIC_KEYS = ("seed", "output_dir", "assets_dir", "tracking.run_name", "tracking.experiment", "tracking.uri")
SBATCH_SCRIPT = Path("slurm/sweep.sbatch")
# Child exit codes of the fork launcher.
_SKIPPED, _PREEMPTED = 3, 4


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


@dataclass
class SweepSpec:
    experiment: str
    config: str
    seeds: list[int]
    groups: list[Group]
    overrides: dict[str, str] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------- specs
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
    set: {key: value}           overrides of every run
    variants: {axis: {label: {key: value, ...}, ...}}   named variant lists
    groups:
      - name: rank
        set: {adapter.method: qlora}
        grid: {task: [temporal], adapter.r: [8, 16, 32]}   an axis name or a config key
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {"experiment", "config", "seeds", "set", "variants", "groups"}
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
        extra = sorted(set(g) - {"name", "set", "grid"})
        if extra:
            raise ConfigError(
                f"{where} ({g['name']}): unknown keys {', '.join(extra)}; valid: grid, name, set"
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
        groups.append(Group(str(g["name"]), axes, _overrides(g.get("set"), f"{where}.set")))
    return SweepSpec(
        experiment=str(raw.get("experiment") or path.stem),
        config=str(raw["config"]),
        seeds=seed_list(raw.get("seeds", 1)),
        groups=groups,
        overrides=_overrides(raw.get("set"), f"{path}: set"),
    )


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


# ---------------------------------------------------------------------------------------------- expansion
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
            base = {**spec.overrides, **group.overrides, **params}
            for seed in spec.seeds:
                overrides = [f"{k}={v}" for k, v in base.items() if k != "seed"] + [f"seed={seed}"]
                try:
                    flat = load_config(spec.config, overrides).flat()
                except ConfigError as err:
                    raise ConfigError(f"sweep group {group.name!r}, combination {label}: {err}") from None
                config_id = _config_id(flat)
                seen = by_config.get((config_id, seed))
                if seen is not None:  # the same run: it carries every group's tags
                    if group.name not in seen.groups:
                        seen.groups.append(group.name)
                    for k, v in {**group.overrides, **params}.items():
                        if k != "seed":
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
                    params={k: v for k, v in {**group.overrides, **params}.items() if k != "seed"},
                    axis_labels={
                        a.name: v.label for a, v in zip(group.axes, combo, strict=True) if not a.is_key
                    },
                    config_id=config_id,
                )
                runs.append(run)
                by_config[(config_id, seed)] = run
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"sweep runs with different configs share the names {duplicates}: rename a group or label"
        )
    return runs


def _config_id(flat: dict[str, Any]) -> str:
    kept = {k: v for k, v in flat.items() if k not in RUN_SPECIFIC_KEYS}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


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


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Settings:
    experiment: str
    config: str
    out_root: Path
    tracking_uri: str
    launcher: str = "fork"
    num_gpus: int = 1


def run_overrides(run: SweepRun, settings: Settings) -> list[str]:
    """The run's ``key=value`` list as ``train.py`` gets it: the sweep's, then where it writes."""
    return [
        *run.overrides,
        f"output_dir={run_dir(run, settings)}",
        f"tracking.uri={settings.tracking_uri}",
        f"tracking.experiment={settings.experiment}",
        f"tracking.run_name={run.name}",
    ]


def run_dir(run: SweepRun, settings: Settings) -> Path:
    return settings.out_root / settings.experiment / run.name


def train_command(run: SweepRun, settings: Settings) -> list[str]:
    """The command a subprocess launcher runs (also what ``--dry-run`` prints)."""
    bin_dir = Path(sys.executable).parent
    if settings.launcher == "deepspeed":
        launcher = [str(bin_dir / "deepspeed"), "--num_gpus", str(settings.num_gpus)]
    else:
        launcher = [sys.executable]
    return [*launcher, "train.py", "--config", settings.config, *run_overrides(run, settings)]


def is_finished(client: Any, experiment: str, run_name: str) -> bool:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`sweep.run` = '{run_name}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return len(found) > 0


def record_outcome(client: Any, run: SweepRun, settings: Settings, error: str | None) -> str | None:
    """Tag the run's MLflow run; a run that died before it had one gets a FAILED run of its own."""
    summary = run_dir(run, settings) / "summary.json"
    run_id = json.loads(summary.read_text())["run_id"] if summary.is_file() else None
    tags = run.tags(settings.experiment)
    if error is not None:
        tags["sweep.error"] = error[-4000:]
    if run_id is None:
        from trainer.tracking import experiment_id_for

        run_id = client.create_run(
            experiment_id_for(client, settings.experiment), run_name=run.name
        ).info.run_id
        client.set_terminated(run_id, status="FAILED")
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


def _execute(run: SweepRun, settings: Settings, train: Any) -> int:
    """Skip if finished, else train (``train(run) -> error text or None``) and record. Returns an exit code."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    if is_finished(client, settings.experiment, run.name):
        return _SKIPPED
    (run_dir(run, settings) / "summary.json").unlink(missing_ok=True)  # a stale one names an older run
    error = train(run)
    record_outcome(client, run, settings, error)
    if error is None:
        summary = json.loads((run_dir(run, settings) / "summary.json").read_text())
        return _PREEMPTED if summary.get("preempted") else 0
    return 1


def _train_in_process(settings: Settings) -> Any:
    def train(run: SweepRun) -> str | None:
        import train as entry  # the repository's train.py: exactly what `python train.py` runs

        try:
            entry.main(["--config", settings.config, *run_overrides(run, settings)])
        except Exception:
            traceback.print_exc()
            return traceback.format_exc()
        return None

    return train


def _train_subprocess(settings: Settings) -> Any:
    def train(run: SweepRun) -> str | None:
        log_path = run_dir(run, settings) / "sweep.log"
        with log_path.open("ab") as log:
            proc = subprocess.run(train_command(run, settings), stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode == 0:
            return None
        tail = log_path.read_text(errors="replace")[-4000:]
        return f"exit code {proc.returncode}\n{tail}"

    return train


def execute(run: SweepRun, settings: Settings) -> str:
    """Run one sweep run with the configured launcher; returns FINISHED | SKIPPED | FAILED | PREEMPTED."""
    folder = run_dir(run, settings)
    folder.mkdir(parents=True, exist_ok=True)
    if settings.launcher == "fork":
        code = _fork(lambda: _execute(run, settings, _train_in_process(settings)), folder / "sweep.log")
    else:
        code = _execute(run, settings, _train_subprocess(settings))
    return {0: "FINISHED", _SKIPPED: "SKIPPED", _PREEMPTED: "PREEMPTED"}.get(code, "FAILED")


_child_pid: int | None = None


def _fork(job: Any, log_path: Path) -> int:
    """Run ``job()`` in a forked child with stdout/stderr appended to ``log_path``; its exit code."""
    global _child_pid
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # The sweep's forwarding handler is inherited: a signal sent to the child itself must act
            # as on a plain `python train.py` (the trainer's PreemptionHandler during fit, else exit).
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_DFL)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # The parent's sys.stdout may not be fd 1 (a test's capture): write where the fds now point.
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            code = job()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _child_pid = pid
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        _child_pid = None
    return os.waitstatus_to_exitcode(status)


def run_sweep(runs: list[SweepRun], settings: Settings) -> list[dict[str, Any]]:
    """Run ``runs`` one after the other; a stop signal is passed to the running child and ends the sweep."""
    if settings.launcher == "fork":
        import train  # noqa: F401  heavy imports once, inherited by every forked run

    stop = {"requested": False}

    def forward(signum: int, frame: Any) -> None:
        stop["requested"] = True
        if _child_pid is not None:
            os.kill(_child_pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    results = []
    try:
        for i, run in enumerate(runs):
            start = time.perf_counter()
            status = execute(run, settings)
            seconds = time.perf_counter() - start
            results.append(
                {"index": run.index, "name": run.name, "status": status, "seconds": round(seconds, 1)}
            )
            print(f"[{i + 1}/{len(runs)}] {run.name}: {status} in {seconds:.1f} s", flush=True)
            if stop["requested"] or status == "PREEMPTED":
                print("stop requested: the sweep ends here; run it again to continue", flush=True)
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _write_status(results, settings)
    return results


def _write_status(results: list[dict[str, Any]], settings: Settings) -> None:
    """Merge this invocation's outcomes into <out_root>/<experiment>/sweep_status.json."""
    path = settings.out_root / settings.experiment / "sweep_status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    status = json.loads(path.read_text()) if path.is_file() else {}
    status.update({r["name"]: r for r in results})
    path.write_text(json.dumps(dict(sorted(status.items(), key=lambda kv: kv[1]["index"])), indent=2))


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="base run config (with --grid); a sweep file names its own")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2", help="axes of a full product")
    parser.add_argument("--sweep", help="YAML sweep file of named ablation groups")
    parser.add_argument("--seeds", default=None, help="count (3 → seeds 0,1,2) or list (0,5,7); default 1")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of every run")
    parser.add_argument(
        "--experiment", help="MLflow experiment (default: the sweep file's, or <config>-sweep)"
    )
    parser.add_argument("--tracking-uri", help="default: the base config's tracking.uri")
    parser.add_argument("--out-root", default="outputs/sweeps", help="runs write to OUT_ROOT/EXPERIMENT/NAME")
    parser.add_argument("--launcher", choices=("fork", "python", "deepspeed"), default="fork")
    parser.add_argument("--num-gpus", type=int, default=1, help="ranks per run with --launcher deepspeed")
    parser.add_argument("--index", type=int, help="run only combination INDEX (a SLURM array task)")
    parser.add_argument("--count", action="store_true", help="print the number of runs and exit")
    parser.add_argument("--dry-run", action="store_true", help="list the runs (and commands), run nothing")
    return parser


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    if args.sweep:
        if args.grid:
            raise ConfigError("give either --sweep FILE or --grid, not both (add the grid as a group)")
        spec = load_sweep_file(args.sweep)
        if args.config:
            spec.config = args.config
    else:
        if not args.config:
            raise ConfigError("--config is required without --sweep")
        spec = SweepSpec(
            experiment=f"{Path(args.config).stem}-sweep",
            config=args.config,
            seeds=[0],
            groups=[grid_group(args.grid)],
        )
    if args.seeds is not None:
        spec.seeds = seed_list(args.seeds)
    if args.experiment:
        spec.experiment = args.experiment
    spec.overrides.update(dict(_split_override(o) for o in args.set))
    return spec


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form section.key=value")
    key, value = item.split("=", 1)
    return key.strip(), value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sbatch_args: list[str] | None = None
    if "--slurm" in argv:  # everything after --slurm goes to sbatch
        cut = argv.index("--slurm")
        argv, sbatch_args = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    runs = expand(spec)
    base = load_config(spec.config)
    settings = Settings(
        experiment=spec.experiment,
        config=spec.config,
        out_root=Path(args.out_root),
        tracking_uri=args.tracking_uri or base.tracking.uri,
        launcher=args.launcher,
        num_gpus=args.num_gpus,
    )
    if args.count:
        print(len(runs))
        return 0
    if sbatch_args is not None:
        if not args.dry_run:
            prepare_store(settings)
        return submit_array(argv, sbatch_args, len(runs), args.dry_run)
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            raise SystemExit(
                f"--index {args.index} is out of range: the sweep has {len(runs)} runs (0-{len(runs) - 1})"
            )
        runs = [runs[args.index]]
    if args.dry_run:
        for run in runs:
            print(
                f"{run.index:4d}  {run.name}  [{','.join(run.groups)}]  {shlex.join(train_command(run, settings))}"
            )
        print(f"{len(runs)} runs, experiment {settings.experiment!r} at {settings.tracking_uri}")
        return 0
    results = run_sweep(runs, settings)
    failed = [r["name"] for r in results if r["status"] == "FAILED"]
    if failed:
        print(
            f"{len(failed)} runs failed (see their sweep.log and MLflow tag sweep.error): {', '.join(failed)}"
        )
    return 1 if failed else 0


def prepare_store(settings: Settings) -> str:
    """Create the tracking store's tables and the sweep's experiment before the array's tasks start:
    tasks that open a new sqlite store at the same moment race on creating its schema. Returns the
    experiment id."""
    from mlflow.tracking import MlflowClient

    from trainer.tracking import experiment_id_for

    return experiment_id_for(MlflowClient(tracking_uri=settings.tracking_uri), settings.experiment)


def submit_array(sweep_args: list[str], sbatch_args: list[str], count: int, dry_run: bool) -> int:
    """``sbatch --array=0-(n-1) [sbatch args] slurm/sweep.sbatch <sweep args>``; each task adds --index."""
    if not SBATCH_SCRIPT.is_file():
        raise SystemExit(f"{SBATCH_SCRIPT} not found: run from the repository root")
    sweep_args = [a for a in sweep_args if a != "--dry-run"]
    cmd = ["sbatch", f"--array=0-{count - 1}", *sbatch_args, str(SBATCH_SCRIPT), *sweep_args]
    print(shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        sys.exit(f"error: {err}")
