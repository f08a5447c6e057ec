"""One configuration identity for sweeps and comparisons: a config and its logged params agree."""

from tests.conftest import REPO
from trainer.config import load_config, param_text
from trainer.experiments.config_identity import config_id, configuration

DEMO = REPO / "configs/demo.yaml"


def logged_params(overrides: list[str]) -> dict[str, str]:
    """The params a run of ``overrides`` logs to MLflow: its flat config as text plus run figures."""
    params = {k: param_text(v) for k, v in load_config(DEMO, overrides).flat().items()}
    return {**params, "world_size": "2", "model.trainable_params": "1234", "sys.num_threads": "1"}


def test_a_sweep_config_and_the_runs_params_give_one_id():
    overrides = ["adapter.r=16", "adapter.ranks={llm: 8}", "adapter.target_modules=[q_proj,v_proj]"]
    flat = load_config(DEMO, [*overrides, "seed=3"]).flat()
    params = logged_params([*overrides, "seed=0", "output_dir=/elsewhere", "tracking.run_name=x"])
    assert config_id(flat) == config_id(params)
    assert "adapter.ranks.llm" in configuration(params) and "world_size" not in configuration(params)
    assert "seed" not in configuration(flat) and "output_dir" not in configuration(flat)


def test_a_changed_setting_is_another_configuration():
    assert config_id(logged_params(["adapter.r=8"])) != config_id(logged_params(["adapter.r=16"]))
