"""Temporal (frame-gated) LoRA: a peft LoRA layer whose update is weighted per video frame.

For a linear that sees one frame per row (the ViT and the frame Q-Former run on frames flattened
to [B*K, T, D], row n = b*K + k), frame t = row n gets

    scale mode:  y_n = W x_n + g_n * (alpha / r) * B A x_n
    rank mode:   y_n = W x_n + (alpha / r) * B (m_n ⊙ A x_n),   m_n,i = clamp(r * g_n - i, 0, 1)

with g_n = sigmoid(gate_net(inputs of frame n)) in [0, 1]. A gate network (Linear → SiLU → Linear, a
few hundred weights) lives in every gated layer, so each layer learns its own response to its inputs:

    entropy / scene_change / motion   the frame selector's scores of the frame, z-scored over the
                                      clip's K kept frames per score (`gate_standardize`, see below)
    position                          the frame's place in the clip, k / (K - 1) in [0, 1]
    delta                             each chosen score minus the previous kept frame's (0 on the first)
    feature                           layer_norm(the layer input averaged over the frame's tokens)

Why z-scores: raw scores barely differ between frames (SynthVid motion 0.019 where the shape is
visible vs 0.005 where it is not), so a gate on raw scores starts, and stays, nearly constant over
a clip. Per clip and score, z = (s - mean_K s) / std_K s (population std over the K frames); a
score whose spread over the clip is below `STANDARDIZE_EPS` is constant there and gives z = 0.
With standardised inputs the output weight's init std (`gate_init_std`, default
`DEFAULT_GATE_INIT_STD`) makes the gates differ across a clip's frames from the first step
(std over frames ~0.04, mean over the tiny preset's layers, at gate_init 0.9; the old 0.01 gave
~0.001; tests/models/test_temporal_lora.py checks >= 0.02).
With no inputs at all (`gate_inputs` []) the gate is one learnable logit per layer: the constant
control (`temporal_qlora_constant`). `gate_shuffle` feeds every gate the inputs of another frame of
the same clip (a random permutation per clip per forward, from a generator seeded with
`SHUFFLE_SEED`): the shuffled control (`temporal_qlora_shuffled`). In rank mode, frame t uses exactly
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
reads the model's `current_frame_scores` [B, K, S] and builds, once per forward for every gated
layer, the per-frame input table (raw and standardised scores, positions, deltas; `frame_table`)
and, for the shuffled control, the permutation. They stay until the next video forward replaces
them, and `checkpoint_kwargs` gives torch's non-reentrant checkpoint a `context_fn` that snapshots
them at forward time and restores that snapshot for the recompute in backward, so a recompute sees
its own forward's inputs even if other forwards ran in between.

Adapters saved before `gate_standardize` / `gate_init_std` existed load with the behaviour they were
trained with (raw scores; `OLD_ADAPTER_DEFAULTS`).
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
POSITION_INPUT = "position"  # k / (K - 1): where the kept frame sits in the clip
DELTA_INPUT = "delta"  # the chosen scores minus the previous kept frame's
GATE_INPUTS = (*FRAME_SCORE_NAMES, FEATURE_INPUT, POSITION_INPUT, DELTA_INPUT)
GATE_MODES = ("scale", "rank")
# Parameter-name parts of the gate networks (learning-rate groups find the gates by them).
GATE_LAYER_NAMES = ("lora_gate_in", "lora_gate_out")
# A score whose std over the clip's frames is below this is constant there: its z-score is 0.
STANDARDIZE_EPS = 1e-6
# Output-weight std at init: with z-scored inputs the gates of one clip differ by ~0.04 (std over
# frames at gate_init 0.9, tiny preset) instead of ~0.001 at the old 0.01, all still near gate_init.
DEFAULT_GATE_INIT_STD = 0.5
# The shuffled control's permutations come from a generator seeded with this (deterministic runs).
SHUFFLE_SEED = 0
# Fields added after temporal adapters were first saved: the values those adapters were trained with.
OLD_ADAPTER_DEFAULTS = {"gate_standardize": False, "gate_init_std": 0.01, "gate_shuffle": False}

# Linears that see one frame per row: those of the frame-rowed towers of `models.towers`, the ViT and
# the frame Q-Former (rows are frames there too; its keys/values are that frame's patches).
DEFAULT_TEMPORAL_MODULES = frame_row_linears()


@dataclass
class TemporalLoraConfig(LoraConfig):
    """`LoraConfig` plus the frame gate of temporal LoRA (see the module docstring).

    Attributes (beyond LoraConfig):
        temporal_modules: regex, full match on module names: which targets are gated. Targets that do
            not match get plain LoRA (e.g. the LLM, whose rows are not frames).
        gate_inputs: subset of `GATE_INPUTS` (module docstring): the selector's scores, "position",
            "delta" (of the chosen scores, so it needs one) and "feature"; [] gives a constant gate,
            one learnable logit per layer.
        gate_mode: "scale" (g multiplies the update) or "rank" (frame uses ceil(r*g) components).
        gate_hidden: width of the gate network's hidden layer.
        gate_init: gate value at initialisation (sigmoid of the output bias), in (0, 1).
        gate_standardize: z-score each score over the clip's frames before the gate reads it (and
            before "delta" differences it).
        gate_init_std: std of the gate network's output weight at initialisation (>= 0).
        gate_shuffle: gates read the inputs of another frame of the same clip (the shuffled control).
    """

    temporal_modules: str = DEFAULT_TEMPORAL_MODULES
    gate_inputs: list[str] = field(default_factory=lambda: list(FRAME_SCORE_NAMES))
    gate_mode: str = "scale"
    gate_hidden: int = 16
    gate_init: float = 0.9
    gate_standardize: bool = True
    gate_init_std: float = DEFAULT_GATE_INIT_STD
    gate_shuffle: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gate_inputs = list(self.gate_inputs)
        unknown = [name for name in self.gate_inputs if name not in GATE_INPUTS]
        if unknown or len(set(self.gate_inputs)) != len(self.gate_inputs):
            raise ValueError(
                f"gate_inputs (adapter.gate.inputs) must be distinct names of {GATE_INPUTS} ([]: a "
                f"constant gate), got {self.gate_inputs}"
            )
        if DELTA_INPUT in self.gate_inputs and not score_columns(self.gate_inputs):
            raise ValueError(
                f"gate_inputs (adapter.gate.inputs): {DELTA_INPUT!r} differences the chosen frame scores, "
                f"so it needs one of {FRAME_SCORE_NAMES} too; got {self.gate_inputs}"
            )
        if self.gate_shuffle and not self.gate_inputs:
            raise ValueError("gate_shuffle needs gate_inputs: a constant gate has no inputs to shuffle")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"gate_init must be in (0, 1), got {self.gate_init}")
        if self.gate_hidden < 1:
            raise ValueError(f"gate_hidden must be >= 1, got {self.gate_hidden}")
        if not self.gate_init_std >= 0.0:
            raise ValueError(f"gate_init_std (adapter.gate.init_std) must be >= 0, got {self.gate_init_std}")
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
        return cls(**{**OLD_ADAPTER_DEFAULTS, **fields})


def is_temporal_config(config: dict[str, Any] | LoraConfig) -> bool:
    """Whether an adapter config (dict from adapter_config.json, or a config object) is temporal."""
    if isinstance(config, dict):
        return "gate_mode" in config and "temporal_modules" in config
    return isinstance(config, TemporalLoraConfig)


def score_columns(inputs: list[str] | tuple[str, ...]) -> list[int]:
    """Positions in `FRAME_SCORE_NAMES` of the scores among the gate inputs, in that order."""
    return [i for i, name in enumerate(FRAME_SCORE_NAMES) if name in inputs]


def table_columns(inputs: list[str] | tuple[str, ...]) -> list[int]:
    """The columns of `frame_table` a gate with these inputs reads: scores, position, deltas."""
    scores, width = score_columns(inputs), len(FRAME_SCORE_NAMES)
    columns = list(scores)
    if POSITION_INPUT in inputs:
        columns.append(width)
    if DELTA_INPUT in inputs:
        columns += [width + 1 + i for i in scores]
    return columns


def gate_parameter_count(inputs: list[str] | tuple[str, ...], hidden: int, in_features: int) -> int:
    """Weights of one gate: Linear(n_in, hidden) → SiLU → Linear(hidden, 1), or one logit without inputs."""
    n_in = len(table_columns(inputs)) + (in_features if FEATURE_INPUT in inputs else 0)
    return (n_in + 1) * hidden + hidden + 1 if n_in else 1


def standardize_over_clip(scores: torch.Tensor, eps: float = STANDARDIZE_EPS) -> torch.Tensor:
    """Per clip and score, z-scores over the clip's frames: float [B, K, S] → float [B, K, S].

    z = (s - mean_K s) / std_K s with the population std; where std_K s < eps (the score is constant
    over the clip, or K = 1) z is 0, not NaN or amplified rounding noise.
    """
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, correction=0, keepdim=True)
    z = (scores - mean) / std.clamp_min(eps)
    return torch.where(std >= eps, z, torch.zeros_like(z))


def frame_table(scores: torch.Tensor, standardize: bool) -> torch.Tensor:
    """Every score-derived gate input of every frame: float [B, K, S] → float32 [B, K, 2S + 1].

    Columns: the S scores (z-scored over the clip when `standardize`), the position k / (K - 1)
    (0 when K = 1) and the S deltas s_k - s_{k-1} of those scores (0 on the first frame).
    """
    values = scores.float()
    if standardize:
        values = standardize_over_clip(values)
    b, k, _ = values.shape
    position = torch.arange(k, device=values.device, dtype=values.dtype) / max(k - 1, 1)
    delta = torch.diff(values, dim=1, prepend=values[:, :1])
    return torch.cat([values, position.expand(b, k)[..., None], delta], dim=-1)


@dataclass(frozen=True)
class FrameInputs:
    """The gate inputs of one forward, shared by every gated layer (rows b-major, as the ViT sees frames).

    Attributes:
        frames: (B, K).
        tables: standardised or not → float32 [B*K, 2S + 1] (`frame_table`), both built once.
        permutation: long [B*K] or None: row n's gate reads row permutation[n]'s inputs, a frame of
            the same clip (the shuffled control).
    """

    frames: tuple[int, int]
    tables: dict[bool, torch.Tensor]
    permutation: torch.Tensor | None = None


class FrameGateContext:
    """Per-model state shared by the gated layers of one forward.

    `inputs` (`FrameInputs`) of the current forward or None; `last_gates` layer name → gate float
    [B*K] of the latest forward (detached, for logging); `shuffle_generator` draws the shuffled
    control's permutations (None: no layer shuffles).
    """

    def __init__(self) -> None:
        self.inputs: FrameInputs | None = None
        self.last_gates: dict[str, torch.Tensor] = {}
        self.shuffle_generator: torch.Generator | None = None

    @property
    def frames(self) -> tuple[int, int] | None:
        """(B, K) of the current forward, None without frame scores."""
        return None if self.inputs is None else self.inputs.frames

    def enable_shuffle(self) -> None:
        """Draw a permutation of each clip's frames every forward (idempotent: one seeded stream)."""
        if self.shuffle_generator is None:
            self.shuffle_generator = torch.Generator().manual_seed(SHUFFLE_SEED)

    def set_frame_scores(self, scores: torch.Tensor | None) -> None:
        """scores: float [B, K, S] of the current forward, or None."""
        if scores is None:
            self.inputs = None
            return
        if scores.dim() != 3 or scores.shape[-1] != len(FRAME_SCORE_NAMES):
            raise ValueError(
                f"frame scores must be [B, K, {len(FRAME_SCORE_NAMES)}] {FRAME_SCORE_NAMES}, "
                f"got shape {tuple(scores.shape)}"
            )
        b, k, _ = scores.shape
        tables = {flag: frame_table(scores, flag).flatten(0, 1) for flag in (False, True)}
        permutation = None
        if self.shuffle_generator is not None:
            # Drawn on the CPU so the stream is the same on every device.
            order = torch.argsort(torch.rand(b, k, generator=self.shuffle_generator), dim=1)
            permutation = (order + torch.arange(b)[:, None] * k).flatten().to(scores.device)
        self.inputs = FrameInputs((b, k), tables, permutation)

    def inputs_for(self, rows: int, layer: str) -> FrameInputs:
        """The inputs for a gated layer that sees `rows` rows, with a clear error when they do not fit."""
        if self.inputs is None:
            raise ValueError(
                f"temporal LoRA layer {layer} gates on frame scores but this forward got none: pass "
                "frame_scores [B, K, 3] (the frame selector's SelectedFrames.scores) to the model"
            )
        b, k = self.inputs.frames
        if b * k != rows:
            raise ValueError(
                f"temporal LoRA layer {layer} sees {rows} rows but the frame scores cover "
                f"{b * k} frames: only layers with one frame per row (vision tower, "
                "frame Q-Former) can be gated"
            )
        return self.inputs

    @contextlib.contextmanager
    def _restored(self, inputs: FrameInputs | None) -> Iterator[None]:
        saved = self.inputs
        self.inputs = inputs
        try:
            yield
        finally:
            self.inputs = saved

    def checkpoint_context_fn(
        self,
    ) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """`context_fn` for torch.utils.checkpoint: the recompute runs with this forward's inputs."""
        return contextlib.nullcontext(), self._restored(self.inputs)


