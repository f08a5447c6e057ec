"""Temporal (frame-gated) LoRA: a peft LoRA layer whose update is weighted per video frame.

For a linear that sees one frame per row (the ViT and the frame Q-Former run on frames flattened
to [B*K, T, D], row n = b*K + k), frame t = row n gets

    scale mode:  y_n = W x_n + g_n * (alpha / r) * B A x_n
    rank mode:   y_n = W x_n + (alpha / r) * B (m_n ⊙ A x_n),   m_n,i = clamp(r * g_n - i, 0, 1)

with g_n = sigmoid(gate_net([selected frame scores of n, layer_norm(mean_tokens x_n)])) in [0, 1].
A gate network (Linear → SiLU → Linear, a few hundred weights) lives in every gated layer, so each
layer learns its own response to motion / entropy / scene change. In rank mode, frame t uses exactly
the first ceil(r * g_t) rank components (nested, DyLoRA-style); the last one is weighted by its
fractional part r * g_t - floor, which keeps the output continuous and piecewise linear in g, so
the gate learns through ordinary gradients (d m_i / d g = r on the partial component).
g = 1 gives plain LoRA exactly (every m_i = 1); g = 0 gives the base layer exactly.

peft integration: `TemporalLoraConfig` is a `LoraConfig` (peft_type LORA, saved to and read from
adapter_config.json with its extra gate fields) that registers `dispatch_temporal` for `nn.Linear`
through peft's custom-module API; layers whose name matches `temporal_modules` become
`TemporalLinear` / `TemporalLinear4bit`, every other target stays peft's own LoRA layer. The gate
weights are named `lora_gate_in.*` / `lora_gate_out.*`, so peft saves, loads and trains them with the LoRA factors.

Loading needs the registration first — peft's own config reader would build a plain `LoraConfig`
and drop the gate fields:

    config = TemporalLoraConfig.from_pretrained(adapter_dir)       # registers the layer types
    model = PeftModel.from_pretrained(base, adapter_dir, config=config)
    install_frame_gates(model)                                     # frame scores → gated layers

(`models.adapters.load_adapter` does exactly this.)

Frame scores reach the layers through a `FrameGateContext`: a forward pre-hook on the vision tower
copies the model's `current_frame_scores` [B, K, S] as row scores [B*K, S]. They stay until the next
video forward replaces them, and `checkpoint_kwargs` gives torch's non-reentrant checkpoint a
`context_fn` that snapshots them at forward time and restores that snapshot for the recompute in
backward, so a recompute sees its own forward's scores even if other forwards ran in between.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit
from peft.tuners.lora.layer import Linear as PeftLinear
from peft.tuners.lora.layer import LoraLayer
from peft.utils import CONFIG_NAME
from torch import nn

from batch_contract import FRAME_SCORE_NAMES

from .towers import LAYER_INDEX, TOWERS, frame_row_linears

FEATURE_INPUT = "feature"  # the frame's token-pooled layer input as gate input
GATE_INPUTS = (*FRAME_SCORE_NAMES, FEATURE_INPUT)
GATE_MODES = ("scale", "rank")

# Linears that see one frame per row: those of the frame-rowed towers of `models.towers`, the ViT and
# the frame Q-Former (rows are frames there too; its keys/values are that frame's patches).
DEFAULT_TEMPORAL_MODULES = frame_row_linears()


@dataclass
class TemporalLoraConfig(LoraConfig):
    """`LoraConfig` plus the frame gate of temporal LoRA (see the module docstring).

    Attributes (beyond LoraConfig):
        temporal_modules: regex, full match on module names: which targets are gated. Targets that do
            not match get plain LoRA (e.g. the LLM, whose rows are not frames).
        gate_inputs: subset of ("entropy", "scene_change", "motion", "feature"); scores come from the
            frame selector, "feature" is the layer input averaged over the frame's tokens.
        gate_mode: "scale" (g multiplies the update) or "rank" (frame uses ceil(r*g) components).
        gate_hidden: width of the gate network's hidden layer.
        gate_init: gate value at initialisation (sigmoid of the output bias), in (0, 1).
    """

    temporal_modules: str = DEFAULT_TEMPORAL_MODULES
    gate_inputs: list[str] = field(default_factory=lambda: list(FRAME_SCORE_NAMES))
    gate_mode: str = "scale"
    gate_hidden: int = 16
    gate_init: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [name for name in self.gate_inputs if name not in GATE_INPUTS]
        if not self.gate_inputs or unknown:
            raise ValueError(
                f"gate_inputs must be a non-empty subset of {GATE_INPUTS}, got {self.gate_inputs}"
            )
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"gate_init must be in (0, 1), got {self.gate_init}")
        if self.gate_hidden < 1:
            raise ValueError(f"gate_hidden must be >= 1, got {self.gate_hidden}")
        re.compile(self.temporal_modules)
        # peft consults this mapping when it creates a layer for a target (LoraModel._create_new_module).
        self._register_custom_module({nn.Linear: dispatch_temporal})

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, subfolder: str | None = None, **kwargs
    ):
        """Read a saved temporal adapter's adapter_config.json (a local directory) into this class."""
        path = Path(pretrained_model_name_or_path) / (subfolder or "") / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path.parent}")
        fields = json.loads(path.read_text())
        if not is_temporal_config(fields):
            raise ValueError(f"{path} is not a temporal LoRA adapter (no gate_mode field)")
        return cls(**fields)


