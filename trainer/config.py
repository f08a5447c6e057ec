"""Typed run configuration: YAML file + ``key=value`` overrides, checked against dataclasses.

A run is described by one :class:`RunConfig`. Each section is a dataclass; unknown keys and
values of the wrong type are rejected with an error that names the key and lists the valid ones,
because a silently ignored typo (``adapter.rnak=64``) wastes a whole run.

Overrides use dotted paths and YAML syntax for values, so the command line speaks the same
language as the file: ``train.steps=200 adapter.target_modules=[q_proj,v_proj] model.preset=null``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message says which and what is allowed."""


@dataclass
class ModelConfig:
    # A transformers-format directory (save_pretrained layout) holding the base Video-LLaMA, its
    # tokenizer and processor settings. It must exist: a named path is never created.
    name_or_path: str | None = None
    # With name_or_path null: the random-init base of this preset (models.presets), built once under
    # assets_dir (trainer/assets.py). Not used when name_or_path is set.
    preset: str | None = None
    # Weight format of the frozen towers: nf4 (+ double quant), nf4-nodq, int8 or none (16/32 bit);
    # auto: the adapter method's own (trainer.compat.METHOD_QUANTIZATION: qlora nf4, qlora8 int8, lora none).
    # Or one per part (models.weight_formats), e.g. {vision: int8, llm: nf4}, {vision: none, llm: nf4}
    # or {fusion: nf4}; vision or llm left out takes the method's own, fusion (both Q-Formers) stays
    # in the compute dtype unless named. The projection is never quantized.
    quantization: str | dict[str, str] = "auto"
    # Compute dtype: auto picks bfloat16 where the accelerator supports it, else float32. bfloat16 on
    # a CPU without AVX-512 BF16 or AMX runs many times slower than float32 (a warning says so).
    dtype: str = "auto"
    # Recompute activations in backward instead of keeping them: true for every tower's layers, or
    # the towers to do it in, e.g. [vision] (models/checkpointing.py: the ViT holds most of them).
    gradient_checkpointing: bool | list[str] = False


@dataclass
class GateConfig:
    """Temporal (frame-gated) LoRA: what the per-frame gate g_t is computed from and how it acts."""

    # Selector scores (entropy, scene_change, motion), "position" (k / (K-1) of the kept frame),
    # "delta" (the chosen scores minus the previous kept frame's) and/or "feature" (the frame's pooled
    # input); []: one learnable constant per layer (models/temporal_lora.py).
    inputs: list[str] = field(default_factory=lambda: ["motion", "entropy"])
    # scale: y = W x + g_t (alpha/r) B A x; rank: frame t uses the first ceil(r g_t) components.
    mode: str = "scale"
    hidden: int = 16
    # Initial gate value, so training starts close to plain LoRA.
    init: float = 0.9
    # Regex of the layers to gate; None: the frame-rowed ones (vision tower, frame Q-Former).
    modules: str | None = None
    # z-score each selector score over the clip's K frames before the gates read it: raw scores barely
    # differ between frames (SynthVid motion 0.019 vs 0.005), so raw-score gates start out constant.
    standardize: bool = True
    # Std of the gate's output weight at init; null: models.temporal_lora.DEFAULT_GATE_INIT_STD (0.5,
    # gates differ across a clip's frames from the start; the old 0.01 made them equal to 2e-5).
    init_std: float | None = None


@dataclass
class AdaLoraSettings:
    """peft AdaLoRA baseline; unset values take models.rank_allocation's defaults
    (total_step = train.steps, tinit 10% and tfinal 20% of it)."""

    total_step: int | None = None
    target_r: int | None = None
    init_r: int | None = None
    tinit: int | None = None
    tfinal: int | None = None
    delta_t: int | None = None


@dataclass
class BottleneckSettings:
    """Bottleneck adapters (adapter.method=adapter): h + up(act(down(h))) after attention / MLP blocks."""

    dim: int = 16
    # gelu | relu | silu | tanh
    activation: str = "gelu"


