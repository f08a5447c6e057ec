"""DeepSpeed checkpoints that are never half-written, plus the peft adapter export.

Frozen parameters are left out of checkpoints (``exclude_frozen_parameters``): the frozen base of
a QLoRA run is the 4-bit checkpoint the run started from, and bitsandbytes' 4-bit layers cannot
load their quantization state back into an already quantized model anyway. Loading is therefore
non-strict, and :func:`load_checkpoint` checks itself that every trainable tensor was restored.

DeepSpeed writes ``<root>/<tag>/…`` and then the ``latest`` file. A kill in between leaves a
partial folder that ``load_checkpoint`` would happily read. So each save goes to a hidden
temporary tag; only when every rank has finished does rank 0 rename it to ``global_step<N>``
and then atomically replace ``latest``. Whatever moment a crash hits, ``latest`` names a
complete checkpoint (or there is none yet).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from models.adapters import save_adapter
from trainer.config import ConfigError
from trainer.distributed import barrier

_TAG = re.compile(r"^global_step(\d+)$")
# What DeepSpeed names a rank's model states: ZeRO-3 prefixes the data-parallel rank (see below).
_MODEL_STATES = re.compile(r"^(?:zero_pp_rank_(?P<dp>\d+)_)?mp_rank_(?P<mp>\d+)_model_states\.pt$")


def save_checkpoint(
    engine: Any, root: str | Path, step: int, client_state: dict[str, Any], keep_last: int
) -> Path:
    """Save engine + ``client_state`` as ``<root>/global_step<step>``; returns that folder."""
    root = Path(root)
    tag = f"global_step{step}"
    tmp_tag = f".tmp-{tag}"
    engine.save_checkpoint(
        str(root), tag=tmp_tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=True
    )
    barrier()
    if engine.global_rank == 0:
        final = root / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(root / tmp_tag, final)
        _write_atomic(root / "latest", tag)
        _prune(root, keep_last)
    barrier()
    return root / tag


def latest_tag(root: str | Path) -> str | None:
    """The tag named by ``<root>/latest`` if that checkpoint folder exists, else None."""
    latest = Path(root) / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if (Path(root) / tag).is_dir() else None


def load_checkpoint(
    engine: Any, root: str | Path, tag: str | None = None, optimizer: str | None = None
) -> dict[str, Any]:
    """Load ``tag`` (default: latest) into the engine; returns the trainer's client_state.

    ``optimizer``: the run's `train.optimizer`; a checkpoint whose stored run config names another
    is refused (each keeps a state of its own layout, which the other cannot read)."""
    tag = tag or latest_tag(root)
    if tag is None:
        raise FileNotFoundError(
            f"no complete checkpoint under {root} (no 'latest' naming an existing folder)"
        )
    saved = _saved_states(Path(root) / tag)
    _check_trainable_saved(engine, saved, Path(root) / tag)
    if optimizer is not None:
        _check_same_optimizer(saved, optimizer, Path(root) / tag)
    path, client_state = engine.load_checkpoint(str(root), tag=tag, load_module_strict=False)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {Path(root) / tag}")
    replay_cpu_adam_bias_correction(engine.optimizer)
    return client_state


def replay_cpu_adam_bias_correction(optimizer: Any) -> int:
    """Bring DeepSpeed's C++ CPU Adam to the state an uninterrupted run would have; returns the steps replayed.

    The C++ optimizer keeps beta1^t and beta2^t for bias correction as running products, multiplied
    by beta once per step, and recomputes them with pow() only when the step sequence breaks, which
    is the first step of a freshly created optimizer after a resume. pow() and the product differ in
    the last float bits (for beta2 = 0.999 at steps 3, 6, 19, ...), so without this the first update
    after a resume differs from the uninterrupted run's by ~1 ulp and the runs drift apart. Replaying
    the step sequence on one-element dummies rebuilds the same products (a few microseconds per step).

    Two DeepSpeed optimizers run on that C++ code: ZeRO-Offload's DeepSpeedCPUAdam (one C++ optimizer
    per instance) and, on the CPU accelerator, FusedAdam (DeepSpeed's AdamW without offload: one C++
    optimizer per process and AdamW mode). A no-op for every other optimizer (torch Adam, FusedAdam's
    CUDA kernel and bitsandbytes compute beta**t each step).
    """
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.adam.fused_adam import multi_tensor_applier

    wrapper = None
    while optimizer is not None and not _keeps_running_products(optimizer, DeepSpeedCPUAdam, FusedAdam):
        wrapper, optimizer = optimizer, getattr(optimizer, "optimizer", None)  # ZeRO wraps the base one
    if optimizer is None:
        return 0
    sequence = _steps_in_visit_order(wrapper, optimizer)
    param, grad, exp_avg, exp_avg_sq = (torch.zeros(1) for _ in range(4))
    last = max((steps for steps, _ in sequence), default=0)
    for step in range(1, last + 1):
        for steps, group in sequence:
            if step > steps:
                continue
            beta1, beta2 = group["betas"]
            if isinstance(optimizer, DeepSpeedCPUAdam):
                optimizer.ds_opt_adam.adam_update(
                    optimizer.opt_id, step, group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                    group["bias_correction"], param, grad, exp_avg, exp_avg_sq,
                )  # fmt: skip
            else:  # FusedAdam.step's call, on lists of one dummy each (grads, params, moments)
                multi_tensor_applier(
                    optimizer.multi_tensor_adam, optimizer._dummy_overflow_buf,
                    [[grad], [param], [exp_avg], [exp_avg_sq]], group["lr"], beta1, beta2, group["eps"], step,
                    optimizer.adam_w_mode, int(group["bias_correction"]), group["weight_decay"],
                )  # fmt: skip
    return last


def _keeps_running_products(optimizer: Any, cpu_adam: type, fused_adam: type) -> bool:
    from deepspeed.accelerator import get_accelerator

    # FusedAdam is built from csrc/cpu/adam/fused_adam.cpp (the running products) only on the CPU
    # accelerator; its CUDA kernel takes beta**step afresh.
    cpu_fused = isinstance(optimizer, fused_adam) and get_accelerator().device_name() == "cpu"
    return isinstance(optimizer, cpu_adam) or cpu_fused


def _steps_in_visit_order(wrapper: Any, optimizer: Any) -> list[tuple[int, dict[str, Any]]]:
    """(steps taken, param group) of each update the optimizer's step makes, in the order it makes them.

    ZeRO-1/2 and plain optimizers step every param group at once. ZeRO-3 empties the groups between
    steps and steps one sub-group's flat fp32 partition at a time (``_optimizer_step``), so its
    states are keyed by those partitions.
    """

    def steps(tensors: list[Any]) -> int:
        return max(
            (int(optimizer.state[t]["step"]) for t in tensors if "step" in optimizer.state.get(t, {})),
            default=0,
        )

    flat = getattr(wrapper, "fp32_partitioned_groups_flat", None)
    if flat is not None:
        return [
            (steps([t]), optimizer.param_groups[wrapper.sub_group_to_group_id[i]]) for i, t in enumerate(flat)
        ]
    return [(steps(g["params"]), g) for g in optimizer.param_groups]


def model_states_files(folder: str | Path) -> list[Path]:
    """DeepSpeed's model-states files in a checkpoint folder, the first rank's first.

    Each holds the client_state and the module's state_dict. Up to ZeRO-2 DeepSpeed writes one
    ``mp_rank_XX_model_states.pt`` per model-parallel rank, with the full weights. ZeRO-3, which
    partitions the weights, writes one ``zero_pp_rank_D_mp_rank_XX_model_states.pt`` per data-parallel
    rank D (``DeepSpeedEngine._get_ckpt_name``); there a partitioned tensor is saved empty, its
    values live in the fp32 partitions of the ``*_optim_states.pt`` files.
    """
    found = []
    for path in Path(folder).iterdir():
        if m := _MODEL_STATES.match(path.name):
            found.append(((int(m["dp"] or 0), int(m["mp"])), path))
    return [path for _, path in sorted(found)]


def _saved_states(folder: Path) -> dict[str, Any]:
    """The first model-states file of a checkpoint (module weights + client_state), memory-mapped."""
    files = model_states_files(folder)
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no DeepSpeed model states "
            "(mp_rank_*_model_states.pt, or zero_pp_rank_*_mp_rank_*_model_states.pt under ZeRO-3)"
        )
    return torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)


def _check_same_optimizer(saved: dict[str, Any], optimizer: str, folder: Path) -> None:
    config = saved.get("config")
    if config is None:  # not a trainer checkpoint: nothing to compare with
        return
    # Checkpoints from before train.optimizer existed were all DeepSpeed's AdamW.
    before = config.get("train.optimizer", "adamw")
    if before != optimizer:
        raise ConfigError(
            f"checkpoint {folder} was trained with train.optimizer={before} but this run has "
            f"train.optimizer={optimizer}: its optimizer state cannot be read by another optimizer; "
            f"resume with train.optimizer={before}, or start afresh (train.resume=none)"
        )


def _check_trainable_saved(engine: Any, states: dict[str, Any], folder: Path) -> None:
    """Non-strict loading would skip a missing tensor silently: name any trainable one absent."""
    saved = states["module"]
    missing = [n for n, p in engine.module.named_parameters() if p.requires_grad and n not in saved]
    if missing:
        raise KeyError(f"checkpoint {folder} lacks {len(missing)} trainable tensors, e.g. {missing[:5]}")


def export_adapter(
    model: Any, processor: Any, out_dir: str | Path, run_config: dict[str, Any], run_info: dict[str, Any]
) -> Path:
    """The run's adapter folder: the trained weights in peft's layout (adapter_config.json +
    adapter_model.safetensors; the whole model for full fine-tuning, readable by
    ``models.adapters.load_adapter``), the processor, ``run_config.json`` (the resolved config) and
    ``run_info.json`` (MLflow run id and tracking URI, so `python -m trainer.evaluation` logs into
    the same run, and the step)."""
    out_dir = Path(out_dir)
    save_adapter(model, out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "run_config.json").write_text(json.dumps(run_config, indent=2))
    (out_dir / "run_info.json").write_text(json.dumps(run_info))
    return out_dir


def resume_source(mode: str, checkpoint_dir: Path) -> tuple[Path, str] | None:
    """(checkpoint root, tag) to continue from for ``train.resume`` = ``mode``: ``none``, ``auto``
    (the latest complete checkpoint under ``checkpoint_dir``, if any) or a ``global_stepN`` folder."""
    if mode == "none":
        return None
    if mode == "auto":
        tag = latest_tag(checkpoint_dir)
        return (checkpoint_dir, tag) if tag else None
    folder = Path(mode)
    if not folder.is_dir():
        raise FileNotFoundError(f"train.resume: checkpoint folder {folder} does not exist")
    return folder.parent, folder.name


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints and any stale temporary tags."""
    steps = sorted(int(m.group(1)) for p in root.iterdir() if (m := _TAG.match(p.name)))
    if keep_last > 0:
        for step in steps[:-keep_last]:
            shutil.rmtree(root / f"global_step{step}", ignore_errors=True)
    for stale in root.glob(".tmp-global_step*"):
        shutil.rmtree(stale, ignore_errors=True)
