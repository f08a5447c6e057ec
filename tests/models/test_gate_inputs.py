"""The temporal gate's inputs and its learning on its own: per-clip standardisation, the input table
(position, deltas), config validation, and a gate trained on a separable toy signal."""

import pytest
import torch
from peft import get_peft_model
from torch import nn

from models.temporal_lora import (
    FrameGateContext,
    TemporalLoraConfig,
    frame_table,
    gate_parameter_count,
    standardize_over_clip,
    table_columns,
    temporal_layers,
)
from trainer.evaluation.gate_metrics import auroc


def test_standardize_over_clip_gives_z_scores_and_zeros_for_constant_scores():
    gen = torch.Generator().manual_seed(0)
    scores = 0.3 + 0.01 * torch.rand(4, 6, 3, generator=gen)  # [B, K, S], SynthVid-sized spreads
    scores[1, :, 2] = 0.019  # one clip whose motion is the same in every frame
    z = standardize_over_clip(scores)
    assert z.shape == (4, 6, 3)
    varying = torch.ones(4, 3, dtype=torch.bool)
    varying[1, 2] = False
    mean, std = z.mean(dim=1), z.std(dim=1, correction=0)
    assert torch.allclose(mean[varying], torch.zeros(11), atol=1e-4)
    assert torch.allclose(std[varying], torch.ones(11), atol=1e-4)
    assert torch.equal(z[1, :, 2], torch.zeros(6))  # constant: exactly 0, not NaN
    # Order-equivariant and invariant to each clip's offset and scale of a score.
    assert torch.allclose(standardize_over_clip(scores.flip(1)), z.flip(1), atol=1e-5)
    assert torch.allclose(standardize_over_clip(5.0 * scores + 2.0), z, atol=1e-4)
    assert torch.equal(standardize_over_clip(scores[:, :1]), torch.zeros(4, 1, 3))  # K = 1


def test_frame_table_holds_scores_position_and_deltas():
    scores = torch.tensor([[[0.1, 0.2, 0.3], [0.4, 0.2, 0.1], [0.7, 0.2, 0.2]]])  # [1, 3, 3]
    raw = frame_table(scores, standardize=False)
    assert raw.shape == (1, 3, 7) and raw.dtype == torch.float32
    assert torch.equal(raw[..., :3], scores)
    assert torch.allclose(raw[0, :, 3], torch.tensor([0.0, 0.5, 1.0]))  # k / (K - 1)
    assert torch.allclose(raw[0, :, 4:], torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, -0.2], [0.3, 0.0, 0.1]]))
    standardized = frame_table(scores, standardize=True)
    assert torch.allclose(standardized[..., :3], standardize_over_clip(scores))
    assert torch.equal(standardized[..., 3], raw[..., 3])  # positions are never standardised
    assert torch.allclose(standardized[0, 1:, 4:], standardized[0, 1:, :3] - standardized[0, :-1, :3])
    # Which columns a gate reads, and how many weights it has.
    assert table_columns(["motion", "entropy"]) == [0, 2]
    assert table_columns(["motion", "position", "delta"]) == [2, 3, 6]
    assert (
        gate_parameter_count(["motion", "position", "delta"], hidden=4, in_features=10) == (3 + 1) * 4 + 4 + 1
    )
    assert gate_parameter_count(["motion", "feature"], hidden=4, in_features=10) == 12 * 4 + 4 + 1
    assert gate_parameter_count([], hidden=4, in_features=10) == 1  # the constant gate: one logit


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gate_inputs": ["motion", "speed"]}, "adapter.gate.inputs"),
        ({"gate_inputs": ["motion", "motion"]}, "distinct"),
        ({"gate_inputs": ["delta", "position"]}, "'delta' differences the chosen frame scores"),
        ({"gate_inputs": [], "gate_shuffle": True}, "no inputs to shuffle"),
        ({"gate_init_std": -0.1}, "adapter.gate.init_std"),
    ],
)
def test_bad_gate_settings_name_the_key(fields, message):
    with pytest.raises(ValueError, match=message):
        TemporalLoraConfig(target_modules=["fc"], **fields)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _clips(gen: torch.Generator, b: int = 16, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [B, K, 3] at SynthVid's scale: motion 0.019 on a 3-frame event, 0.005 elsewhere (noise
    0.002); entropy and scene change uninformative. Returns (scores, event bool [B, K])."""
    start = torch.randint(0, k - 2, (b, 1), generator=gen)
    position = torch.arange(k)[None]
    event = (position >= start) & (position < start + 3)
    motion = 0.005 + 0.014 * event + 0.002 * torch.randn(b, k, generator=gen)
    entropy = 0.29 + 0.02 * torch.randn(b, k, generator=gen)
    scene = 0.1 + 0.02 * torch.randn(b, k, generator=gen)
    return torch.stack([entropy, scene, motion], dim=-1), event


def _train_gate(seed: int, lr: float, **gate_fields) -> tuple[float, float]:
    """50 Adam steps supervising one layer's gate to be 1 on event frames and 0 elsewhere (BCE).
    Returns (AUROC, mean gate on event frames − on the others) on fresh clips."""
    torch.manual_seed(seed)
    config = TemporalLoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["fc"],
        temporal_modules="fc",
        gate_inputs=["motion", "entropy"],
        **gate_fields,
    )
    layer = temporal_layers(get_peft_model(_Toy(), config))["fc"]
    context = layer.frame_gate_context = FrameGateContext()
    optimizer = torch.optim.Adam([p for n, p in layer.named_parameters() if "lora_gate" in n], lr=lr)
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.zeros(16 * 8, 1, 8)  # the layer input does not matter to a score-only gate
    for _ in range(50):
        scores, event = _clips(gen)
        context.set_frame_scores(scores)
        loss = nn.functional.binary_cross_entropy(layer.frame_gate("default", x), event.flatten().float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores, event = _clips(gen)
    context.set_frame_scores(scores)
    with torch.no_grad():
        gate = layer.frame_gate("default", x)
    event = event.flatten()
    return auroc(gate.numpy(), event.numpy()), (gate[event].mean() - gate[~event].mean()).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_gate_trained_on_a_separable_signal_separates_it(seed):
    value, gap = _train_gate(seed, lr=1e-2)  # the defaults: z-scored inputs, init std 0.5
    assert value > 0.9 and gap > 0.5
    # The old gate (raw scores, output weight std 0.01) at the encoder's 3e-4 stays a constant.
    _, old_gap = _train_gate(seed, lr=3e-4, gate_standardize=False, gate_init_std=0.01)
    assert abs(old_gap) < 0.01
