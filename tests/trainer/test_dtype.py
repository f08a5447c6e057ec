"""model.dtype resolution: auto per device, and a warning for 16-bit dtypes a CPU has no kernels for."""

import logging

import pytest
import torch

from trainer import distributed
from trainer.distributed import resolve_dtype

CPU = torch.device("cpu")


def test_auto_is_float32_on_cpu_and_names_are_checked():
    assert resolve_dtype("auto", CPU) is torch.float32
    with pytest.raises(ValueError, match="model.dtype must be one of auto, float32, bfloat16, float16"):
        resolve_dtype("bf16", CPU)


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_without_its_kernels_is_kept_with_a_warning(monkeypatch, caplog, native):
    asked = []
    monkeypatch.setattr(distributed, "cpu_has_native", lambda dtype: asked.append(dtype) or native)
    with caplog.at_level(logging.WARNING, logger="trainer.distributed"):
        assert resolve_dtype("bfloat16", CPU) is torch.bfloat16
        assert resolve_dtype("float32", CPU) is torch.float32
    assert asked == [torch.bfloat16]
    warned = [r.getMessage() for r in caplog.records if "without native bfloat16 kernels" in r.getMessage()]
    assert len(warned) == (0 if native else 1)


def test_the_kernel_check_answers_for_this_cpu():
    # whatever this CPU is: the check runs and answers a bool for both 16-bit dtypes
    assert {type(distributed.cpu_has_native(d)) for d in (torch.bfloat16, torch.float16)} == {bool}
