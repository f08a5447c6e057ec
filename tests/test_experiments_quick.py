"""`make experiments QUICK=1` end to end: observability report, pretraining, the whole sweep file
(1 seed, 3 steps per run, two runs side by side), the comparison with the pre-registered claims and
the README section, all under a temporary SV_ROOT."""

import json
import subprocess

import pytest

from tests.conftest import REPO, training_env

pytestmark = pytest.mark.e2e

VERDICTS = {"supported", "not supported", "refuted"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthvid-quick")
    readme_before = (REPO / "README.md").read_text()
    # -o: the set-up stamp counts as current (the suite runs inside the installed environment).
    proc = subprocess.run(
        ["make", "-o", ".venv/.installed", "experiments", "QUICK=1", f"SV_ROOT={root}"],
        cwd=REPO,
        env=training_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    (root / "make.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert (REPO / "README.md").read_text() == readme_before  # QUICK writes its own copy only
    return root


def test_every_run_of_the_sweep_file_finishes(quick):
    status = json.loads((quick / "sweeps" / "synthvid-quick" / "sweep_status.json").read_text())
    assert len(status) >= 15  # every configuration once (one seed; the curve runs equal others at 3 steps)
    assert {s["status"] for s in status.values()} == {"FINISHED"}, [
        n for n, s in status.items() if s["status"] != "FINISHED"
    ]


def test_the_claims_are_decided_with_their_numbers(quick):
    claims = json.loads((quick / "results" / "claims.json").read_text())
    assert [c["claim"] for c in claims] == ["temporal", "ranks", "frames", "rank_law"]
    for claim in claims:
        assert claim["verdict"] in VERDICTS, claim
        primary = claim["primary"]
        assert primary["ci_low"] <= primary["delta"] <= primary["ci_high"]
        assert primary["p_value"] <= primary["p_adjusted"] <= 1
    assert claims[0]["controls"], "the temporal claim carries its ordered - shuffled control"


def test_results_files_and_readme_section(quick):
    results = quick / "results"
    for name in (
        "observability.json",
        "observability.png",
        "table.md",
        "deltas.md",
        "claims.md",
        "contrasts.md",
    ):
        assert (results / name).is_file(), name
    # the stage-2 contrasts (make ablations) are listed, not run; the stage-1 ones are paired
    contrasts = (results / "contrasts.md").read_text()
    assert "| not run |" in contrasts and "temporal QLoRA vs QLoRA where time should not matter" in contrasts
    observability = json.loads((results / "observability.json").read_text())
    assert {row["task"] for row in observability["rows"]} >= {"sparse", "order"}
    readme = (quick / "README.md").read_text()
    section = readme[readme.index("<!-- results:start -->") : readme.index("<!-- results:end -->")]
    assert "**The claims**" in section and "Temporal-aware QLoRA" in section


def test_the_sweep_data_is_written_beside_the_pretraining(quick):
    """synthvid-inputs writes every run's SynthVid shards before the sweep: no run writes its own."""
    log = (quick / "make.log").read_text()
    assert "SynthVid shard folders written for" in log
    run_logs = list((quick / "sweeps" / "synthvid-quick").glob("*/sweep.log"))
    assert run_logs
    writers = [p.parent.name for p in run_logs if "data.train_shards is null: writing" in p.read_text()]
    assert not writers, f"runs that wrote their own training shards: {writers}"
