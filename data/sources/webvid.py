"""WebVid: ``results_2M_train.csv`` / ``results_10M_train.csv`` / ``results_2M_val.csv``.

Columns: videoid, contentUrl, duration, page_dir, name (the caption). Videos, downloaded by the
user: ``<videos>/<page_dir>/<videoid>.mp4`` or ``<videos>/<videoid>.mp4``.
"""

from __future__ import annotations

import csv
import os

from data.sources.common import Clip, clean_captions, clean_key, find_video

COLUMNS = ("videoid", "name")


def read(annotations: str, videos: str, split: str | None = None, **_: object) -> list[Clip]:
    try:
        with open(annotations, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read annotations {annotations}: {exc}") from exc
    if rows and any(c not in rows[0] for c in COLUMNS):
        raise ValueError(f"{annotations}: needs columns {COLUMNS}, has {list(rows[0])}")
    clips = []
    for row in rows:
        vid = row["videoid"].strip()
        page_dir = (row.get("page_dir") or "").strip()
        path = find_video(videos, [os.path.join(page_dir, vid), vid] if page_dir else [vid])
        meta = {k: row[k] for k in ("contentUrl", "duration", "page_dir") if row.get(k)}
        if split:
            meta["split"] = split
        clips.append(Clip(clean_key(vid), path, clean_captions([row["name"]]), vid, meta=meta))
    return clips
