"""Cross-modality rank allocation: static per-group ranks checked after injection, budget allocators
(static presets / entropy / motion / importance) within 2% of the budget (by default uniform QLoRA's
count at r), the scores' data-referenced normalisations, and the AdaLoRA baseline and its schedule."""

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.adalora.bnb import SVDLinear4bit
from peft.tuners.lora.layer import LoraLayer

from models import rank_allocation as ra
from models import rank_scores as rs
from models.adapters import apply_adapter, trainable_parameter_count
from models.loading import load_model


def _nf4(path):
    return load_model(path, quantization="nf4", compute_dtype=torch.float32, device="cpu")


@pytest.fixture
def calibration(batch):
    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(2, 4, 3, generator=gen) * 0.2
    return [{**batch, "frame_scores": scores}]


def _clips(still: bool, n: int = 4, k: int = 4, seed: int = 3) -> torch.Tensor:
    """pixel_values [n, k, 3, 32, 32]: each clip its own random image, either held still or with a
    square drifting right by 4 px a frame over it."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, 1, 3, 32, 32, generator=gen).repeat(1, k, 1, 1, 1)
    if not still:
        for t in range(k):
            frames[:, t, :, 8:20, 4 * t : 4 * t + 12] = 1.0
    return frames


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
    # No budget is fine (uniform QLoRA's count), no data to measure on is not.
    with pytest.raises(ValueError, match="entropy allocation needs calibration_batches"):
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
    # More temporal change → a larger vision share, the others unchanged.
    calm = ra.allocate_budget(
        units, rs.motion_scores({"vision": 1.0, "llm": 1.0, "projection": 1.0}, 0.2), 2e5
    )
    busy = ra.allocate_budget(
        units, rs.motion_scores({"vision": 1.0, "llm": 1.0, "projection": 1.0}, 0.7), 2e5
    )
    assert busy["vision"] > calm["vision"]


# Every allocator is matched at the default budget below; here, at a given one with gates (on the
# frame Q-Former too, which the fusion preset weighs up), a fixed and a measured one.
@pytest.mark.parametrize("allocation", ["static_fusion", "importance"])
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
    assert report["budget_source"] == "adapter.budget"
    # Without adapter.ranks every budget allocation spreads over the towers with layers.
    assert set(report["groups"]) == set(ra.ALLOCATION_GROUPS) == set(report["scores"])
    assert all(report["groups"][g]["rank"] >= 1 for g in report["groups"])
    assert sum(report["lora_params_by_tower"].values()) == sum(
        v["lora_params"] for v in report["groups"].values()
    )
    model(**calibration[0]).loss.backward()


@pytest.mark.parametrize("allocation", ra.BUDGET_ALLOCATIONS)
def test_default_budget_is_uniform_qlora_at_r(tiny_ckpt, calibration, allocation):
    """Without adapter.budget, ranked_qlora fills what QLoRA at the same r trains (within 2%)."""
    qlora, _ = trainable_parameter_count(apply_adapter(_nf4(tiny_ckpt), "qlora", r=16))
    model = apply_adapter(
        _nf4(tiny_ckpt), "ranked_qlora", r=16, allocation=allocation, calibration_batches=calibration
    )
    report = model.adapter_allocation
    assert report["uniform_params"] == qlora and report["budget"] == qlora
    assert report["budget_source"] == "uniform r=16"
    assert abs(report["trainable_params"] - qlora) <= 0.02 * qlora, (report["trainable_params"], qlora)
    ranks = {g: v["rank"] for g, v in report["groups"].items()}
    heavy = ra.STATIC_PRESETS.get(allocation, {})
    for group in heavy:  # a static preset's heavy towers get the top ranks
        assert ranks[group] > max(r for g, r in ranks.items() if g not in heavy), ranks


def test_uniform_count_of_a_gated_method_counts_its_gates(tiny_ckpt):
    for method, ranked in (("qlora", "ranked_qlora"), ("temporal_qlora", "temporal_ranked_qlora")):
        uniform, _ = trainable_parameter_count(apply_adapter(_nf4(tiny_ckpt), method, r=8))
        report = apply_adapter(_nf4(tiny_ckpt), ranked, r=8, allocation="static_llm").adapter_allocation
        assert report["uniform_params"] == uniform, method
        assert abs(report["trainable_params"] - uniform) <= 0.02 * uniform, method


def test_static_preset_needs_its_heavy_group(tiny_ckpt):
    with pytest.raises(ValueError, match="static_fusion weighs up.*frame_qformer"):
        apply_adapter(
            _nf4(tiny_ckpt), "ranked_qlora", allocation="static_fusion", ranks={"vision": 1, "llm": 1}
        )
    with pytest.raises(ValueError, match="adapter.allocation must be one of"):
        apply_adapter(_nf4(tiny_ckpt), "ranked_qlora", allocation="static_audio")


def test_motion_reference_is_the_data_itself():
    """The temporal change ratio compares consecutive frames with frames of other clips of the same
    data: still clips read 0 whatever their content, a moving square reads more, and neither the
    pixel scale nor an offset (uint8 vs normalised) changes it."""
    still = rs.temporal_change([{"pixel_values": _clips(still=True)}])
    moving = rs.temporal_change([{"pixel_values": _clips(still=False)}])
    assert still["ratio"] == pytest.approx(0.0, abs=1e-6) and still["across"] > 0
    assert 0.05 < moving["ratio"] < 1
    rescaled = rs.temporal_change([{"pixel_values": 255 * _clips(still=False) - 3.0}])
    assert rescaled["ratio"] == pytest.approx(moving["ratio"], rel=1e-5)
    # Frames in random order (unrelated neighbours) are as far apart as frames of other clips.
    gen = torch.Generator().manual_seed(0)
    noise = rs.temporal_change([{"pixel_values": torch.rand(6, 4, 3, 32, 32, generator=gen)}])
    assert noise["ratio"] == pytest.approx(1.0, abs=0.1)
    # Split over batches, the clips give the same figures as in one.
    clips = _clips(still=False)
    split = rs.temporal_change([{"pixel_values": clips[:2]}, {"pixel_values": clips[2:]}])
    assert split["ratio"] == pytest.approx(moving["ratio"])
    assert rs.motion_factor(0.5) == 1.0 and rs.motion_factor(0.0) == 0.25 and rs.motion_factor(0.95) == 4.0
    with pytest.raises(ValueError, match=">= 2 clips"):
        rs.temporal_change([{"pixel_values": clips[:1]}])


def test_motion_allocation_follows_the_clips(tiny_ckpt, batch):
    """On still clips vision gets the smallest share motion can give it, on noise the largest."""
    shares = {}
    for name, pixels in (("still", _clips(True, n=2, k=4)), ("noise", None)):
        frames = torch.rand(2, 4, 3, 64, 64) if pixels is None else F.interpolate(pixels.flatten(0, 1), 64)
        calibration = [{**batch, "pixel_values": frames.reshape(2, 4, 3, 64, 64)}]
        report = apply_adapter(
            _nf4(tiny_ckpt), "ranked_qlora", allocation="motion", calibration_batches=calibration
        ).adapter_allocation
        assert report["temporal_change"]["factor"] == (0.25 if name == "still" else 4.0)
        shares[name] = report["groups"]["vision"]["rank"] / report["groups"]["llm"]["rank"]
    assert shares["noise"] > 4 * shares["still"]


def test_importance_is_free_of_each_layers_scale():
    """Scaling one group's weights (or its gradients) by 10 changes the raw |W ⊙ G| of its layers
    tenfold, and with it the raw allocation; the normalised score, and its allocation, stay."""
    gen = torch.Generator().manual_seed(0)
    layers = {
        "vision": [(torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)) for _ in range(2)],
        "llm": [(torch.randn(24, 12, generator=gen), torch.randn(24, 12, generator=gen)) for _ in range(3)],
    }
    units = {"vision": 2 * 24, "llm": 3 * 36}

    def scores(w_scale: float, g_scale: float, normalised: bool) -> dict[str, float]:
        out = {}
        for group, pairs in layers.items():
            ws, gs = (w_scale, g_scale) if group == "vision" else (1.0, 1.0)
            values = []
            for w, g in pairs:
                product, grad_mass = rs.layer_importance(ws * w, gs * g)
                weight_mass = (ws * w).abs().mean().item()
                values.append(
                    rs.normalised_importance(product, grad_mass, weight_mass) if normalised else product
                )
            out[group] = sum(values) / len(values)
        return out

    base = scores(1, 1, True)
    for w_scale, g_scale in ((10, 1), (1, 10), (10, 0.1)):
        assert scores(w_scale, g_scale, True) == pytest.approx(base)
        assert ra.allocate_budget(units, scores(w_scale, g_scale, True), 2000) == ra.allocate_budget(
            units, base, 2000
        )
    raw, raw_scaled = scores(1, 1, False), scores(10, 1, False)
    assert raw_scaled["vision"] == pytest.approx(10 * raw["vision"])
    assert ra.allocate_budget(units, raw_scaled, 2000) != ra.allocate_budget(units, raw, 2000)
    # Weights and gradients of unrelated sizes score 1.
    w, g = torch.randn(512, 512, generator=gen), torch.randn(512, 512, generator=gen)
    assert rs.normalised_importance(*rs.layer_importance(w, g), w.abs().mean().item()) == pytest.approx(
        1, abs=0.01
    )


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


def test_adalora_schedule_acts_at_200_steps(tiny_ckpt):
    """The default schedule at 200 steps: warm-up 20, final 40, delta_t 7, and peft's own budget
    schedule re-allocates 21 times (20 in the cubic phase + the final one), against 14 with delta_t 10."""
    model = apply_adapter(_nf4(tiny_ckpt), "adalora", total_steps=200)
    config = model.peft_config["default"]
    assert (config.tinit, config.tfinal, config.deltaT) == (20, 40, 7)
    allocator = model.base_model.rankallocator
    final = config.total_step - config.tfinal
    # update_and_allocate masks where the schedule says so before the final phase, then once at its start.
    masked = [s for s in range(config.total_step) if s < final and allocator.budget_schedule(s)[1]] + [final]
    assert len(masked) == ra.adalora_budget_updates(200, 20, 40, 7) == 21
    assert ra.adalora_budget_updates(200, 20, 40, 10) == 14
    # Budgets fall monotonically from the initial to the target one over those updates.
    budgets = [allocator.budget_schedule(s)[0] for s in masked]
    assert budgets == sorted(budgets, reverse=True) and budgets[0] < allocator.init_bgt
    assert budgets[-1] == allocator.target_bgt
    # The kept budget defaults to uniform LoRA at r's count.
    report = model.adapter_allocation
    qlora, _ = trainable_parameter_count(apply_adapter(_nf4(tiny_ckpt), "qlora", r=8))
    assert report["budget"] == qlora and report["target_r"] >= 1


def test_lora_params_by_tower_and_metrics(tiny_ckpt):
    model = apply_adapter(_nf4(tiny_ckpt), "ranked_qlora", ranks={"vision": 4, "frame_qformer": 2, "llm": 8})
    report = model.adapter_allocation
    by_tower = ra.lora_params_by_tower(model)
    assert by_tower == report["lora_params_by_tower"]
    assert by_tower == {g: v["lora_params"] for g, v in report["groups"].items()}
    metrics = ra.allocation_metrics(report)
    assert (
        metrics["allocation/rank_frame_qformer"] == 2
        and metrics["allocation/lora_params_llm"] == by_tower["llm"]
    )
    assert "allocation/budget_params" not in metrics  # static ranks: no budget
    uniform = apply_adapter(_nf4(tiny_ckpt), "qlora", r=8)
    units = ra.rank_unit_params(ra.group_modules(uniform, ra.resolve_patterns(["vision", "llm"])))
    assert ra.lora_params_by_tower(uniform) == {g: 8 * c for g, c in units.items()}


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
        assert [layer.scaling["default"] for layer in layers] == pytest.approx([8 / 8**0.5] * len(layers)), (
            group
        )


def test_adalora_says_that_rslora_does_not_apply(tiny_ckpt, caplog):
    with caplog.at_level("WARNING", logger="models.lora_methods"):
        apply_adapter(_nf4(tiny_ckpt), "adalora", total_steps=20, rslora=True)
    assert "adapter.rslora does not apply to adalora" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="models.lora_methods"):
        apply_adapter(_nf4(tiny_ckpt), "adalora", total_steps=20)
    assert "rslora" not in caplog.text
