"""ActivityNet Captions: ``train.json`` / ``val_1.json`` / ``val_2.json``.

Each file maps "v_<youtube id>" → {"duration": s, "timestamps": [[start, end], ...], "sentences":
[...]}. Clip mode (default): one sample per (timestamp, sentence), key ``<id>_<nnn>``, cut from
the video. Paragraph mode: one sample per video, the sentences joined in time order as the caption,
the segments kept in the json. Videos: ``<videos>/v_<id>.mp4`` or ``<videos>/<id>.mp4``.
"""

from __future__ import annotations

from data.sources.common import Clip, clean_captions, clean_key, find_video, load_json


def read(
    annotations: str, videos: str, split: str | None = None, paragraph: bool = False, **_: object
) -> list[Clip]:
    data = load_json(annotations)
    if not isinstance(data, dict):
        raise ValueError(f"{annotations}: expected an object mapping video ids to annotations")
    clips = []
    for vid, entry in data.items():
        path = find_video(videos, [vid, vid.removeprefix("v_")])
        duration = float(entry.get("duration", 0.0))
        segments = list(zip(entry.get("timestamps", []), entry.get("sentences", []), strict=False))
        base = {"duration": duration, **({"split": split} if split else {})}
        if paragraph:
            segments.sort(key=lambda s: s[0][0])
            text = " ".join(clean_captions([s for _, s in segments]))
            meta = {**base, "timestamps": [t for t, _ in segments], "sentences": [s for _, s in segments]}
            clips.append(Clip(clean_key(vid), path, [text] if text else [], vid, meta=meta))
            continue
        for i, ((start, end), sentence) in enumerate(segments):
            # Annotated ends sometimes run past the video; clamp to what exists.
            start, end = max(0.0, float(start)), min(float(end), duration) if duration else float(end)
            meta = {**base, "segment": i, "timestamp": [start, end]}
            refs = clean_captions([sentence]) if end > start else []  # an empty window is reported
            clips.append(Clip(f"{clean_key(vid)}_{i:03d}", path, refs, vid, start, end, meta))
    return clips
