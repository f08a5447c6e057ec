"""data.decoder and data.decode_timeout_s are checked before anything loads (trainer.run_setup)."""

import pytest

from tests.conftest import REPO
from trainer.config import ConfigError, load_config
from trainer.run_setup import check_decoder_keys


def _cfg(*overrides: str):
    return load_config(REPO / "configs/demo.yaml", list(overrides))


def test_defaults_are_decord_with_a_30_s_limit():
    cfg = _cfg()
    assert (cfg.data.decoder, cfg.data.decode_timeout_s) == ("decord", 30.0)
    check_decoder_keys(cfg)
    check_decoder_keys(_cfg("data.decoder=pyav", "data.decode_timeout_s=null"))
    check_decoder_keys(_cfg("data.decode_timeout_s=0"))


def test_unknown_decoder_and_negative_limit_are_refused_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"unknown decoder 'torchcodec' \(data.decoder\): choose one of decord, pyav"
    ):
        check_decoder_keys(_cfg("data.decoder=torchcodec"))
    with pytest.raises(ConfigError, match="data.decode_timeout_s must be null, 0 .* got -1"):
        check_decoder_keys(_cfg("data.decode_timeout_s=-1"))