@dataclass
class AdapterConfig:
    # qlora | qlora8 | lora | prefix | adapter | temporal_qlora | temporal_lora | ranked_qlora
    # | temporal_ranked_qlora | adalora | full | frozen (zero-shot: no training, evaluation only)
    # | temporal_qlora_shuffled | temporal_qlora_constant (the temporal controls, models/methods.py)
    method: str = "qlora"
    r: int = 8
    alpha: int = 16
    # rsLoRA (peft's use_rslora): scale alpha / sqrt(r) instead of alpha / r, so that a rank sweep
    # does not also sweep the step size (at a fixed alpha, alpha / r halves with every doubling of r).
    rslora: bool = False
    dropout: float = 0.0
    # None: the model's default targets (attention and MLP linears of the ViT and the LLM).
    target_modules: list[str] | None = None
    # Modules trained in full and saved with the adapter; None: the model's default (the projection).
    modules_to_save: list[str] | None = None
    # Per-modality ranks / alphas: {vision: 16, frame_qformer: 8, video_qformer: 8, projection: 8, llm: 64}.
    ranks: dict[str, int] | None = None
    alphas: dict[str, float] | None = None
    # static (the ranks above) or a budget allocator: static_vision | static_fusion | static_llm (fixed
    # weights, the named towers 4x the others' rank) | entropy | motion | importance (measured on the
    # calibration batches). Without ranks, allocated over vision, frame_qformer, video_qformer, llm.
    allocation: str = "static"
    # Trainable-parameter budget of the allocators (and AdaLoRA's LoRA budget); null: what the method
    # trains at one rank r on its default placement (QLoRA at r for ranked_qlora), a matched count.
    budget: float | None = None
    # Training batches the allocators measure activations / gradients / motion on.
    calibration_batches: int = 4
    # Group name → regex, overriding the built-in module groups.
    group_patterns: dict[str, str] | None = None
    gate: GateConfig = field(default_factory=GateConfig)
    adalora: AdaLoraSettings = field(default_factory=AdaLoraSettings)
    # Towers that get adapters (models.towers.PLACEMENTS): vision | fusion (both Q-Formers) | llm |
    # both (vision + llm) | all (vision + fusion + llm); null: the method's default (both for the LoRA
    # family, llm for adapter; prefix is LLM-only). Not with ranks / target_modules.
    placement: str | None = None
    # Prefix tuning (method=prefix): learned key/value pairs per LLM layer.
    num_virtual_tokens: int = 20
    bottleneck: BottleneckSettings = field(default_factory=BottleneckSettings)


@dataclass
class SynthVidConfig:
    """SynthVid shards generated for the splits whose shard path is null (trainer/assets.py)."""

    task: str = "pretrain"
    num_train: int = 256
    num_eval: int = 32
    samples_per_shard: int = 64
    # The training clips' stream; the eval clips are drawn from eval_seed's, so that runs whose data
    # seeds differ are still evaluated on the same clips (paired comparisons).
    seed: int = 0
    eval_seed: int = 0
    num_frames: int = 16
    size: int = 64


@dataclass
class DataConfig:
    # A folder of .tar shards, a brace pattern (dir/{00000..00009}.tar) or a single tar; it must exist.
    # null: SynthVid shards of `synthvid`, generated once under assets_dir.
    train_shards: str | None = None
    eval_shards: str | None = None
    # Held-out test shards for `python -m trainer.evaluation --split test` (None: no test split).
    test_shards: str | None = None
    # What to generate for the null shard paths above (null: nothing; a null path is then an error).
    synthvid: SynthVidConfig | None = None
    # N candidate frames decoded per clip (the selector then keeps K of them).
    num_candidate_frames: int = 16
    frame_size: int = 64
    # Decode frames this many per second of video (None: N frames spread over the whole clip).
    sample_fps: float | None = None
    num_workers: int = 1
    shuffle_buffer: int = 64
    # Epochs: exact (default; every sample once per epoch, ranks padded to equal batch counts), or
    # an endless stream cut every epoch_samples samples (cycling shards, or drawing them with
    # replacement when resampled).
    resampled: bool = False
    epoch_samples: int | None = None
    # ISO 639-1 code ("zh"): train on and evaluate against the json's captions_by_language entry of
    # that language (samples without it are skipped and counted). null: the shards' default
    # references (the txt caption and the json's captions; English for every source here).
    caption_language: str | None = None
    # Video decoder: decord (the default) | pyav (frame-exact, slower; data/decoders/).
    decoder: str = "decord"
    # Seconds one sample's decode may take; a slower one is skipped (counted as decode_timeout) and
    # its worker goes on (data/decode_guard.py). null or 0: decode in the worker, unbounded.
    decode_timeout_s: float | None = 30.0


