"""The per-sample stage of the pipeline: tar sample → decoded frames, caption, tokens; bad samples
skipped and counted by reason."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from data.decode_guard import DecodeTimeout, IsolatedDecoder
from data.decoders import check_decoder
from data.languages import CAPTIONS_BY_LANGUAGE, check_language_code, references_in, sample_languages
from data.video_io import VideoDecodeError, decode_frames

logger = logging.getLogger(__name__)

TextFn = Callable[[str], dict[str, torch.Tensor]]


class BadSampleCounter:
    """Counts skipped samples by reason inside one worker; the collate stage drains the counts.

    The tar reader's handler and the decode stage share one instance: both sit in the same
    dataset object, which each DataLoader worker receives (and unpickles) as a whole.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def skip(self, reason: str, key: str, url: str, detail: str = "") -> None:
        self.counts[reason] += 1
        logger.warning("skipping sample %s in %s: %s %s", key, url, reason, detail)

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for unreadable shards (not a tar, truncated, duplicate names): count, go on.

        webdataset appends the shard's url to the exception's args, so the log line names it.
        """
        self.counts["tar_error"] += 1
        logger.warning("tar_error, continuing with the next shard or file: %r", exn)
        return True

    def drain(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = {}  # informative only for the default language; a broken one is no reason to lose the clip
    return meta if isinstance(meta, dict) else {}


def _references(meta: dict[str, Any], caption: str) -> list[str]:
    refs = meta.get("captions")
    if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
        return refs
    return [caption]


class DecodeSample:
    """Sample dict from a tar → dict(frames uint8 [N,3,H,W], caption, references, key, meta[, input_ids, labels]).

    Returns None (the sample is dropped by `wds.map`) for unusable samples, after counting them.
    Checks the cheap caption first so broken samples cost no video decoding.

    ``caption_language`` None: the caption is the ``txt`` and the references the json's ``captions``
    (the default language). An ISO 639-1 code: both come from the json's ``captions_by_language``
    entry for it (the caption trained on is its first reference); a sample without it is skipped
    as ``missing_language``.

    ``decoder`` names the backend (`data.decoders`). ``decode_timeout_s`` > 0 decodes in a child
    process that is killed when a sample takes longer (`data.decode_guard`): the sample is skipped
    as ``decode_timeout`` and the worker goes on; None or 0 decodes in the worker itself, unbounded.
    """

    def __init__(
        self,
        num_frames: int,
        frame_size: tuple[int, int],
        text_fn: TextFn | None,
        bad: BadSampleCounter,
        sample_fps: float | None = None,
        caption_language: str | None = None,
        decoder: str = "decord",
        decode_timeout_s: float | None = None,
    ):
        check_decoder(decoder)  # here, in the main process: a bad name fails before workers start
        self.decoder = decoder
        self.isolated = IsolatedDecoder(decode_timeout_s) if decode_timeout_s else None
        self.num_frames = num_frames
        self.frame_size = tuple(frame_size)
        self.text_fn = text_fn
        self.bad = bad
        self.sample_fps = sample_fps
        self.caption_language = (
            None if caption_language is None else check_language_code(caption_language, "caption_language")
        )

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        if "mp4" not in sample:
            return self.bad.skip("missing_video", key, url)
        meta = _meta(sample)
        if self.caption_language is None:
            if "txt" not in sample:
                return self.bad.skip("missing_caption", key, url)
            try:
                caption = sample["txt"].decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                return self.bad.skip("bad_caption_encoding", key, url, str(exc))
            if not caption:
                return self.bad.skip("empty_caption", key, url)
            references = _references(meta, caption)
        else:
            references = references_in(meta, self.caption_language)
            if references is None:
                has = sample_languages(meta)
                return self.bad.skip(
                    "missing_language",
                    key,
                    url,
                    f"no {self.caption_language!r} references in its json ({CAPTIONS_BY_LANGUAGE}: "
                    f"{has if has else 'absent'})",
                )
            caption = references[0]
        decode = self.isolated or decode_frames
        try:
            frames = decode(
                sample["mp4"],
                self.num_frames,
                self.frame_size,
                sample_fps=self.sample_fps,
                decoder=self.decoder,
            )
        except DecodeTimeout as exc:
            return self.bad.skip("decode_timeout", key, url, str(exc))
        except VideoDecodeError as exc:
            return self.bad.skip("decode_error", key, url, str(exc))
        out = {
            "frames": frames,
            "caption": caption,
            "references": references,
            "key": key,
            "meta": meta,
            "pos": sample.get("__pos__", 0),
        }
        if self.text_fn is not None:
            # A text_fn error is a bug in the tokenizer set-up, not bad data: let it surface.
            tokens = self.text_fn(caption)
            input_ids, labels = tokens["input_ids"], tokens["labels"]
            if input_ids.ndim != 1 or input_ids.shape != labels.shape:
                raise ValueError(
                    f"text_fn must return 1-D input_ids and labels of one length, got "
                    f"{tuple(input_ids.shape)} and {tuple(labels.shape)}"
                )
            out.update(input_ids=input_ids.long(), labels=labels.long())
        return out
