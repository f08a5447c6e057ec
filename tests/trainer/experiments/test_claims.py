"""Pre-registered claims: the sweep file's sections, paired differences from per-clip outcomes logged
to a real MLflow server, Holm over the claims, controls, verdicts, and the README section."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from trainer.config import ConfigError
from trainer.experiments import compare as cmp
from trainer.experiments import results_readme
from trainer.experiments.claims import (
    Claim,
    Comparison,
    decide,
    load_comparison_spec,
    markdown_claims,
    paired_difference,
)

CLIPS = [f"{i:04d}" for i in range(120)]
# Per configuration, the probability that a clip's forced choice is right, ordered and shuffled.
ACCURACY = {
    "base": (0.50, 0.50),
    "better": (0.80, 0.45),  # better than base, and only with the frames in order
    "appearance": (0.80, 0.80),  # better than base, but just as good shuffled: not temporal
    "worse": (0.20, 0.20),
}


def outcomes(config: str, seed: int) -> dict[str, dict[str, float]]:
    gen = np.random.default_rng([seed, list(ACCURACY).index(config)])
    ordered, shuffled = ACCURACY[config]
    return {
        "choice_acc_pct": {c: float(gen.random() < ordered) for c in CLIPS},
        "shuffled/choice_acc_pct": {c: float(gen.random() < shuffled) for c in CLIPS},
    }


def long_table() -> pd.DataFrame:
    rows = [
        (config, seed, clip, metric, value)
        for config in ACCURACY
        for seed in range(3)
        for metric, by_clip in outcomes(config, seed).items()
        for clip, value in by_clip.items()
    ]
    return pd.DataFrame(rows, columns=["config", "seed", "clip", "metric", "value"])


def claim(name: str, treatment: str, control: bool = True) -> Claim:
    controls = (
        (Comparison(treatment, treatment, "choice_acc_pct", "shuffled/choice_acc_pct"),) if control else ()
    )
    return Claim(name, f"{treatment} beats base", Comparison(treatment, "base", "choice_acc_pct"), controls)


def test_verdicts_follow_the_primary_and_the_controls():
    results = {
        r["claim"]: r
        for r in decide(
            long_table(),
            [
                claim("temporal", "better"),
                claim("no-time", "appearance"),
                claim("harm", "worse", control=False),
                claim("missing", "never-ran"),
            ],
        )
    }
    assert results["temporal"]["verdict"] == "supported"
    assert results["temporal"]["primary"]["delta"] == pytest.approx(30, abs=8)
    assert results["no-time"]["verdict"] == "not supported" and "control" in results["no-time"]["reason"]
    assert results["harm"]["verdict"] == "refuted"
    assert results["missing"]["verdict"] == "not decided" and "never-ran" in results["missing"]["reason"]
    # Holm over the three decided claims: each adjusted p is at least its raw one
    for name in ("temporal", "no-time", "harm"):
        p = results[name]["primary"]
        assert p["p_adjusted"] >= p["p_value"]


def test_a_failed_positive_control_qualifies_not_supported_and_changes_no_verdict():
    learnable = Comparison("better", "base", "choice_acc_pct")  # the benchmark can show an effect
    flat = Comparison("base", "base", "choice_acc_pct", "shuffled/choice_acc_pct")  # it cannot
    claims = [
        Claim(
            "blind",
            "base beats itself",
            Comparison("base", "base", "choice_acc_pct"),
            (),
            flat,
        ),
        Claim(
            "sighted",
            "appearance is temporal",
            claim("x", "appearance").primary,
            claim("x", "appearance").controls,
            learnable,
        ),
        Claim("lucky", "better beats base", Comparison("better", "base", "choice_acc_pct"), (), flat),
    ]
    results = {r["claim"]: r for r in decide(long_table(), claims)}
    blind = results["blind"]
    assert blind["verdict"] == "not supported" and not blind["positive_control"]["holds"]
    assert "positive control does not hold" in blind["reason"]
    sighted = results["sighted"]
    assert sighted["positive_control"]["holds"] and sighted["positive_control"]["delta"] == pytest.approx(
        30, abs=8
    )
    assert sighted["verdict"] == "not supported" and "positive control" not in sighted["reason"]
    assert results["lucky"]["verdict"] == "supported"  # the positive control never changes a verdict
    table = markdown_claims(list(results.values()))
    assert "positive control" in table.splitlines()[0] and "(does not hold)" in table


def test_paired_difference_uses_only_what_both_have():
    table = long_table()
    table = table[~((table["config"] == "better") & (table["seed"] == 2))]
    d = paired_difference(table, Comparison("better", "base", "choice_acc_pct"))
    assert d.num_seeds == 2 and d.num_clips == len(CLIPS)


def test_sweep_file_sections_are_checked(tmp_path):
    path = tmp_path / "sweep.yaml"
    body = {
        "metric": "choice_acc_pct",
        "baselines": {"order": "base"},
        "claims": {"t": {"statement": "s", "primary": {"baseline": "base", "treatment": "better"}}},
    }
    path.write_text(yaml.safe_dump(body))
    spec = load_comparison_spec(path)
    assert spec.claims[0].primary == Comparison("better", "base", "choice_acc_pct")
    assert spec.claims[0].positive_control is None
    body["claims"]["t"]["positive_control"] = {"baseline": "base", "treatment": "better"}
    path.write_text(yaml.safe_dump(body))
    assert load_comparison_spec(path).claims[0].positive_control == Comparison(
        "better", "base", "choice_acc_pct"
    )
    body["claims"]["t"]["positive_contol"] = body["claims"]["t"].pop("positive_control")
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="positive_contol"):
        load_comparison_spec(path)
    del body["claims"]["t"]["positive_contol"]
    body["claims"]["t"]["primary"]["direction"] = "up"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="direction"):
        load_comparison_spec(path)
    body["claims"]["t"] = {"statement": "s"}
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="primary"):
        load_comparison_spec(path)


@pytest.fixture(scope="module")
def compared_claims(mlflow_server, tmp_path_factory):
    """Runs of the four configurations on task `order`, with per-clip outcomes as artifacts."""
    client = MlflowClient(mlflow_server.uri)
    experiment = f"claims-test-{os.getpid()}"
    exp_id = client.create_experiment(experiment)
    for config, (ordered, _) in ACCURACY.items():
        for seed in range(3):
            run_id = client.create_run(exp_id, run_name=f"{config}-s{seed}").info.run_id
            params = {"seed": seed, "adapter.method": config, "data.synthvid.task": "order"}
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            client.set_tag(run_id, "sweep.label", config)
            client.log_metric(run_id, "eval/choice_acc_pct", 100 * ordered, step=5)
            client.log_dict(run_id, {"choice_acc_pct": {"stale": 1.0}}, "eval/per_clip_step2.json")
            client.log_dict(run_id, outcomes(config, seed), "eval/per_clip_step5.json")
            client.set_terminated(run_id)
    root = tmp_path_factory.mktemp("claims")
    sweep = root / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "metric": "choice_acc_pct",
                "baselines": {"order": "base"},
                "claims": {
                    "temporal": {
                        "statement": "ordered frames help",
                        "primary": {"baseline": "base", "treatment": "better"},
                        "controls": [{"treatment": "better", "baseline_metric": "shuffled/choice_acc_pct"}],
                    }
                },
                "contrasts": {
                    "appearance_vs_better": {
                        "statement": "appearance alone is as good as order",
                        "treatment": "appearance",
                        "baseline": "better",
                    },
                    "shuffled_gap": {"treatment": "appearance", "baseline_metric": "shuffled/choice_acc_pct"},
                    "later_stage": {"treatment": "not-launched", "baseline": "base"},
                },
            }
        )
    )
    out = root / "out"
    result = cmp.compare(
        mlflow_server.uri,
        experiment,
        out,
        log_to_mlflow=False,
        split_by="data.synthvid.task",
        sweep_file=sweep,
    )
    return result, out


def test_compare_writes_deltas_and_claims_from_the_final_per_clip_file(compared_claims, tmp_path):
    result, out = compared_claims
    deltas = pd.read_csv(out / "deltas.csv").set_index("configuration")
    assert set(deltas.index) == {"better", "appearance", "worse"}  # the baseline is not compared with itself
    assert deltas.loc["better", "num_clips"] == len(CLIPS)  # the stale step-2 file was not read
    assert deltas.loc["better", "ci_low"] > 0 > deltas.loc["worse", "ci_high"]
    claims_md = (out / "claims.md").read_text()
    assert "ordered frames help" in claims_md and "**supported**" in claims_md
    readme = tmp_path / "README.md"
    readme.write_text("# R\n<!-- results:start -->\n<!-- results:end -->\n")
    results_readme.main(["--comparison", str(out), "--readme", str(readme)])
    text = readme.read_text()
    assert "**The claims**" in text and "ordered frames help" in text and "`better` − `base`" in text


def test_declared_contrasts_are_paired_and_a_missing_stage_is_listed_not_fatal(compared_claims, tmp_path):
    _, out = compared_claims
    rows = pd.read_csv(out / "contrasts.csv").set_index("contrast")
    assert set(rows.index) == {"appearance_vs_better", "shuffled_gap", "later_stage"}
    same = rows.loc["appearance_vs_better"]  # both 0.80 ordered: the CI covers 0
    assert same["ci_low"] < 0 < same["ci_high"] and same["num_seeds"] == 3
    assert abs(rows.loc["shuffled_gap", "delta"]) < 10  # appearance scores as well shuffled
    assert "not-launched" in rows.loc["later_stage", "not_run"]
    table = (out / "contrasts.md").read_text()
    assert "appearance alone is as good as order" in table and "| not run |" in table
    assert "`appearance`: choice_acc_pct − shuffled/choice_acc_pct" in table
    readme = tmp_path / "README.md"
    readme.write_text("# R\n<!-- results:start -->\n<!-- results:end -->\n")
    results_readme.main(["--comparison", str(out), "--readme", str(readme)])
    assert "The declared contrasts" in readme.read_text()


def test_contrasts_section_is_checked(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"metric": "m", "contrasts": {"c": {"treatment": "a", "basline": "b"}}}))
    with pytest.raises(ConfigError, match=r"contrasts\.c: unknown keys \['basline'\]"):
        load_comparison_spec(path)
    path.write_text(yaml.safe_dump({"contrasts": {"c": {"treatment": "a", "baseline": "b"}}}))
    with pytest.raises(ConfigError, match="no metric"):
        load_comparison_spec(path)
