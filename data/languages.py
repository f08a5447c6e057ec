"""Reference captions in several languages: the sample json's ``captions_by_language`` field.

A source that knows the language of its captions writes, next to ``captions`` (the default
references, English for every source here, as before this field existed), the mapping
``captions_by_language: {"en": [...], "zh": [...]}``: ISO 639-1 code → that language's references,
the default language included. ``data.caption_language`` picks one of them for training and
evaluation; a sample without that language is skipped and counted (``missing_language``), never
given its English references instead.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import webdataset as wds

CAPTIONS_BY_LANGUAGE = "captions_by_language"

# ISO 639-1: two lowercase letters ("zh", not "cn" or "zh-CN"): one spelling per language, so that
# a shard's languages and a config's choice compare as strings.
_CODE = re.compile(r"[a-z]{2}")


def check_language_code(code: Any, where: str) -> str:
    """``code`` if it has the form of an ISO 639-1 code; else ValueError naming ``where``."""
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise ValueError(
            f"{where}: {code!r} is not an ISO 639-1 language code (two lowercase letters, e.g. 'en', 'zh')"
        )
    return code


def references_in(meta: dict[str, Any], language: str) -> list[str] | None:
    """The sample's non-empty references in ``language`` (from its json ``meta``), None if it has none."""
    by_language = meta.get(CAPTIONS_BY_LANGUAGE)
    if not isinstance(by_language, dict):
        return None
    refs = by_language.get(language)
    if not isinstance(refs, list):
        return None
    refs = [r.strip() for r in refs if isinstance(r, str) and r.strip()]
    return refs or None


def sample_languages(meta: dict[str, Any]) -> list[str]:
    """The languages the sample json has references in, sorted ([] without the field)."""
    by_language = meta.get(CAPTIONS_BY_LANGUAGE)
    if not isinstance(by_language, dict):
        return []
    return sorted(lang for lang in by_language if references_in(meta, lang))


def _metas(url: str) -> Iterator[dict[str, Any]]:
    # Only the json members are decoded; a sample without (or with a broken) json counts as {}.
    for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
        yield meta if isinstance(meta, dict) else {}


def peek_references(url: str, language: str, samples: int = 32) -> tuple[int, Counter[str], list[str]]:
    """What the first ``samples`` samples of shard ``url`` hold, for checks before a run starts.

    Returns:
        (samples read, language → how many of them have references in it, the ``language``
        references found, in order).
    """
    read, languages, refs = 0, Counter(), []
    for meta in itertools.islice(_metas(url), samples):
        read += 1
        languages.update(sample_languages(meta))
        refs.extend(references_in(meta, language) or [])
    return read, languages, refs
