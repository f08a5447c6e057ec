"""VATEX: ``vatex_training_v1.0.json`` / ``vatex_validation_v1.0.json`` / ``vatex_public_test_english_v1.1.json``.

Each file is a list of {"videoID": "<youtube id>_<start>_<end>", "enCap": [10 English captions],
"chCap": [10 Chinese captions]}; the file is the split. The English captions are the clip's
default references (``captions``); the Chinese ones are kept beside them under the language code
"zh" (``captions_by_language`` in the sample json), when the file has them (the English-only
public test file has none). A clip without English captions is not written (no_caption). Videos: ``<videos>/<videoID>.mp4`` (already cut), else the
whole YouTube video ``<videos>/<youtube id>.mp4``, which is then cut to [start, end] seconds.
"""

from __future__ import annotations

from data.sources.common import Clip, clean_captions, clean_key, find_video, load_json


def parse_video_id(video_id: str) -> tuple[str, float, float]:
    """'Ptf_2VRj-V0_000122_000132' → ('Ptf_2VRj-V0', 122.0, 132.0); YouTube ids may hold '_' too."""
    ytid, start, end = video_id.rsplit("_", 2)
    return ytid, float(start), float(end)


def read(annotations: str, videos: str, split: str | None = None, **_: object) -> list[Clip]:
    data = load_json(annotations)
    if not isinstance(data, list):
        raise ValueError(f"{annotations}: expected a list of {{videoID, enCap}} entries")
    clips = []
    for entry in data:
        video_id = entry["videoID"]
        try:
            ytid, start, end = parse_video_id(video_id)
        except ValueError as exc:
            raise ValueError(f"{annotations}: videoID {video_id!r} is not <ytid>_<start>_<end>") from exc
        meta = {"youtube_id": ytid, "window": [start, end]}
        if split:
            meta["split"] = split
        refs = clean_captions(entry.get("enCap", []))
        languages = {"language": "en", "translations": {"zh": clean_captions(entry.get("chCap", []))}}
        cut = find_video(videos, [video_id])
        if cut is not None:
            clips.append(Clip(clean_key(video_id), cut, refs, video_id, meta=meta, **languages))
        else:
            full = find_video(videos, [ytid])
            clips.append(Clip(clean_key(video_id), full, refs, video_id, start, end, meta, **languages))
    return clips
