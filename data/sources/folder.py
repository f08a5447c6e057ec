"""A folder of videos with caption sidecars: ``clip.mp4`` + ``clip.txt`` (one caption per line).

Sub-folders are walked; the key is the relative path without extension, '/' and '.' made '_'.
Annotations are not needed (``--annotations`` is ignored). A video without a sidecar, or with
an empty or non-UTF-8 one, is reported as having no caption.
"""

from __future__ import annotations

import os

from data.sources.common import VIDEO_EXTENSIONS, Clip, clean_captions, clean_key


def read(annotations: str | None, videos: str, split: str | None = None, **_: object) -> list[Clip]:
    if not os.path.isdir(videos):
        raise ValueError(f"video folder not found: {videos}")
    clips = []
    for root, dirs, files in os.walk(videos):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS:
                continue
            rel = os.path.relpath(os.path.join(root, stem), videos)
            sidecar = os.path.join(root, stem + ".txt")
            refs: list[str] = []
            meta = {"split": split} if split else {}
            if os.path.isfile(sidecar):
                try:
                    with open(sidecar, encoding="utf-8") as f:
                        refs = clean_captions(f.read().splitlines())
                except UnicodeDecodeError:
                    meta["caption_error"] = f"{sidecar} is not UTF-8"
            # A sidecar's language is not known: no captions_by_language (data.caption_language
            # cannot pick these clips).
            clips.append(Clip(clean_key(rel), os.path.join(root, name), refs, rel, meta=meta, language=None))
    return clips