@dataclass
class SelectorConfig:
    # K frames kept out of the N candidates.
    k: int = 4
    policy: str = "uniform"
    # Luma bit depth of the entropy / scene-change histograms.
    bits: int = 4
    # hybrid policy: weights of the (entropy, scene_change, motion) scores.
    weights: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.4])
    # scene / motion / hybrid: temporal suppression radius as a fraction of the clip.
    coverage: float = 0.1
    # random / headtail policies: seed of the draws (eval restarts from it on every call).
    seed: int = 0


@dataclass
class TrainConfig:
    steps: int = 60
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2.0e-3
    # Learning rates of the ViT and of the aligner (both Q-Formers, their queries, the frame positions
    # and the projection), for their weights and adapters alike; null: lr. A fresh encoder at the
    # LLM's rate collapses to one output for every clip (trainer/param_groups.py).
    vit_lr: float | None = None
    aligner_lr: float | None = None
    # Learning rate of the temporal gate networks (frame-gated methods), wherever they sit; null: the
    # rate of their tower's group. Gates start with no gradient until LoRA B leaves zero.
    gate_lr: float | None = None
    weight_decay: float = 0.0
    # adamw (the DeepSpeed JSON's) | adamw_8bit | paged_adamw | paged_adamw_8bit (bitsandbytes, as a
    # client optimizer; not with optimizer offload): trainer/optimizers.py.
    optimizer: str = "adamw"
    # cosine | linear | constant, each after a linear warm-up of warmup_steps.
    schedule: str = "cosine"
    warmup_steps: int = 5
    # Floor of the cosine schedule as a fraction of lr.
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 1
    # Caption evaluation every N optimizer steps (0: only at the end).
    eval_every: int = 0
    save_every: int = 0
    # Checkpoints kept on disk (older ones are deleted after a newer one is complete).
    keep_last: int = 2
    # auto: continue from <output_dir>/checkpoints/latest when it exists; none: start fresh;
    # or a checkpoint folder (…/checkpoints/global_stepN) to continue from.
    resume: str = "auto"
    # Steps whose loss is NaN/inf are skipped (no update) and counted; this many in a row stop the run.
    max_nonfinite_steps: int = 5
    # Count FLOPs of one step with FlopCounterMode (once, on the first step).
    count_flops: bool = True
    # Dense bf16 peak of the accelerator for MFU; null: looked up from the device name.
    peak_tflops: float | None = None
    # Weight of the auxiliary symmetric InfoNCE loss of the retrieval head (0: no head at all).
    contrastive_weight: float = 0.0
    # Size of the retrieval head's shared video-text embedding space.
    contrastive_dim: int = 128
    # Intra-op (OpenMP) threads per rank; null: an explicit OMP_NUM_THREADS, else the cores this
    # process may use shared by the node's ranks, less one per data worker (trainer/threads.py).
    num_threads: int | None = None

    @property
    def retrieval_dim(self) -> int | None:
        """The retrieval head's size the model needs (`VideoLlamaConfig.retrieval_dim`), None without one."""
        return self.contrastive_dim if self.contrastive_weight > 0 else None


@dataclass
class DeepSpeedConfig:
    # A DeepSpeed JSON whose "auto" values are filled from this run configuration.
    config: str = "ds_configs/zero2_offload.json"
    # auto: nccl with CUDA, gloo otherwise.
    dist_backend: str = "auto"


# The MLflow store of a run, sweep or comparison not told another one; under outputs/ with the runs.
DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"


