"""What every source reader shares: the `Clip` record, key cleaning and video lookup."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from data.languages import check_language_code

# Containers ffmpeg (and so PyAV) reads; anything that is not mp4 is re-encoded to mp4.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".webm", ".mkv", ".avi", ".mov")


@dataclass
class Clip:
    """One sample to write.

    Attributes:
        key: shard key, letters/digits/'_'/'-' only (webdataset splits names at the first dot).
        video: path of the source video file, or None when it was not found.
        captions: every reference caption, in the data set's order (may be empty: then skipped).
        source_id: the id the data set itself uses (kept in the json).
        start, end: the clip's window in the video, seconds (None: the whole video).
        meta: data-set fields worth keeping (category, url, timestamps, ...).
        language: ISO 639-1 code of `captions` ("en" for every data set here); None where the
            source cannot tell (folder sidecars): the json then has no ``captions_by_language``.
        translations: the references in other languages, code → captions (VATEX: {"zh": [...]});
            a language without captions is left out.
    """

    key: str
    video: str | None
    captions: list[str]
    source_id: str
    start: float | None = None
    end: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    language: str | None = "en"
    translations: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = ([self.language] if self.language is not None else []) + list(self.translations)
        for code in codes:
            check_language_code(code, f"clip {self.key!r}")
        if self.language is None and self.translations:
            raise ValueError(f"clip {self.key!r}: translations need the language of its captions")

    def captions_by_language(self) -> dict[str, list[str]]:
        """Every language's references, the default one first; {} when the language is unknown."""
        if self.language is None:
            return {}
        return {self.language: self.captions, **{k: v for k, v in self.translations.items() if v}}


def clean_key(text: str) -> str:
    """A data-set id as a shard key: every character other than [A-Za-z0-9_-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(text)) or "_"


def find_video(videos: str, stems: list[str]) -> str | None:
    """First existing `videos/<stem><ext>` over the stems (in order) and VIDEO_EXTENSIONS."""
    for stem in stems:
        for ext in VIDEO_EXTENSIONS:
            path = os.path.join(videos, stem + ext)
            if os.path.isfile(path):
                return path
    return None


def load_json(path: str) -> Any:
    """json.load with the file named in the error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read annotations {path}: {exc}") from exc


def clean_captions(captions: list[Any]) -> list[str]:
    """Strings only, whitespace collapsed, empty ones dropped."""
    return [" ".join(c.split()) for c in captions if isinstance(c, str) and c.strip()]
