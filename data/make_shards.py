"""Turn a video data set into video2dataset-layout WebDataset shards.

    python -m data.make_shards --source msrvtt --annotations MSRVTT_data.json --videos videos/ \\
        --out shards/msrvtt-train9k --split train9k --samples-per-shard 1000 --workers 8 --resize 224

Clips are read from the data set's own annotation files (`data.sources`), listed in annotation
order and cut into shards of `--samples-per-shard` clips: shard i always holds the same clips, so a
run can be resumed (complete shards, i.e. a tar plus its stats json, are kept; the rest are
redone) and shards can be written in parallel by processes. A clip is copied as it is when it is
already an mp4 and no cut, resize or frame rate is asked for; otherwise it is re-encoded with
PyAV. Every written video is checked with decord (the training decoder); a clip whose video is
missing, unreadable, or that has no caption is not written but listed in its shard's stats json
(``failed``: key, reason, detail). A shard may therefore hold fewer samples than the others.

Per sample: ``{key}.mp4``, ``{key}.txt`` (the first reference caption) and ``{key}.json`` with
``captions`` (all references of the default language, English), ``captions_by_language`` (ISO
639-1 code → references, every language the source has, the default one included; left out where
the source cannot tell the language: folder sidecars), ``source``, ``source_id``, ``frames`` and
the data set's fields.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

from data.languages import CAPTIONS_BY_LANGUAGE
from data.shards import ShardSink, shard_name, stats_path
from data.sources import SOURCES, Clip
from data.video_io import VideoDecodeError, probe_video, transcode

logger = logging.getLogger(__name__)

CONFIG_NAME = "make_shards.json"  # what the shards were made from; a resumed run must match it
COPYABLE = (".mp4", ".m4v")


@dataclass(frozen=True)
class EncodeOptions:
    """Re-encoding asked for on the command line (None: keep the source's)."""

    height: int | None = None
    fps: float | None = None


def unique_keys(clips: list[Clip]) -> list[Clip]:
    """Make keys unique in place by suffixing repeats with _1, _2, ... (ids that clean to one key)."""
    seen: Counter[str] = Counter()
    for clip in clips:
        base = clip.key
        while clip.key in seen:
            clip.key = f"{base}_{seen[base]}"
            seen[base] += 1
        seen[clip.key] += 1
    return clips


def clip_video(clip: Clip, options: EncodeOptions) -> bytes:
    """The clip's mp4 bytes: the file itself when it can be copied, else re-encoded by PyAV."""
    windowed = clip.start is not None or clip.end is not None
    if not windowed and options == EncodeOptions() and clip.video.lower().endswith(COPYABLE):
        with open(clip.video, "rb") as f:
            return f.read()
    return transcode(clip.video, start=clip.start, end=clip.end, height=options.height, fps=options.fps)


def write_shard(
    out: str, shard: int, clips: list[Clip], source: str, options: EncodeOptions
) -> dict[str, int]:
    """Write shard number `shard` from `clips`; returns reason → count (with "written")."""
    counts: Counter[str] = Counter()
    sink = ShardSink(out, samples_per_shard=len(clips) + 1, start_shard=shard)
    with sink:
        for clip in clips:
            reason, detail = "", ""
            if clip.video is None:
                reason, detail = "video_not_found", f"no video file for {clip.source_id!r}"
            elif not clip.captions:
                reason, detail = "no_caption", clip.meta.get("caption_error", "no non-empty caption")
            else:
                try:
                    mp4 = clip_video(clip, options)
                    frames = probe_video(mp4)
                except (VideoDecodeError, OSError) as exc:
                    reason, detail = "unreadable_video", f"{clip.video}: {exc}"
            if reason:
                sink.record_failure(clip.key, reason, detail)
                counts[reason] += 1
                continue
            meta = {k: v for k, v in clip.meta.items() if k != "caption_error"}
            meta.update(captions=clip.captions, source=source, source_id=clip.source_id, frames=frames)
            if clip.language is not None:
                meta[CAPTIONS_BY_LANGUAGE] = clip.captions_by_language()
            if clip.start is not None or clip.end is not None:
                meta["clip_window"] = [clip.start, clip.end]
            sink.write(clip.key, mp4, clip.captions[0], meta)
            counts["written"] += 1
    return dict(counts)


def _write_shard_task(args: tuple) -> tuple[int, dict[str, int]]:
    out, shard, clips, source, options = args
    return len(clips), write_shard(out, shard, clips, source, options)


def is_complete(out: str, shard: int) -> bool:
    """A shard is done when both its tar and its stats json exist (the stats are written last)."""
    path = os.path.join(out, shard_name(shard))
    return os.path.exists(path) and os.path.exists(stats_path(path))


def _check_config(out: str, config: dict) -> None:
    path = os.path.join(out, CONFIG_NAME)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        changed = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
        if changed:
            raise ValueError(
                f"{out} holds shards made with other settings {changed} (old, new): "
                "use another --out folder or delete it"
            )
    else:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        os.replace(path + ".tmp", path)


def make_shards(
    source: str,
    annotations: str | None,
    videos: str,
    out: str,
    *,
    split: str | None = None,
    samples_per_shard: int = 1000,
    workers: int = 1,
    resize: int | None = None,
    fps: float | None = None,
    paragraph: bool = False,
    progress: bool = True,
) -> dict[str, object]:
    """Read the annotations, write the missing shards, return a summary.

    Returns:
        {"clips", "shards", "skipped_shards" (complete from an earlier run), "written",
         "failures": reason → count} for the shards written by this call.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of {sorted(SOURCES)}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if source != "folder" and not annotations:
        raise ValueError(f"--annotations is required for {source}")
    clips = unique_keys(SOURCES[source](annotations, videos, split, paragraph=paragraph))
    os.makedirs(out, exist_ok=True)
    config = {
        "source": source,
        "annotations": os.path.abspath(annotations) if annotations else None,
        "split": split,
        "samples_per_shard": samples_per_shard,
        "resize": resize,
        "fps": fps,
        "paragraph": paragraph,
        "clips": len(clips),
    }
    _check_config(out, config)
    options = EncodeOptions(resize, fps)
    chunks = [clips[i : i + samples_per_shard] for i in range(0, len(clips), samples_per_shard)]
    todo = [(out, i, chunk, source, options) for i, chunk in enumerate(chunks) if not is_complete(out, i)]
    skipped = len(chunks) - len(todo)
    done_before = sum(len(c) for i, c in enumerate(chunks) if is_complete(out, i))
    totals: Counter[str] = Counter()
    if workers <= 1 or len(todo) <= 1:
        results = map(_write_shard_task, todo)
        pool = None
    else:
        # Processes (re-encoding and probing hold the GIL for parts of their work), forked where the
        # platform can: workers then inherit the imported modules instead of importing torch again.
        # The pool starts before the progress bar's monitor thread exists.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = context.Pool(min(workers, len(todo)))
        results = pool.imap_unordered(_write_shard_task, todo)
    bar = tqdm(
        total=len(clips),
        initial=done_before,
        unit="clip",
        desc=f"make_shards {source}",
        disable=not progress,
    )
    try:
        for n, counts in results:
            totals.update(counts)
            bar.update(n)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    written = totals.pop("written", 0)
    return {
        "clips": len(clips),
        "shards": len(chunks),
        "skipped_shards": skipped,
        "written": written,
        "failures": dict(totals),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("--annotations", help="annotation file (or MSR-VTT folder); not used by 'folder'")
    parser.add_argument("--videos", required=True, help="folder holding the video files")
    parser.add_argument("--out", required=True, help="output folder for {shard:05d}.tar + _stats.json")
    parser.add_argument(
        "--split", help="MSR-VTT: all/train/validate/test/train9k/train7k/test1k; else a label"
    )
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    parser.add_argument("--resize", type=int, help="re-encode to this height (aspect ratio kept)")
    parser.add_argument("--fps", type=float, help="re-encode to this frame rate")
    parser.add_argument("--paragraph", action="store_true", help="ActivityNet: one sample per video")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = make_shards(
            args.source,
            args.annotations,
            args.videos,
            args.out,
            split=args.split,
            samples_per_shard=args.samples_per_shard,
            workers=args.workers,
            resize=args.resize,
            fps=args.fps,
            paragraph=args.paragraph,
        )
    except ValueError as exc:
        sys.exit(f"make_shards: {exc}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
