import json

import pytest

from trainer.export import export_merged


@pytest.mark.parametrize("method", ["temporal_qlora", "prefix", "adapter", "frozen"])
def test_adapters_that_hold_no_weight_update_are_refused(tmp_path, method):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    run = {"adapter": {"method": method}, "model": {"name_or_path": "unused", "quantization": "nf4"}}
    (adapter / "run_config.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match=rf"'{method}' adapter, which cannot be merged.*load_adapter"):
        export_merged(adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_folder_without_run_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_config.json not found"):
        export_merged(tmp_path, tmp_path / "merged")