def is_temporal_config(config: dict[str, Any] | LoraConfig) -> bool:
    """Whether an adapter config (dict from adapter_config.json, or a config object) is temporal."""
    if isinstance(config, dict):
        return "gate_mode" in config and "temporal_modules" in config
    return isinstance(config, TemporalLoraConfig)


class FrameGateContext:
    """Per-model state shared by the gated layers of one forward.

    `row_scores` float [B*K, S] (rows b-major, as the vision tower sees frames) or None; `frames`
    (B, K); `last_gates` layer name → gate float [B*K] of the latest forward (detached, for logging).
    """

    def __init__(self) -> None:
        self.row_scores: torch.Tensor | None = None
        self.frames: tuple[int, int] | None = None
        self.last_gates: dict[str, torch.Tensor] = {}

    def set_frame_scores(self, scores: torch.Tensor | None) -> None:
        """scores: float [B, K, S] of the current forward, or None."""
        if scores is None:
            self.row_scores, self.frames = None, None
            return
        if scores.dim() != 3 or scores.shape[-1] != len(FRAME_SCORE_NAMES):
            raise ValueError(
                f"frame scores must be [B, K, {len(FRAME_SCORE_NAMES)}] {FRAME_SCORE_NAMES}, "
                f"got shape {tuple(scores.shape)}"
            )
        self.frames = (scores.shape[0], scores.shape[1])
        self.row_scores = scores.flatten(0, 1)

    def scores_for(self, rows: int, layer: str) -> torch.Tensor:
        """The [rows, S] frame scores for a gated layer, with a clear error when they do not fit."""
        if self.row_scores is None:
            raise ValueError(
                f"temporal LoRA layer {layer} gates on frame scores but this forward got none: pass "
                "frame_scores [B, K, 3] (the frame selector's SelectedFrames.scores) to the model"
            )
        if self.row_scores.shape[0] != rows:
            raise ValueError(
                f"temporal LoRA layer {layer} sees {rows} rows but the frame scores cover "
                f"{self.row_scores.shape[0]} frames: only layers with one frame per row (vision tower, "
                "frame Q-Former) can be gated"
            )
        return self.row_scores

    @contextlib.contextmanager
    def _restored(self, row_scores: torch.Tensor | None, frames: tuple[int, int] | None) -> Iterator[None]:
        saved = self.row_scores, self.frames
        self.row_scores, self.frames = row_scores, frames
        try:
            yield
        finally:
            self.row_scores, self.frames = saved

    def checkpoint_context_fn(
        self,
    ) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """`context_fn` for torch.utils.checkpoint: the recompute runs with this forward's scores."""
        return contextlib.nullcontext(), self._restored(self.row_scores, self.frames)


