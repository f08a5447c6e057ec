import pytest
import torch
from peft import PeftModel

from models.adapters import apply_adapter, trainable_parameter_count
from models.loading import load_model


def _nf4(path):
    return load_model(path, quantization="nf4", compute_dtype=torch.float32, device="cpu")


def _lora_modules(model):
    return [n for n, _ in model.named_modules() if n.endswith("lora_A.default")]


def test_qlora_trains_saves_and_reloads(tiny_ckpt, batch, tmp_path):
    model = apply_adapter(_nf4(tiny_ckpt), "qlora", r=8, alpha=16)
    assert isinstance(model, PeftModel)
    names = _lora_modules(model)
    assert any(".vision_model." in n for n in names) and any(".language_model." in n for n in names)
    assert not any("qformer" in n for n in names)
    trainable, total = trainable_parameter_count(model)
    assert 0 < trainable < total

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses

    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files

    reloaded = PeftModel.from_pretrained(_nf4(tiny_ckpt), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)


def test_lora_on_16bit_with_checkpointing(tiny_ckpt, batch):
    base = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    model = apply_adapter(base, "lora", r=4, alpha=8, dropout=0.1, gradient_checkpointing=True)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    # B starts at zero, so at step 0 only lora_B gets a gradient (dL/dA = B^T ... = 0)
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and "vision_model" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_full_and_frozen(tiny_ckpt, batch):
    full = apply_adapter(
        load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu"), "full"
    )
    trainable, total = trainable_parameter_count(full)
    assert trainable == total

    frozen = apply_adapter(
        load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu"), "frozen"
    )
    trainable, _ = trainable_parameter_count(frozen)
    assert trainable == sum(p.numel() for p in frozen.video_projection.parameters())
    frozen(**batch).loss.backward()  # something trains, so backward works


def test_method_checks(tiny_ckpt):
    with pytest.raises(ValueError, match="method"):
        apply_adapter(torch.nn.Linear(2, 2), "ia3")
    plain = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="qlora needs"):
        apply_adapter(plain, "qlora")
    with pytest.raises(ValueError, match="temporal_qlora needs"):
        apply_adapter(plain, "temporal_qlora")
    nf4 = _nf4(tiny_ckpt)
    with pytest.raises(ValueError, match="quantized"):
        apply_adapter(nf4, "lora")
    with pytest.raises(ValueError, match="quantized"):
        apply_adapter(nf4, "temporal_lora")
    with pytest.raises(ValueError, match="gate settings"):
        apply_adapter(nf4, "qlora", gate={"mode": "rank"})
    with pytest.raises(ValueError, match="unknown gate setting"):
        apply_adapter(nf4, "temporal_qlora", gate={"modes": "rank"})
    with pytest.raises(ValueError, match="gate_mode"):
        apply_adapter(nf4, "temporal_qlora", gate={"mode": "soft"})
    with pytest.raises(ValueError, match="total_step"):
        apply_adapter(nf4, "adalora")


def test_parameter_count_counts_4bit_values(tiny_ckpt):
    plain = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    assert trainable_parameter_count(_nf4(tiny_ckpt))[1] == trainable_parameter_count(plain)[1]
