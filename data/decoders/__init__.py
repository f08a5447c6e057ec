"""The video decoders the pipeline can use (`data.decoder`), one module per backend.

Every backend module has the same function, ``decode_frames(mp4, num_frames, size, num_threads=1,
sample_fps=None) -> uint8 [N, 3, H, W]``, the signature of `data.video_io.decode_frames`, which
dispatches to the one named here. A backend is imported only when it is asked for, so a missing
optional decoder costs nothing until a run names it.

- ``decord`` (the default, the design's choice): decord 0.6.0 resizes while it decodes.
- ``pyav``: PyAV (FFmpeg) decoding every frame in order and keeping the wanted ones: frame-exact
  seeking by construction (no keyframe index to trust), the reference the others are measured
  against (`benchmarks/pipeline.py`).

torchcodec (its PyPI wheel needs CUDA torch) and decord2 (it installs over decord, under the same
package name) are not offered: the README's *Decoding* paragraph says what was checked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch

DecodeFn = Callable[..., torch.Tensor]

# name → (module, the pip package that provides the library it needs)
DECODERS: dict[str, tuple[str, str]] = {
    "decord": ("data.decoders.decord_backend", "decord==0.6.0"),
    "pyav": ("data.decoders.pyav_backend", "av==18.1.0"),
}


def check_decoder(name: str) -> ModuleType:
    """The backend module of decoder `name`, imported.

    Raises:
        ValueError: `name` is not a known decoder, or its library is not installed (the message
            names the package to install).
    """
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r} (data.decoder): choose one of {', '.join(DECODERS)}")
    module, package = DECODERS[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(
            f"decoder {name!r} (data.decoder) cannot be used: {exc}; install it with pip install {package}"
        ) from exc


def get_decoder(name: str) -> DecodeFn:
    """``decode_frames`` of backend `name` (looked up on every call, so a patched module is seen)."""
    return check_decoder(name).decode_frames