class TemporalLoraLayer(LoraLayer):
    """What the gated layers add to peft's LoRA layer: a gate network per adapter and the gated forward."""

    # Two flat ModuleDicts (not one Sequential) so peft's key mapping drops the adapter name from
    # `...lora_gate_in.<adapter>.weight` when saving, as it does for lora_A / lora_B.
    adapter_layer_names = (*LoraLayer.adapter_layer_names, "lora_gate_in", "lora_gate_out")
    # 16-bit peft adds the update then casts; 4-bit peft casts the update to the result dtype first.
    _cast_update_first = False

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs) -> None:
        if not isinstance(config, TemporalLoraConfig):
            raise TypeError(f"temporal LoRA layers need a TemporalLoraConfig, got {type(config).__name__}")
        if "lora_gate_in" not in self._modules:
            # Before peft's update_layer: its set_adapter walks every name in adapter_layer_names.
            self.lora_gate_in = nn.ModuleDict()
            self.lora_gate_out = nn.ModuleDict()
            self.gate_settings: dict[str, dict[str, Any]] = {}
            self.frame_gate_context: FrameGateContext | None = None
            self.gate_name = kwargs.get("target_name", "")
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        score_index = [FRAME_SCORE_NAMES.index(n) for n in config.gate_inputs if n in FRAME_SCORE_NAMES]
        use_feature = FEATURE_INPUT in config.gate_inputs
        n_in = len(score_index) + (self.in_features if use_feature else 0)
        weight = self.lora_A[adapter_name].weight
        gate_in = nn.Linear(n_in, config.gate_hidden).to(weight.device, weight.dtype)
        gate_out = nn.Linear(config.gate_hidden, 1).to(weight.device, weight.dtype)
        # A small (not zero) output weight: every gate weight gets a gradient from the first non-zero
        # LoRA update on, and the start is ~gate_init for every frame.
        nn.init.normal_(gate_out.weight, std=0.01)
        nn.init.constant_(gate_out.bias, math.log(config.gate_init / (1.0 - config.gate_init)))
        self.lora_gate_in[adapter_name] = gate_in
        self.lora_gate_out[adapter_name] = gate_out
        self.gate_settings[adapter_name] = {
            "score_index": score_index,
            "feature": use_feature,
            "mode": config.gate_mode,
        }
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def frame_gate(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """Gate per row: x [N, ..., in] → float [N] in [0, 1] (dtype of the gate network)."""
        settings = self.gate_settings[adapter_name]
        gate_in, gate_out = self.lora_gate_in[adapter_name], self.lora_gate_out[adapter_name]
        dtype = gate_in.weight.dtype
        parts = []
        if settings["score_index"]:
            if self.frame_gate_context is None:
                raise RuntimeError(
                    f"temporal LoRA layer {self.gate_name} has no frame-score context: call "
                    "models.temporal_lora.install_frame_gates(model) after get_peft_model / from_pretrained"
                )
            scores = self.frame_gate_context.scores_for(x.shape[0], self.gate_name)
            parts.append(scores[:, settings["score_index"]].to(dtype))
        if settings["feature"]:
            pooled = x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1).to(dtype)  # [N, in]
            # Normalised so the gate sees the feature's direction, not the layer's activation scale.
            parts.append(F.layer_norm(pooled, pooled.shape[-1:]))
        gate = torch.sigmoid(gate_out(F.silu(gate_in(torch.cat(parts, dim=-1)))).squeeze(-1))  # [N]
        if self.frame_gate_context is not None:
            self.frame_gate_context.last_gates[self.gate_name] = gate.detach()
        return gate

    def _rank_weights(self, adapter_name: str, gate: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Weights of the rank components per row, shaped to broadcast with `hidden` [N, ..., r]."""
        if self.gate_settings[adapter_name]["mode"] == "rank":
            r = hidden.shape[-1]
            components = torch.arange(r, device=gate.device, dtype=gate.dtype)
            weights = torch.clamp(r * gate[:, None] - components, 0.0, 1.0)  # [N, r]
        else:
            weights = gate[:, None]  # [N, 1]
        return weights.view(hidden.shape[0], *([1] * (hidden.dim() - 2)), -1).to(hidden.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """x [N, ..., in] with row n = frame n → [N, ..., out]."""
        self._check_forward_args(x, *args, **kwargs)
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("temporal LoRA layers do not support mixed-adapter batches (adapter_names)")
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            raise RuntimeError("temporal LoRA updates differ per frame and cannot be merged into the weight")
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        for adapter_name in self.active_adapters:
            if adapter_name not in self.lora_A:
                continue
            lora_A = self.lora_A[adapter_name]
            x_in = self._cast_input_dtype(x, lora_A.weight.dtype)
            hidden = lora_A(self.lora_dropout[adapter_name](x_in))  # [N, ..., r]
            gate = self.frame_gate(adapter_name, x_in)
            update = self.lora_B[adapter_name](hidden * self._rank_weights(adapter_name, gate, hidden))
            update = update * self.scaling[adapter_name]
            result = result + update.to(result_dtype) if self._cast_update_first else result + update
        return result.to(result_dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise RuntimeError("temporal LoRA updates differ per frame and cannot be merged into the weight")


class TemporalLinear(TemporalLoraLayer, PeftLinear):
    """Temporal LoRA on a 16-/32-bit `nn.Linear`."""

    def __repr__(self) -> str:
        return "temporal_" + super().__repr__()


class TemporalLinear4bit(TemporalLoraLayer, PeftLinear4bit):
    """Temporal LoRA on a bitsandbytes `Linear4bit` (QLoRA base)."""

    _cast_update_first = True

    def __repr__(self) -> str:
        return "temporal_" + super().__repr__()


def dispatch_temporal(
    target: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any
) -> nn.Module | None:
    """peft custom-module dispatcher: a temporal layer for gated names, None (peft's default) otherwise."""
    name = kwargs.get("target_name", "")
    if not isinstance(config, TemporalLoraConfig) or not re.fullmatch(config.temporal_modules, name):
        return None
    base = target.get_base_layer() if isinstance(target, LoraLayer) else target
    if isinstance(base, bnb.nn.Linear4bit):
        kwargs = {
            **kwargs,
            "compute_dtype": base.compute_dtype,
            "compress_statistics": base.weight.compress_statistics,
            "quant_type": base.weight.quant_type,
        }
        layer = TemporalLinear4bit(target, adapter_name, config=config, **kwargs)
    else:
        layer = TemporalLinear(target, adapter_name, config=config, **kwargs)
    layer.gate_name = name
    return layer


def temporal_layers(model: nn.Module) -> dict[str, TemporalLoraLayer]:
    """Gated layers by module name (names as in the base model, e.g. vision_model.encoder.layers.0.mlp.fc1)."""
    return {layer.gate_name: layer for layer in model.modules() if isinstance(layer, TemporalLoraLayer)}


def _video_model(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "vision_model") or not hasattr(base, "current_frame_scores"):
        raise TypeError(
            f"{type(base).__name__} is not a video model with vision_model and current_frame_scores"
        )
    return base


def install_frame_gates(model: nn.Module) -> FrameGateContext:
    """Connect the gated layers of a peft-wrapped video model to the frame scores of each forward.

    Idempotent: returns the model's existing context when called again. The hook on the vision tower
    reads `current_frame_scores` [B, K, S], which the model sets for the duration of its video encoding.
    """
    video_model = _video_model(model)
    context = getattr(video_model, "frame_gate_context", None)
    if context is None:
        context = FrameGateContext()

        def capture_scores(_module: nn.Module, _args: tuple) -> None:
            context.set_frame_scores(video_model.current_frame_scores)

        video_model.vision_model.register_forward_pre_hook(capture_scores)
        video_model.frame_gate_context = context
    layers = temporal_layers(model)
    if not layers:
        raise ValueError("the model has no temporal LoRA layer (no target matched temporal_modules)")
    for layer in layers.values():
        layer.frame_gate_context = context
    return context


def checkpoint_kwargs(context: FrameGateContext) -> dict[str, Any]:
    """kwargs for `model.activation_checkpointing_enable(activation_checkpointing_kwargs=...)`."""
    return {"use_reentrant": False, "context_fn": context.checkpoint_context_fn}


def gate_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gates of the latest forward: layer name → float32 [B, K] on CPU (empty before the first forward)."""
    context = _video_model(model).frame_gate_context
    if context.frames is None:
        return {}
    b, k = context.frames
    return {
        name: gate.float().cpu().view(b, k)
        for name, gate in context.last_gates.items()
        if gate.numel() == b * k
    }


def gate_summary(model: nn.Module) -> dict[str, float]:
    """Scalars for the metrics logger: overall, per-layer and per-frame-position mean gate (fraction)."""
    stats = gate_statistics(model)
    if not stats:
        return {}
    stacked = torch.stack(list(stats.values()))  # [layers, B, K]
    summary = {"gate/mean": stacked.mean().item(), "gate/std": stacked.std().item()}
    for name, gates in stats.items():
        summary[f"gate/layer/{name}/mean"] = gates.mean().item()
    for k, value in enumerate(stacked.mean(dim=(0, 1)).tolist()):
        summary[f"gate/frame/{k}/mean"] = value
    return summary


def write_gate_heatmap(model: nn.Module, path: str | Path, clip: int = 0) -> Path:
    """Write a PNG heatmap of one clip's gates from the latest forward: frames (rows) x layers (columns)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stats = gate_statistics(model)
    if not stats:
        raise ValueError("no gate statistics yet: run a forward with frame_scores first")
    names = list(stats)
    grid = torch.stack([stats[name][clip] for name in names], dim=1).numpy()  # [K, layers]
    fig = Figure(figsize=(max(4.0, 0.45 * len(names) + 2.0), max(3.5, 0.4 * grid.shape[0] + 2.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(names)), [_short_name(n) for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(grid.shape[0]))
    ax.set_ylabel("frame")
    ax.set_title(f"temporal LoRA gates, clip {clip}")
    fig.colorbar(image, ax=ax, label="gate")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _short_name(name: str) -> str:
    """vision_model.encoder.layers.3.mlp.fc1 → vision.3.mlp.fc1 (axis labels): tower name + layer index."""
    for tower in TOWERS:
        if tower.layer is not None:
            # Keep the layer index, replace the module path before it.
            short = re.sub(f"^{tower.layer.removesuffix(LAYER_INDEX)}", f"{tower.name}.", name)
            if short != name:
                return short
    return name