@dataclass
class TrackingConfig:
    # Any MLflow tracking URI: a local store (sqlite:///…, file:…) or a server (http://…).
    uri: str = DEFAULT_TRACKING_URI
    experiment: str = "multimodal-qlora"
    run_name: str | None = None
    # Where new experiments keep artifacts; None: MLflow's default (./mlruns for a local store).
    artifact_location: str | None = None
    # Seconds between background uploads of buffered metrics.
    flush_interval_s: float = 2.0
    # The run's method counted at this preset's size (models.train_state: frozen weights by format,
    # trainable weights, gradients, Adam state), logged as memory/analytic_<preset>_*_gib: the
    # experiments' memory axis, as a tiny model's process memory measures the interpreter. null: off.
    analytic_memory_preset: str | None = "1b"


@dataclass
class EvalConfig:
    # Held-out clips captioned and scored at the end of training (0 disables).
    num_samples: int = 32
    batch_size: int = 8
    max_new_tokens: int = 16
    num_beams: int = 1
    # Clips shown in the qualitative HTML report of `python -m trainer.evaluation`.
    report_samples: int = 8
    # Text→video retrieval: re-rank each caption's top-k videos by log p(caption | video) (0 = off);
    # adds rerank_t2v_* metrics next to the retrieval head's.
    rerank_top_k: int = 0
    # Temporal controls (trainer/evaluation/frame_views.py): the kept frames also shown "shuffled"
    # in time and "repeated" (one frame K times); their figures are logged as eval/<view>/<metric>.
    controls: list[str] = field(default_factory=lambda: ["shuffled", "repeated"])
    # Clips with SynthVid ground truth: choose among the closed set of candidate captions
    # (data.synthvid_choices.choice_set) by log p(caption | video) - log p(caption | blank video),
    # eval/choice_acc_pct (chance 25%); eval/choice_raw_acc_pct without the prior subtracted.
    forced_choice: bool = True
    # METEOR among the caption metrics (its Java scorer takes seconds to load on every evaluation).
    meteor: bool = True


@dataclass
class RunConfig:
    output_dir: str = "outputs/demo"
    # Where generated inputs (model.preset bases, data.synthvid shards) are kept, each in a folder
    # named after what it was generated from, shared by every run that asks for the same one.
    assets_dir: str = "outputs/assets"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.002, ...}``: the shape MLflow params and sweep grids use."""
        return _flatten(self.to_dict())


def param_text(value: Any) -> str:
    """A flat setting's value as text, the form MLflow holds it in as a param: JSON for a list or a
    mapping, ``str`` for anything else."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def is_setting(key: str) -> bool:
    """Whether flat key ``key`` is a `RunConfig` setting or an entry of a mapping-valued one
    (``adapter.ranks.llm``), rather than a figure a run logs next to its settings (``world_size``)."""
    return any(key == leaf or key.startswith(leaf + ".") for leaf in _setting_keys(RunConfig))


@functools.cache
def _setting_keys(cls: type, prefix: str = "") -> tuple[str, ...]:
    """The dotted names of the non-section fields of dataclass ``cls``, sections walked into."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_setting_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return tuple(keys)


# Settings a resumed run is expected to differ in: its length, where it resumes from, and where it
# writes (a checkpoint copied to another output_dir continues there).
RESUMABLE_CHANGES = ("train.steps", "train.resume", "output_dir")


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for the flat settings (`RunConfig.flat`) that differ,
    `RESUMABLE_CHANGES` left out; a key only one side has (an older checkpoint) pairs with None."""
    keys = (saved.keys() | current.keys()) - set(RESUMABLE_CHANGES)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides (they win) and type-check the result."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}"
            )
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return _build(RunConfig, raw, prefix="")


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 1e-4)``; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key, yaml.safe_load(text) if text.strip() else ""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and types recursively."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(prefix + k for k in unknown)}; valid keys in {where}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for option in non_none:
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is Any or (
        isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(f"{key} must be {getattr(tp, '__name__', tp)}, got {value!r} ({type(value).__name__})")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
