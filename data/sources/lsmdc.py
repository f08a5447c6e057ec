"""LSMDC: ``LSMDC16_annos_training.csv`` etc., tab-separated, no header.

Columns: clip id, start (aligned), end (aligned), start (extracted), end (extracted), sentence.
Clip ids look like ``0001_American_Beauty_00.00.51.926-00.00.54.129``; the dots become '_' in
the key. Videos: ``<videos>/<movie>/<clip id>.avi`` (movie = the id up to its last '_'), or
``<videos>/<clip id>.<ext>``. Rows of the same clip are merged into one sample with several
references.
"""

from __future__ import annotations

import csv
import os

from data.sources.common import Clip, clean_captions, clean_key, find_video


def read(annotations: str, videos: str, split: str | None = None, **_: object) -> list[Clip]:
    rows: dict[str, list[list[str]]] = {}
    try:
        with open(annotations, encoding="utf-8", newline="") as f:
            # QUOTE_NONE: sentences hold quotes that are text, not csv quoting.
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if row and row[0].strip():
                    rows.setdefault(row[0].strip(), []).append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read annotations {annotations}: {exc}") from exc
    clips = []
    for clip_id, clip_rows in rows.items():
        movie = clip_id.rsplit("_", 1)[0]
        path = find_video(videos, [os.path.join(movie, clip_id), clip_id])
        # The blind test files have no sentence column: such clips end up without captions.
        refs = clean_captions([r[5] if len(r) >= 6 else "" for r in clip_rows])
        first = clip_rows[0]
        meta = {"movie": movie, **({"split": split} if split else {})}
        if len(first) >= 5:
            meta["aligned"], meta["extracted"] = first[1:3], first[3:5]
        clips.append(Clip(clean_key(clip_id), path, refs, clip_id, meta=meta))
    return clips
