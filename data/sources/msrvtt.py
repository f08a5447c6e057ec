"""MSR-VTT: ``MSRVTT_data.json`` ({"videos": [...], "sentences": [...]}) plus the split csvs.

Splits:
    all (default)             every video in the json
    train / validate / test   the json's own ``split`` field (the official 6513 / 497 / 2990)
    train9k / train7k         JSFusion's training lists ``MSRVTT_train.9k.csv`` / ``.7k.csv``
                              (column ``video_id``), found next to the json
    test1k                    the 1k-A test set, ``MSRVTT_JSFUSION_test.csv`` (columns key, vid_key,
                              video_id, sentence); its one retrieval sentence goes into the json as
                              ``retrieval_query``, while ``captions`` keeps all 20 references

Videos: ``<videos>/<video_id>.mp4`` (video0 ... video9999).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict

from data.sources.common import Clip, clean_captions, clean_key, find_video, load_json

SPLIT_CSVS = {
    "train9k": "MSRVTT_train.9k.csv",
    "train7k": "MSRVTT_train.7k.csv",
    "test1k": "MSRVTT_JSFUSION_test.csv",
}
JSON_SPLITS = ("train", "validate", "test")


def _read_split_csv(path: str) -> dict[str, str]:
    """video_id → its sentence column ('' when the csv has none), in file order."""
    if not os.path.isfile(path):
        raise ValueError(f"MSR-VTT split file not found: {path} (expected next to MSRVTT_data.json)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "video_id" not in rows[0]:
        raise ValueError(f"{path}: no video_id column (columns: {list(rows[0])})")
    return {row["video_id"]: row.get("sentence") or "" for row in rows}


def read(annotations: str, videos: str, split: str | None = None, **_: object) -> list[Clip]:
    path = os.path.join(annotations, "MSRVTT_data.json") if os.path.isdir(annotations) else annotations
    data = load_json(path)
    if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
        raise ValueError(f"{path}: expected an object with 'videos' and 'sentences'")
    captions: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for sentence in data["sentences"]:
        captions[sentence["video_id"]].append((int(sentence.get("sen_id", 0)), sentence.get("caption")))
    info = {v["video_id"]: v for v in data["videos"]}

    split = split or "all"
    queries: dict[str, str] = {}
    if split == "all":
        ids = list(info)
    elif split in JSON_SPLITS:
        ids = [vid for vid, v in info.items() if v.get("split") == split]
    elif split in SPLIT_CSVS:
        queries = _read_split_csv(os.path.join(os.path.dirname(path), SPLIT_CSVS[split]))
        ids = list(queries)
    else:
        raise ValueError(
            f"unknown MSR-VTT split {split!r}; one of all, {', '.join(JSON_SPLITS + tuple(SPLIT_CSVS))}"
        )

    clips = []
    for vid in ids:
        video = info.get(vid, {})
        meta = {k: video[k] for k in ("category", "url", "start time", "end time", "split") if k in video}
        if queries.get(vid):
            meta["retrieval_query"] = queries[vid]
        refs = clean_captions([c for _, c in sorted(captions.get(vid, []), key=lambda p: p[0])])
        clips.append(Clip(clean_key(vid), find_video(videos, [vid]), refs, vid, meta=meta))
    return clips
