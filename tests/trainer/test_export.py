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


def test_a_mixed_bit_width_base_merges(tmp_path):
    """{vision: int8, llm: nf4}: both towers are dequantized (each from its own format) before the
    LoRA update is merged, so the merged 16-bit model computes what the adapter did on that base."""
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel

    from models.adapters import apply_adapter
    from models.loading import dequantize_model, load_model
    from models.presets import create_pretrained
    from models.processor import VideoLlamaProcessor
    from tests.models.conftest import CORPUS

    quantization = {"vision": "int8", "llm": "nf4"}
    base_dir = create_pretrained("tiny", tmp_path / "base", CORPUS, seed=0)

    def mixed_base():
        return load_model(base_dir, quantization=quantization, compute_dtype=torch.float32)

    model = apply_adapter(mixed_base(), "qlora")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-zero update (B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=gen)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    processor = VideoLlamaProcessor.from_pretrained(base_dir)
    processor.save_pretrained(adapter)
    run = {
        "adapter": {"method": "qlora"},
        "model": {"name_or_path": str(base_dir), "quantization": quantization},
    }
    (adapter / "run_config.json").write_text(json.dumps(run))

    merged = load_model(
        export_merged(adapter, tmp_path / "merged", dtype=torch.float32),
        quantization="none",
        compute_dtype=torch.float32,
    ).eval()
    assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in merged.modules())
    tokens = processor.pad([processor.training_example(c) for c in CORPUS[:2]])
    batch = {"pixel_values": torch.randn(2, 4, 3, 64, 64, generator=gen), **tokens}
    dequantized = dequantize_model(mixed_base(), quantization).eval()
    with torch.no_grad():
        without_update = dequantized(**batch).logits
        expected = PeftModel.from_pretrained(dequantized, adapter).eval()(**batch).logits
        got = merged(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, without_update, atol=1e-2)  # the update is in the merged weights
