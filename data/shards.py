"""Write video-text samples into video2dataset-compatible WebDataset shards.

Layout (the same that video2dataset writes, so its shards and ours are interchangeable):

    out_dir/00000.tar          {key}.mp4  {key}.txt (caption, utf-8)  {key}.json (meta)
    out_dir/00000_stats.json   {"count", "successes", "failures", ...}

Each tar is written under a temporary name and renamed when complete: a run killed midway leaves
finished shards and no half-written one that a reader would choke on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import webdataset as wds

# A fixed mtime in every tar header: the same samples give byte-identical shards.
_TAR_MTIME = 0.0


def shard_name(shard: int) -> str:
    """File name of shard number `shard`: '00012.tar'."""
    return f"{shard:05d}.tar"


def _atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class ShardSink:
    """Append samples to numbered shards of at most `samples_per_shard` samples each.

    Usage::

        with ShardSink("shards/", samples_per_shard=100) as sink:
            sink.write("000000000", mp4_bytes, "a red circle moves up", {"fps": 8})
        paths = sink.paths  # or paths = sink.close() without the `with`

    On an exception inside the `with` block the open shard is discarded (its temporary file is
    deleted); the shards already completed stay.
    """

    def __init__(self, out_dir: str, samples_per_shard: int, start_shard: int = 0):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = str(out_dir)
        self.samples_per_shard = samples_per_shard
        self.paths: list[str] = []
        os.makedirs(self.out_dir, exist_ok=True)
        self._shard = start_shard
        self._writer: wds.TarWriter | None = None
        self._tmp_path = ""
        self._successes = 0
        self._failures: Counter[str] = Counter()

    def write(self, key: str, mp4: bytes, caption: str, meta: dict[str, Any] | None = None) -> None:
        """Add one sample. `key` must not contain dots or slashes (webdataset splits names at the
        first dot of the basename); `meta` is stored as {key}.json with key and caption added."""
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
        if self._writer is None:
            self._open()
        meta = {**(meta or {}), "key": key, "caption": caption}
        self._writer.write(
            {
                "__key__": key,
                "mp4": bytes(mp4),
                "txt": caption.encode("utf-8"),
                "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
            }
        )
        self._successes += 1
        if self._successes >= self.samples_per_shard:
            self._finish()

    def record_failure(self, key: str, reason: str) -> None:
        """Count a sample that could not be produced (it goes into the shard's stats json)."""
        self._failures[reason] += 1

    def close(self) -> list[str]:
        """Complete the open shard and return the paths of all shards written, in order."""
        if self._writer is not None:
            self._finish()
        return list(self.paths)

    def abort(self) -> None:
        """Drop the open shard (its temporary file) without publishing it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            os.remove(self._tmp_path)

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        final = os.path.join(self.out_dir, shard_name(self._shard))
        # '.tar.tmp' does not match '*.tar', so readers listing the directory never see it.
        self._tmp_path = final + ".tmp"
        self._writer = wds.TarWriter(self._tmp_path, mtime=_TAR_MTIME)
        self._successes = 0

    def _finish(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        final = os.path.join(self.out_dir, shard_name(self._shard))
        os.replace(self._tmp_path, final)
        failures = sum(self._failures.values())
        stats = {
            "shard": self._shard,
            "count": self._successes + failures,  # as in video2dataset: samples attempted
            "successes": self._successes,
            "failures": failures,
            "failure_reasons": dict(self._failures),
        }
        _atomic_write_text(os.path.join(self.out_dir, f"{self._shard:05d}_stats.json"), json.dumps(stats))
        self.paths.append(final)
        self._shard += 1
        self._failures = Counter()
