"""Cross-modality rank allocation: static per-group ranks checked after injection, budget allocators
(entropy / motion / importance) within 2% of the budget, and the AdaLoRA baseline."""

import pytest
import torch
from peft.tuners.adalora.bnb import SVDLinear4bit
from peft.tuners.lora.layer import LoraLayer

from models import rank_allocation as ra
from models.adapters import apply_adapter, trainable_parameter_count
from models.loading import load_model


def _nf4(path):
    return load_model(path, quantization="nf4", compute_dtype=torch.float32, device="cpu")


@pytest.fixture
def calibration(batch):
    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(2, 4, 3, generator=gen) * 0.2  # motion ~0.1: above the 0.05 reference
    return [{**batch, "frame_scores": scores}]


def _layer_ranks(model, pattern):
    base = model.get_base_model()
    return {
        name: (layer.r["default"], layer.lora_alpha["default"])
        for name, layer in base.named_modules()
        if isinstance(layer, LoraLayer) and ra.re.fullmatch(pattern, name)
    }


def test_static_ranks_per_group(tiny_ckpt, batch):
    ranks = {"vision": 4, "frame_qformer": 2, "video_qformer": 3, "projection": 2, "llm": 8}
    model = apply_adapter(_nf4(tiny_ckpt), "ranked_qlora", ranks=ranks, alpha=16, r=8, alphas={"llm": 4})
    report = model.adapter_allocation["groups"]
    assert {g: report[g]["rank"] for g in report} == ranks
    for group, rank in ranks.items():
        layers = _layer_ranks(model, ra.GROUP_PATTERNS[group])
        alpha = 4 if group == "llm" else rank * 16 / 8  # default keeps the scale alpha / r = 2
        assert layers and set(layers.values()) == {(rank, alpha)}, group
    linears = ra.group_modules(model, {g: ra.GROUP_PATTERNS[g] for g in ranks})
    assert {g: report[g]["modules"] for g in ranks} == {g: len(linears[g]) for g in ranks}
    assert report["vision"]["modules"] == 8 and report["frame_qformer"]["modules"] == 16
    # The projection has LoRA now, so it is no longer trained in full next to it.
    assert model.peft_config["default"].modules_to_save in (None, [])
    model(**batch).loss.backward()


def test_pattern_matching_nothing_is_an_error(tiny_ckpt):
    model = _nf4(tiny_ckpt)
    with pytest.raises(ValueError, match="'vision'.*matches no linear"):
        apply_adapter(
            model, "ranked_qlora", ranks={"vision": 4}, group_patterns={"vision": r"visual\.blocks\.\d+"}
        )
    with pytest.raises(ValueError, match="unknown module group"):
        apply_adapter(model, "ranked_qlora", ranks={"audio": 4})
    with pytest.raises(ValueError, match="needs per-group ranks"):
        apply_adapter(model, "ranked_qlora")
    with pytest.raises(ValueError, match="needs a budget"):
        apply_adapter(model, "ranked_qlora", allocation="entropy")


def test_allocate_budget_hits_the_budget():
    units = {"vision": 1536, "projection": 192, "llm": 4352}
    weights = {"vision": 2.0, "projection": 0.1, "llm": 1.0}
    for budget in (50_000, 123_457, 1_000_000):
        ranks = ra.allocate_budget(units, weights, budget)
        spent = sum(ranks[g] * units[g] for g in units)
        assert abs(spent - budget) <= min(units.values()) / 2
        assert min(ranks.values()) >= 1
        assert ranks["vision"] > ranks["llm"] > ranks["projection"]  # follows the weights
    with pytest.raises(ValueError, match="below"):
        ra.allocate_budget(units, weights, 1000)
    # More motion → a larger vision share, the others unchanged.
    calm = ra.allocate_budget(
        units, ra.motion_scores({"vision": 1.0, "llm": 1.0, "projection": 1.0}, 0.01), 2e5
    )
    busy = ra.allocate_budget(
        units, ra.motion_scores({"vision": 1.0, "llm": 1.0, "projection": 1.0}, 0.2), 2e5
    )
    assert busy["vision"] > calm["vision"]


@pytest.mark.parametrize("allocation", ["entropy", "motion", "importance"])
def test_budget_allocation_within_two_percent(tiny_ckpt, calibration, allocation):
    budget = 150_000
    model = apply_adapter(
        _nf4(tiny_ckpt),
        "temporal_ranked_qlora",
        allocation=allocation,
        budget=budget,
        calibration_batches=calibration,
        gate={"inputs": ["motion", "feature"]},
    )
    trainable, _ = trainable_parameter_count(model)
    assert abs(trainable - budget) <= 0.02 * budget, (trainable, model.adapter_allocation)
    report = model.adapter_allocation
    assert report["allocation"] == allocation and report["trainable_params"] == trainable
    assert set(report["groups"]) == {"vision", "llm"} and set(report["scores"]) == {"vision", "llm"}
    assert all(report["groups"][g]["rank"] >= 1 for g in report["groups"])
    if allocation == "motion":  # mean motion ~0.1 is twice the reference: vision weight doubled
        assert report["scores"]["vision"] == pytest.approx(2 * report["scores"]["llm"], rel=0.1)
    model(**calibration[0]).loss.backward()


def test_adalora_baseline_reallocates(tiny_ckpt, batch):
    model = apply_adapter(
        _nf4(tiny_ckpt),
        "adalora",
        budget=60_000,
        adalora={"total_step": 6, "tinit": 1, "tfinal": 2, "delta_t": 1},
    )
    assert any(isinstance(m, SVDLinear4bit) for m in model.modules())
    report = model.adapter_allocation
    start = report["groups"]
    assert all(start[g]["rank_mean"] == report["init_r"] for g in start)

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(5):
        model(**batch).loss.backward()
        opt.step()
        ra.adalora_update(model, step)
        opt.zero_grad()
    after = ra.adalora_ranks(model, {g: ra.GROUP_PATTERNS[g] for g in ("vision", "llm")})
    total_after = sum(v["rank_sum"] for v in after.values())
    # AdaLoRA masked its way down to the target budget (target_r per layer on average).
    assert total_after == report["target_r"] * sum(v["modules"] for v in after.values())
    assert total_after < sum(v["rank_sum"] for v in start.values())


@pytest.mark.parametrize("method", ["qlora", "temporal_qlora"])
def test_rslora_scales_by_root_rank(tiny_ckpt, method):
    """adapter.rslora: every LoRA layer scales by alpha / sqrt(r) (peft's use_rslora), gated ones too."""
    model = apply_adapter(_nf4(tiny_ckpt), method, r=16, alpha=8, rslora=True)
    scalings = [
        layer.scaling["default"] for layer in model.get_base_model().modules() if isinstance(layer, LoraLayer)
    ]
    assert scalings and scalings == pytest.approx([8 / 16**0.5] * len(scalings))


def test_rslora_group_alphas_keep_the_root_rank_scale(tiny_ckpt):
    """With per-group ranks under rsLoRA the default alphas keep the scale alpha / sqrt(r) in every group."""
    ranks = {"vision": 4, "llm": 16}
    model = apply_adapter(_nf4(tiny_ckpt), "ranked_qlora", ranks=ranks, alpha=8, r=8, rslora=True)
    for group in ranks:
        layers = [
            layer
            for name, layer in model.get_base_model().named_modules()
            if isinstance(layer, LoraLayer) and ra.re.fullmatch(ra.GROUP_PATTERNS[group], name)
        ]
        assert layers, group
        assert [layer.scaling["default"] for layer in layers] == pytest.approx([8 / 8**0.5] * len(layers)), group
