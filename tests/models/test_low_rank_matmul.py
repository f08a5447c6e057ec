import pytest
import torch
from peft import PeftModel
from torch import nn

from models.adapters import apply_adapter, load_adapter, save_adapter
from models.loading import load_model
from models.low_rank_matmul import NARROW, LowRankLinear, use_low_rank_linears


@pytest.mark.parametrize(("fan_in", "rank", "fan_out"), [(64, 4, 48), (48, 8, 64), (32, 16, 32)])
def test_forward_is_linear_exactly_and_gradients_match(fan_in, rank, fan_out):
    """A [rank, fan_in] then B [fan_out, rank] on 3-D input: outputs bit-identical to nn.Linear,
    gradients of x, A and B equal up to rounding."""
    torch.manual_seed(0)
    pairs = []
    for cls in (nn.Linear, LowRankLinear):
        torch.manual_seed(1)
        a, b = nn.Linear(fan_in, rank, bias=False), nn.Linear(rank, fan_out, bias=False)
        a.__class__ = b.__class__ = cls
        pairs.append((a, b))
    x = torch.randn(3, 40, fan_in)
    grad_out = torch.randn(3, 40, fan_out)
    results = []
    for a, b in pairs:
        xi = x.clone().requires_grad_(True)
        y = b(a(xi))
        y.backward(grad_out)
        results.append((y.detach(), xi.grad, a.weight.grad, b.weight.grad))
    (y0, *grads0), (y1, *grads1) = results
    assert torch.equal(y0, y1)
    for g0, g1 in zip(grads0, grads1, strict=True):
        assert g1.shape == g0.shape
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6 * g0.abs().max().item())


def test_converts_only_narrow_lora_linears_and_round_trips(tiny_ckpt, batch, tmp_path):
    def nf4():
        return load_model(tiny_ckpt, quantization="nf4", compute_dtype=torch.float32, device="cpu")

    model = apply_adapter(nf4(), "qlora", r=8, alpha=16)
    lora = [m for n, m in model.named_modules() if n.endswith((".lora_A.default", ".lora_B.default"))]
    assert lora and all(type(m) is LowRankLinear for m in lora)
    assert use_low_rank_linears(model) == 0  # already converted; other linears left alone
    assert not any(isinstance(m, LowRankLinear) for n, m in model.named_modules() if "lora_" not in n)
    wide = apply_adapter(nf4(), "qlora", r=NARROW, alpha=16)
    assert not any(isinstance(m, LowRankLinear) for m in wide.modules())

    model.train()
    model(**batch).loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in lora[1::2])
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(nf4(), tmp_path / "adapter", is_trainable=True).eval()
    assert any(type(m) is LowRankLinear for m in reloaded.modules())
    plain = PeftModel.from_pretrained(nf4(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)
        assert torch.equal(plain(**batch).logits, expected)  # the forward is nn.Linear's
