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

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from trainer.distributed import barrier

_TAG = re.compile(r"^global_step(\d+)$")


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


def load_checkpoint(engine: Any, root: str | Path, tag: str | None = None) -> dict[str, Any]:
    """Load ``tag`` (default: latest) into the engine; returns the trainer's client_state."""
    tag = tag or latest_tag(root)
    if tag is None:
        raise FileNotFoundError(
            f"no complete checkpoint under {root} (no 'latest' naming an existing folder)"
        )
    _check_trainable_saved(engine, Path(root) / tag)
    path, client_state = engine.load_checkpoint(str(root), tag=tag, load_module_strict=False)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {Path(root) / tag}")
    return client_state


def _check_trainable_saved(engine: Any, folder: Path) -> None:
    """Non-strict loading would skip a missing tensor silently: name any trainable one absent."""
    files = sorted(folder.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no DeepSpeed model states (mp_rank_*_model_states.pt)")
    saved = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)["module"]
    missing = [n for n, p in engine.module.named_parameters() if p.requires_grad and n not in saved]
    if missing:
        raise KeyError(f"checkpoint {folder} lacks {len(missing)} trainable tensors, e.g. {missing[:5]}")


def export_adapter(model: Any, out_dir: str | Path) -> Path:
    """Write the trainable weights in peft's format (adapter_config.json + adapter_model.safetensors)."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    return out_dir


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
