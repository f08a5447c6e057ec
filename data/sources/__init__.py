"""Readers of each data set's own annotation files → a list of `Clip`s for `data.make_shards`.

One module per data set, each with ``read(annotations, videos, split, **options) -> list[Clip]``.
A reader never opens a video: it resolves paths (a clip whose file is missing gets ``video=None``
and is reported by make_shards, not dropped silently) and gathers every reference caption.
"""

from __future__ import annotations

from collections.abc import Callable

from data.sources import activitynet, folder, lsmdc, msrvtt, vatex, webvid
from data.sources.common import Clip

Reader = Callable[..., list[Clip]]

SOURCES: dict[str, Reader] = {
    "msrvtt": msrvtt.read,
    "vatex": vatex.read,
    "activitynet": activitynet.read,
    "lsmdc": lsmdc.read,
    "webvid": webvid.read,
    "folder": folder.read,
}

__all__ = ["SOURCES", "Clip"]
