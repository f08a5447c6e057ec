"""Sweep expansion (grids, seeds, ablation files, index/count) and one real sweep through the trainer."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import DEMO_DATA, REPO, asset_overrides, training_env
from trainer.config import ConfigError
from trainer.experiments import sweep, sweep_launch
from trainer.experiments.sweep_grid import SweepRun, expand
from trainer.experiments.sweep_launch import Settings
from trainer.experiments.sweep_slurm import prepare_store
from trainer.experiments.sweep_spec import SweepSpec, grid_group, load_sweep_file, seed_list, split_values

DEMO = str(REPO / "configs/demo.yaml")
GRID = ["adapter.method=qlora,temporal_qlora", "adapter.ranks.llm=8,16,32", "selector.k=4,8,16"]


def expand_grid(items: list[str], seeds: int | str = 1) -> list[SweepRun]:
    spec = SweepSpec("t", DEMO, seed_list(seeds), [grid_group(items)])
    return expand(spec)


def test_split_values_keeps_bracketed_lists_whole():
    assert split_values("8, 16,[q_proj,v_proj],{a: 1, b: 2}") == [
        "8",
        "16",
        "[q_proj,v_proj]",
        "{a: 1, b: 2}",
    ]
    with pytest.raises(ConfigError, match="unbalanced"):
        split_values("[a,b")
    with pytest.raises(ConfigError, match="empty"):
        split_values("8,,16")


def test_grid_is_the_full_product_times_seeds():
    runs = expand_grid(GRID, seeds=3)
    assert len(runs) == 2 * 3 * 3 * 3
    assert [r.index for r in runs] == list(range(len(runs)))
    combos = {(tuple(r.overrides[:-1]), r.seed) for r in runs}
    expected = {
        ((f"adapter.method={m}", f"adapter.ranks.llm={r}", f"selector.k={k}"), s)
        for m, r, k, s in itertools.product(("qlora", "temporal_qlora"), (8, 16, 32), (4, 8, 16), range(3))
    }
    assert combos == expected
    assert all(r.overrides[-1] == f"seed={r.seed}" for r in runs)
    # Seeds of one configuration share label and config id; different configurations do not.
    by_label = {}
    for r in runs:
        by_label.setdefault(r.label, set()).add(r.config_id)
    assert len(by_label) == 18 and all(len(ids) == 1 for ids in by_label.values())
    assert len({r.config_id for r in runs}) == 18
    assert len({r.name for r in runs}) == len(runs)
    # Stable: the same names in the same order on every expansion.
    assert [r.name for r in expand_grid(GRID, seeds=3)] == [r.name for r in runs]
    assert runs[0].name == "grid-method=qlora-llm=8-k=4-s0"
    assert runs[0].tags("t")["sweep.param.adapter.ranks.llm"] == "8"


def test_count_index_and_dry_run(capsys, tmp_path):
    argv = ["--config", DEMO, "--grid", *GRID, "--seeds", "3", "--out-root", str(tmp_path)]
    assert sweep.main([*argv, "--count"]) == 0
    assert capsys.readouterr().out.strip() == "54"
    assert sweep.main([*argv, "--index", "7", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    name = expand_grid(GRID, seeds=3)[7].name
    assert out[0].split()[:2] == ["7", name]
    assert f"output_dir={tmp_path}/demo-sweep/{name}" in out[0] and "seed=" in out[0]
    with pytest.raises(SystemExit, match="out of range"):
        sweep.main([*argv, "--index", "54"])
    assert sweep.main([*argv, "--dry-run", "--slurm", "--partition=cpu", "--time=1:00:00"]) == 0
    cmd = capsys.readouterr().out.strip()
    assert cmd.startswith("sbatch --array=0-53 --partition=cpu --time=1:00:00 slurm/sweep.sbatch --config")
    assert "--dry-run" not in cmd and "--count" not in cmd


def test_bad_grid_key_is_named_before_anything_runs():
    with pytest.raises(ConfigError, match=r"group 'grid'.*adapter\.rnak"):
        expand_grid(["adapter.rnak=8,16"])


ABLATIONS = {
    "experiment": "abl",
    "config": DEMO,
    "seeds": 2,
    "set": {"train.steps": 5},
    "variants": {
        "method": {
            "qlora": {"adapter.method": "qlora"},
            "lora": {"adapter.method": "lora", "model.quantization": "none"},
        },
    },
    "groups": [
        {"name": "methods", "grid": {"method": ["qlora", "lora"]}},
        {"name": "rank", "set": {"adapter.method": "qlora"}, "grid": {"adapter.r": [4, 8, 16]}},
        {"name": "targets", "grid": {"adapter.target_modules": [["q_proj", "v_proj"]]}},
    ],
}


def test_ablation_file_merges_groups_and_shares_identical_runs(tmp_path):
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(ABLATIONS))
    spec = load_sweep_file(path)
    assert spec.experiment == "abl" and spec.seeds == [0, 1]
    runs = expand(spec)
    # demo.yaml has adapter.r=8 and method qlora: rank=8 is the methods group's qlora run.
    assert len(runs) == (2 + 2 + 1) * 2
    shared = [r for r in runs if r.label == "methods-qlora"]
    assert [r.groups for r in shared] == [["methods", "rank"]] * 2
    assert shared[0].params == {"adapter.method": "qlora", "adapter.r": "8"}
    lora = next(r for r in runs if r.label == "methods-lora")
    assert "model.quantization=none" in lora.overrides and "train.steps=5" in lora.overrides
    targets = next(r for r in runs if r.label.startswith("targets"))
    assert 'adapter.target_modules=["q_proj", "v_proj"]' in targets.overrides
    assert {r.label for r in runs} == {
        "methods-qlora",
        "methods-lora",
        "rank-r=4",
        "rank-r=16",
        targets.label,
    }


def test_groups_select_the_runs_they_label(tmp_path, capsys):
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(ABLATIONS))
    argv = ["--sweep", str(path), "--out-root", str(tmp_path)]
    counts = {}
    for flags in ([], ["--groups", "rank"], ["--skip-groups", "rank"], ["--groups", "methods,targets"]):
        assert sweep.main([*argv, *flags, "--count"]) == 0
        counts[tuple(flags)] = int(capsys.readouterr().out)
    # rank's r=8 run is methods-qlora (labelled by methods): it belongs to the methods stage only
    assert counts[()] == 10 and counts[("--groups", "rank")] == 4
    assert counts[("--skip-groups", "rank")] == 6 == counts[("--groups", "methods,targets")]
    assert sweep.main([*argv, "--groups", "rank", "--dry-run"]) == 0
    names = [line.split()[1] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert names == ["rank-r=4-s0", "rank-r=4-s1", "rank-r=16-s0", "rank-r=16-s1"]
    with pytest.raises(ConfigError, match=r"--skip-groups: no groups \['ranks'\]"):
        sweep.main([*argv, "--skip-groups", "ranks", "--count"])


def test_seed_keys_draw_data_per_seed_within_one_configuration(tmp_path):
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump({**ABLATIONS, "seed_keys": ["seed", "data.synthvid.seed"]}))
    runs = [r for r in expand(load_sweep_file(path)) if r.label == "methods-qlora"]
    assert [r.seed for r in runs] == [0, 1]
    for run in runs:
        assert f"seed={run.seed}" in run.overrides and f"data.synthvid.seed={run.seed}" in run.overrides
    assert runs[0].config_id == runs[1].config_id  # a data seed is a seed, not another configuration
    path.write_text(yaml.safe_dump({**ABLATIONS, "seed_keys": ["data.synthvid.seed"]}))
    with pytest.raises(ConfigError, match="seed_keys"):
        load_sweep_file(path)


def test_ablation_file_errors_name_the_place(tmp_path):
    bad = dict(ABLATIONS, groups=[{"name": "m", "grid": {"method": ["qlora", "dora"]}}])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"groups\[0\] \(m\): method has no variants \['dora'\]"):
        load_sweep_file(path)
    path.write_text(yaml.safe_dump(dict(ABLATIONS, groups=[{"name": "m", "grid": {"methd": ["qlora"]}}])))
    with pytest.raises(ConfigError, match="'methd' is neither"):
        load_sweep_file(path)


def test_synthvid_experiments_file_expands(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_sweep_file("configs/synthvid/experiments.yaml")
    runs = expand(spec)
    curve = [r for r in runs if r.groups == ["curve"]]
    assert len(curve) == 5 and {r.seed for r in curve} == {0}  # the group's own seeds
    rest = [r for r in runs if r not in curve]
    assert len({r.config_id for r in rest}) * len(spec.seeds) == len(rest) and len(spec.seeds) >= 5
    baseline = next(r for r in runs if r.label == "methods-order-qlora")
    assert set(baseline.groups) >= {"methods", "rank"}
    # every configuration a pre-registered claim or baseline names is one the sweep runs
    from trainer.experiments.claims import load_comparison_spec

    comparison = load_comparison_spec("configs/synthvid/experiments.yaml")
    labels = {r.label for r in runs}
    named = set(comparison.baselines.values())
    for claim in comparison.claims:
        named |= {c.treatment for c in (claim.primary, *claim.controls)} | {claim.primary.baseline}
    assert named <= labels, named - labels
    contrasts = comparison.contrasts
    named_by_contrasts = {n for c in contrasts for n in (c.comparison.treatment, c.comparison.baseline)}
    assert named_by_contrasts <= labels, named_by_contrasts - labels
    # The Makefile's two stages split the file: make experiments holds every claim's configurations.
    stage2 = re.search(r"^SV_ABLATIONS := (.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    first = sweep.select_groups(runs, spec, None, stage2)
    second = sweep.select_groups(runs, spec, stage2, None)
    assert len(first) + len(second) == len(runs) and not {r.name for r in first} & {r.name for r in second}
    assert named <= {r.label for r in first}
    assert {c.comparison.treatment for c in contrasts} & {r.label for r in second}


def test_real_sweep_runs_records_failures_and_resumes(demo_assets, mlflow_server, tmp_path):
    """Two real tiny runs (2 seeds of QLoRA) through train.main in forked children, plus one
    combination the trainer refuses (LoRA on an NF4 base): recorded as FAILED, the sweep goes on;
    run again, the finished runs are skipped. The first sweep runs in two parts side by side (--jobs 2).

    The sweep runs as users start it, ``python -m trainer.experiments.sweep`` in a fresh process: the fork
    launcher forks from a parent that has only imported the libraries. (Forking this pytest
    process, whose earlier tests started torch's OpenMP threads, can deadlock the child.)"""
    experiment = f"sweep-test-{os.getpid()}"
    argv = [
        "--config", DEMO,
        "--grid", "adapter.method=qlora,lora",
        "--seeds", "0,1",
        "--experiment", experiment,
        "--tracking-uri", mlflow_server.uri,
        "--out-root", str(tmp_path),
        "--jobs", "2",  # two parts side by side, each forking its runs
        "--set", *asset_overrides(demo_assets), *DEMO_DATA,
        "model.quantization=nf4", "train.steps=2", "train.micro_batch_size=2", "train.count_flops=false",
        "eval.num_samples=4", "eval.batch_size=4", "eval.max_new_tokens=4", "tracking.flush_interval_s=0.2",
    ]  # fmt: skip
    first = _sweep_cli(argv)
    assert first.returncode == 1, first.stdout[-3000:]  # some runs failed
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    runs = {r.data.tags["sweep.run"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {
        "grid-method=qlora-s0",
        "grid-method=qlora-s1",
        "grid-method=lora-s0",
        "grid-method=lora-s1",
    }
    for seed in (0, 1):
        ok = runs[f"grid-method=qlora-s{seed}"]
        assert ok.info.status == "FINISHED"
        assert ok.data.tags["sweep.seed"] == str(seed) and ok.data.params["seed"] == str(seed)
        assert ok.data.tags["sweep.param.adapter.method"] == "qlora"
        assert "eval/cider" in ok.data.metrics and "train/loss" in ok.data.metrics
        assert (tmp_path / experiment / f"grid-method=qlora-s{seed}" / "summary.json").is_file()
        bad = runs[f"grid-method=lora-s{seed}"]
        assert bad.info.status == "FAILED" and "needs a 16/32-bit base" in bad.data.tags["sweep.error"]
    assert (
        runs["grid-method=qlora-s0"].data.tags["sweep.config_id"]
        == runs["grid-method=qlora-s1"].data.tags["sweep.config_id"]
    )
    status = json.loads((tmp_path / experiment / "sweep_status.json").read_text())
    assert [s["status"] for s in status.values()] == ["FINISHED", "FINISHED", "FAILED", "FAILED"]
    assert not list((tmp_path / experiment).glob(".part*"))  # the parts' result files are merged away

    again = _sweep_cli([*argv, "--index", "0"])
    assert "grid-method=qlora-s0: SKIPPED" in again.stdout, again.stdout[-3000:]

    from trainer.experiments.compare import compare

    result = compare(mlflow_server.uri, experiment, tmp_path / "cmp", log_to_mlflow=False)
    assert len(result.table) == 1 and int(result.table["n"].iloc[0]) == 2  # two seeds, one configuration
    assert "eval/cider" in result.quality and Path(tmp_path / "cmp" / "table.md").is_file()


def _sweep_cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.experiments.sweep", *argv],
        cwd=REPO,
        env=training_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1200,
    )


def test_prepared_sqlite_store_takes_array_tasks_starting_at_once(tmp_path):
    """`--slurm` prepares the store before sbatch: tasks then only open it, never create it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = Settings(
        experiment="array", config=DEMO, out_root=tmp_path, tracking_uri=uri, launcher="python", num_gpus=1
    )
    exp_id = prepare_store(settings)
    assert prepare_store(settings) == exp_id and (tmp_path / "mlflow.db").is_file()
    task = (
        "import sys; from mlflow.tracking import MlflowClient; from trainer.tracking import experiment_id_for; "
        "c = MlflowClient(sys.argv[1]); c.create_run(experiment_id_for(c, 'array'), run_name=sys.argv[2])"
    )
    tasks = [
        subprocess.Popen([sys.executable, "-c", task, uri, f"task{i}"], cwd=REPO, env=training_env(), stderr=subprocess.PIPE)
        for i in range(3)
    ]  # fmt: skip
    for proc in tasks:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    runs = MlflowClient(uri).search_runs([exp_id])
    assert sorted(r.info.run_name for r in runs) == ["task0", "task1", "task2"]


def test_parts_share_one_queue_longest_first(tmp_path, monkeypatch):
    """--jobs 2: every run once, the two longest started first, one in each part (the interleaved
    halves of before started r0 and r1), and every run still reported in the sweep's order."""
    steps = [100, 400, 100, 100, 400, 100, 100, 100]
    runs = [
        SweepRun(i, f"r{i}-{n}", f"r{i}", 0, ["g"], [], {}, {}, f"id{i}", train_steps=n)
        for i, n in enumerate(steps)
    ]
    started = tmp_path / "started.txt"

    def fake_execute(run: SweepRun, settings: Settings) -> str:
        with started.open("a") as log:
            log.write(f"{run.name} {os.getpid()}\n")
        time.sleep(run.train_steps / 1000)
        return "FINISHED"

    monkeypatch.setattr(sweep_launch, "execute", fake_execute)
    settings = Settings(
        "queue", DEMO, tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db", launcher="subprocess"
    )
    results = sweep_launch.run_in_parts(runs, settings, jobs=2)
    lines = [line.split() for line in started.read_text().splitlines()]
    assert sorted(name for name, _ in lines) == sorted(r.name for r in runs)  # each exactly once
    assert {name for name, _ in lines[:2]} == {"r1-400", "r4-400"}  # the two long ones first
    pids = {pid for _, pid in lines[:2]}
    assert len(pids) == 2  # one in each part
    assert [r["index"] for r in results] == list(range(len(runs)))
    assert all(r["status"] == "FINISHED" for r in results)
    assert not list((tmp_path / "sweeps" / "queue").glob(".queue-*"))


def test_sweep_turns_mlflow_telemetry_off_unless_the_user_chose(monkeypatch):
    """Its background address lookup, caught by a fork, hangs the forked run (see sweep.main)."""
    from mlflow.telemetry.utils import is_telemetry_disabled

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert sweep.main(["--config", DEMO, "--grid", "adapter.r=8", "--count"]) == 0
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and is_telemetry_disabled()
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    sweep.main(["--config", DEMO, "--grid", "adapter.r=8", "--count"])
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