class GateLogit(nn.Module):
    """The constant gate: one learnable logit (`bias` [1]) for every row, g = sigmoid(bias)."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([logit]))

    def forward(self, rows: int) -> torch.Tensor:
        """→ the logit for `rows` rows, float [rows]."""
        return self.bias.expand(rows)


class TemporalLoraLayer(LoraLayer):
    """What the gated layers add to peft's LoRA layer: a gate network per adapter and the gated forward."""

    # Two flat ModuleDicts (not one Sequential) so peft's key mapping drops the adapter name from
    # `...lora_gate_in.<adapter>.weight` when saving, as it does for lora_A / lora_B.
    adapter_layer_names = (*LoraLayer.adapter_layer_names, *GATE_LAYER_NAMES)
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
        columns = table_columns(config.gate_inputs)
        use_feature = FEATURE_INPUT in config.gate_inputs
        n_in = len(columns) + (self.in_features if use_feature else 0)
        weight = self.lora_A[adapter_name].weight
        logit = math.log(config.gate_init / (1.0 - config.gate_init))
        if n_in:
            gate_in = nn.Linear(n_in, config.gate_hidden).to(weight.device, weight.dtype)
            gate_out = nn.Linear(config.gate_hidden, 1).to(weight.device, weight.dtype)
            # Not zero: every gate weight gets a gradient from the first non-zero LoRA update on; large
            # enough (DEFAULT_GATE_INIT_STD) that the gates of a clip's frames differ from the start.
            nn.init.normal_(gate_out.weight, std=config.gate_init_std)
            nn.init.constant_(gate_out.bias, logit)
            self.lora_gate_in[adapter_name] = gate_in
            self.lora_gate_out[adapter_name] = gate_out
        else:  # the constant control: no network, one logit
            self.lora_gate_out[adapter_name] = GateLogit(logit).to(weight.device, weight.dtype)
        self.gate_settings[adapter_name] = {
            "columns": columns,
            "feature": use_feature,
            "standardize": config.gate_standardize,
            "shuffle": config.gate_shuffle,
            "mode": config.gate_mode,
        }
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def frame_gate(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """Gate per row: x [N, ..., in] → float [N] in [0, 1] (dtype of the gate network)."""
        settings = self.gate_settings[adapter_name]
        gate_out = self.lora_gate_out[adapter_name]
        if isinstance(gate_out, GateLogit):
            gate = torch.sigmoid(gate_out(x.shape[0]))
        else:
            gate_in = self.lora_gate_in[adapter_name]
            features = self._gate_inputs(settings, x).to(gate_in.weight.dtype)
            gate = torch.sigmoid(gate_out(F.silu(gate_in(features))).squeeze(-1))
        if self.frame_gate_context is not None:
            self.frame_gate_context.last_gates[self.gate_name] = gate.detach()
        return gate

    def _gate_inputs(self, settings: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """The gate network's input per row: x [N, ..., in] → float [N, n_in]."""
        inputs = None
        if settings["columns"] or settings["shuffle"]:
            if self.frame_gate_context is None:
                raise RuntimeError(
                    f"temporal LoRA layer {self.gate_name} has no frame-score context: call "
                    "models.temporal_lora.install_frame_gates(model) after get_peft_model / from_pretrained"
                )
            inputs = self.frame_gate_context.inputs_for(x.shape[0], self.gate_name)
        parts = []
        if settings["columns"]:
            parts.append(inputs.tables[settings["standardize"]][:, settings["columns"]].to(x.dtype))
        if settings["feature"]:
            pooled = x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1)  # [N, in]
            # Normalised so the gate sees the feature's direction, not the layer's activation scale.
            parts.append(F.layer_norm(pooled, pooled.shape[-1:]))
        features = torch.cat(parts, dim=-1)
        if settings["shuffle"]:
            features = features[inputs.permutation]
        return features

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
        if any(settings["shuffle"] for settings in layer.gate_settings.values()):
            context.enable_shuffle()
    return context


def shuffle_state(model: nn.Module) -> torch.Tensor | None:
    """The shuffled control's permutation stream (its generator state, uint8 [n]), None for a model
    without one: what a training checkpoint stores, so that a resumed run draws the permutations the
    uninterrupted one would have."""
    generator = _shuffle_generator(model)
    return None if generator is None else generator.get_state()


def load_shuffle_state(model: nn.Module, state: torch.Tensor | None) -> None:
    """Restore what `shuffle_state` returned; a model whose gates shuffle needs a state, one whose
    gates do not takes None (a checkpoint of another method is an error, not a silent restart)."""
    generator = _shuffle_generator(model)
    if (generator is None) != (state is None):
        reason = (
            "it has none, the model's gates shuffle" if state is None else "the model's gates do not shuffle"
        )
        raise ValueError(f"the checkpoint's shuffled-gate stream does not fit this model: {reason}")
    if generator is not None:
        generator.set_state(state)


def _shuffle_generator(model: nn.Module) -> torch.Generator | None:
    try:
        context = getattr(_video_model(model), "frame_gate_context", None)
    except TypeError:  # not a video model (or not one this module wraps): nothing is gated
        return None
    return None if context is None else context.shuffle_generator


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


def gate_spread(gates: torch.Tensor) -> float:
    """How much a gate differs between the frames of a clip: float [B, K] → mean over clips of the
    (population) std over its K frames; 0 for a gate constant within every clip."""
    return gates.float().std(dim=-1, correction=0).mean().item()


def gate_summary(model: nn.Module) -> dict[str, float]:
    """Scalars for the metrics logger: overall, per-layer and per-frame-position mean gate (fraction),
    and the spread (`gate_spread`) per layer and averaged over the layers."""
    stats = gate_statistics(model)
    if not stats:
        return {}
    stacked = torch.stack(list(stats.values()))  # [layers, B, K]
    spreads = {name: gate_spread(gates) for name, gates in stats.items()}
    summary = {
        "gate/mean": stacked.mean().item(),
        "gate/std": stacked.std().item(),
        "gate/spread": sum(spreads.values()) / len(spreads),
    }
    for name, gates in stats.items():
        summary[f"gate/layer/{name}/mean"] = gates.mean().item()
        summary[f"gate/layer/{name}/spread"] = spreads[name]
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
