import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F

from models.adapters import apply_adapter, trainable_parameter_count
from models.bottleneck import (
    BottleneckAdapter,
    BottleneckConfig,
    BottleneckLayer,
    add_bottleneck_adapters,
    load_bottleneck,
    save_bottleneck,
)
from models.loading import load_model


def _nf4(path):
    return load_model(path, quantization="nf4", compute_dtype=torch.float32, device="cpu")


def _wrapped(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, BottleneckLayer)}


def test_adapter_formula_against_reference():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(6, 3, "gelu", torch.float32, torch.device("cpu"))
    assert torch.count_nonzero(adapter.up.weight) == 0 and torch.count_nonzero(adapter.up.bias) == 0
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    h = torch.randn(2, 5, 6)
    down, up = adapter.down, adapter.up
    expected = h + F.gelu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias
    torch.testing.assert_close(adapter(h), expected)


def test_starts_as_the_base_model_on_a_4bit_base(tiny_ckpt, batch):
    base = _nf4(tiny_ckpt).eval()
    with torch.no_grad():
        want = base(**batch).logits
    targets = add_bottleneck_adapters(base, BottleneckConfig(dim=4))
    n_layers = base.config.text_config.num_hidden_layers
    assert len(targets) == 2 * n_layers  # after attention and after MLP, in every LLM layer
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in _wrapped(base).values())
    with torch.no_grad():
        assert torch.equal(base(**batch).logits, want)


@pytest.mark.parametrize(
    ("placement", "towers"), [("vision", {"vision_model"}), ("both", {"vision_model", "language_model"})]
)
def test_placement(tiny_ckpt, placement, towers):
    model = apply_adapter(_nf4(tiny_ckpt), "adapter", placement=placement)
    assert {name.split(".")[0] for name in _wrapped(model)} == towers


def test_trains_only_adapters_and_projection_on_4bit(tiny_ckpt, batch):
    model = apply_adapter(_nf4(tiny_ckpt), "adapter", bottleneck={"dim": 8, "activation": "relu"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n or n.startswith("video_projection.") for n in trainable)
    dim = model.config.text_config.hidden_size
    per_block = 2 * dim * 8 + 8 + dim
    n_blocks = len(_wrapped(model))
    projection = sum(p.numel() for p in model.video_projection.parameters())
    assert trainable_parameter_count(model)[0] == n_blocks * per_block + projection
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses


def test_save_load_checks_the_layout(tiny_ckpt, tmp_path):
    model = _nf4(tiny_ckpt)
    add_bottleneck_adapters(model, BottleneckConfig(dim=4, groups=["llm"]))
    save_bottleneck(model, tmp_path / "a")
    config = (tmp_path / "a/adapter_config.json").read_text()
    assert '"peft_type": "BOTTLENECK"' in config
    # The same weights cannot go onto adapters of another width.
    (tmp_path / "a/adapter_config.json").write_text(config.replace('"dim": 4', '"dim": 5'))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_bottleneck(_nf4(tiny_ckpt), tmp_path / "a")
    (tmp_path / "a/adapter_config.json").write_text(config.replace('"llm"', '"vision"'))
    with pytest.raises(KeyError, match="does not fit"):
        load_bottleneck(_nf4(tiny_ckpt), tmp_path / "a")


def test_config_checks():
    with pytest.raises(ValueError, match="activation"):
        BottleneckConfig(activation="swish")
    with pytest.raises(ValueError, match="groups"):
        BottleneckConfig(groups=["audio"])
    with pytest.raises(ValueError, match="dim"):
        BottleneckConfig(dim=0)
