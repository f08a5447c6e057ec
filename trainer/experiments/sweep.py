"""Run a grid of training runs into one MLflow experiment, in sequence or as a SLURM array.

::

    python -m trainer.experiments.sweep --config configs/demo.yaml \\
        --grid adapter.method=qlora,temporal_qlora adapter.r=8,16,32 selector.k=4,8 --seeds 3
    python -m trainer.experiments.sweep --sweep configs/synthvid/experiments.yaml   # named ablation groups
    python -m trainer.experiments.sweep … --count | --dry-run | --index 7 | --jobs 2 | --slurm --partition=gpu

A sweep is a list of *groups*, each the cartesian product of its *axes*, times the seeds. An axis
is a config key with values (``adapter.r: [8, 16, 32]``) or a named list of *variants*, each a set
of overrides that go together (``lora: {adapter.method: lora, model.quantization: none}``), so an
ablation need not be a full product. ``--grid`` is one group whose axes are all keys. Every
combination is resolved into its full run config up front (a typo stops the sweep before any run
starts); combinations with the same resolved config (a baseline shared by two ablations) run once.

Each run gets a stable name (from its group, axis labels and seed), its own ``output_dir`` under
``--out-root/<experiment>/`` and MLflow tags: ``sweep.name``, ``sweep.run``, ``sweep.groups``,
``sweep.seed``, ``sweep.config_id`` (``config_identity``: a hash of the resolved config minus seed
and paths, what ``compare`` groups seeds by), ``sweep.label`` and ``sweep.param.<key>`` for every
swept key.
A run already FINISHED in the experiment is skipped, so a stopped sweep resumes where it was (an
unfinished run continues from its checkpoint into its MLflow run, as ``train.py`` does). A failed run
is recorded (MLflow status FAILED, ``sweep.error`` tag, ``sweep_status.json``) and the sweep goes on.

The parts: ``sweep_spec`` (groups, axes, variants; the sweep file), ``sweep_grid`` (expansion into
runs), ``sweep_launch`` (running them in sequence), ``sweep_slurm`` (the array job), this module
(the command line).

``--groups G1,G2`` / ``--skip-groups G1,G2`` run the runs that those groups label (or all but them):
the stages of one sweep file, e.g. ``make experiments`` and ``make ablations`` from the SynthVid one.
``--index`` and ``--count`` count within the selection.

``--set`` overrides every run, the groups' own settings included (``--set train.steps=3`` makes a
quick check of a whole sweep file). ``--jobs N`` runs N runs side by side, each of N processes
taking the next run from one queue, longest first. ``--prepare-data`` only writes the SynthVid
shards the runs would generate, so that it can run while their base model is being pretrained.

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
import os
import shlex
import sys
from pathlib import Path

from trainer.config import ConfigError, load_config
from trainer.experiments.sweep_grid import SweepRun, expand
from trainer.experiments.sweep_launch import Settings, prepare_data, run_in_parts, train_command
from trainer.experiments.sweep_slurm import prepare_store, submit_array
from trainer.experiments.sweep_spec import SweepSpec, grid_group, load_sweep_file, seed_list, split_values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.experiments.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="base run config (with --grid); a sweep file names its own")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2", help="axes of a full product")
    parser.add_argument("--sweep", help="YAML sweep file of named ablation groups")
    parser.add_argument("--seeds", default=None, help="count (3 → seeds 0,1,2) or list (0,5,7); default 1")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of every run (above the groups')"
    )
    parser.add_argument(
        "--experiment", help="MLflow experiment (default: the sweep file's, or <config>-sweep)"
    )
    parser.add_argument("--tracking-uri", help="default: the base config's tracking.uri")
    parser.add_argument("--out-root", default="outputs/sweeps", help="runs write to OUT_ROOT/EXPERIMENT/NAME")
    parser.add_argument("--launcher", choices=("fork", "python", "deepspeed"), default="fork")
    parser.add_argument("--num-gpus", type=int, default=1, help="ranks per run with --launcher deepspeed")
    parser.add_argument(
        "--groups",
        default=None,
        metavar="G1,G2",
        help="only the runs these groups label (a sweep file's stages)",
    )
    parser.add_argument(
        "--skip-groups", default=None, metavar="G1,G2", help="every run but those these label"
    )
    parser.add_argument("--index", type=int, help="run only combination INDEX (a SLURM array task)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs side by side (each single-threaded is best on few cores)"
    )
    parser.add_argument(
        "--prepare-data",
        action="store_true",
        help="write the SynthVid shards the runs generate (their base model may not exist yet), run nothing",
    )
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
    spec.forced.update(dict(_split_override(o) for o in args.set))
    return spec


def select_groups(
    runs: list[SweepRun], spec: SweepSpec, only: str | None, skip: str | None
) -> list[SweepRun]:
    """The runs whose label comes from a group in ``only`` (comma-separated; None: any) and not from
    one in ``skip``. A run two groups share is labelled by the first (`sweep_grid.expand`), so it
    belongs to that group's stage alone, and the stages of one file never run a configuration twice.
    """
    names = {g.name for g in spec.groups}
    chosen = {}
    for flag, text in (("--groups", only), ("--skip-groups", skip)):
        listed = set(split_values(text)) if text else set()
        unknown = sorted(listed - names)
        if unknown:
            raise ConfigError(f"{flag}: no groups {unknown} in the sweep; it has {sorted(names)}")
        chosen[flag] = listed
    return [
        r
        for r in runs
        if (not only or r.groups[0] in chosen["--groups"]) and r.groups[0] not in chosen["--skip-groups"]
    ]


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form section.key=value")
    key, value = item.split("=", 1)
    return key.strip(), value


def main(argv: list[str] | None = None) -> int:
    # MLflow's telemetry looks up its server's address from a background thread. A run forked while
    # that thread holds glibc's resolver lock inherits the lock held and hangs at its first lookup
    # (torch's TCPStore names its socket with getnameinfo): two SynthVid runs hung that way for 20
    # minutes. Without internet the lookup is wasted anyway; a user's explicit setting is kept.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    argv = list(sys.argv[1:] if argv is None else argv)
    sbatch_args: list[str] | None = None
    if "--slurm" in argv:  # everything after --slurm goes to sbatch
        cut = argv.index("--slurm")
        argv, sbatch_args = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    runs = select_groups(expand(spec), spec, args.groups, args.skip_groups)
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
    if args.prepare_data:
        written = prepare_data(runs, settings)
        print(f"{written} SynthVid shard folders written for {len(runs)} runs")
        return 0
    if args.dry_run:
        for run in runs:
            print(
                f"{run.index:4d}  {run.name}  [{','.join(run.groups)}]  {shlex.join(train_command(run, settings))}"
            )
        print(f"{len(runs)} runs, experiment {settings.experiment!r} at {settings.tracking_uri}")
        return 0
    results = run_in_parts(runs, settings, args.jobs)
    failed = [r["name"] for r in results if r["status"] == "FAILED"]
    if failed:
        print(
            f"{len(failed)} runs failed (see their sweep.log and MLflow tag sweep.error): {', '.join(failed)}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        sys.exit(f"error: {err}")
