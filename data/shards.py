"""Write video-text samples into video2dataset-compatible WebDataset shards.

Layout (the same that video2dataset writes, so its shards and ours are interchangeable):

    out_dir/00000.tar          {key}.mp4  {key}.txt (caption, utf-8)  {key}.json (meta)
    out_dir/00000_stats.json   {"count", "successes", "failures", ...}

Each tar is written under a temporary name and renamed when complete: a run killed midway leaves
finished shards and no half-written one that a reader would choke on.

Reading side: `shard_sample_count` tells how many samples a shard holds (from its stats json, else
by listing the tar's headers) and `assign_shards` splits shards over ranks x workers by those
counts, which is what lets the pipeline plan an exact epoch.
"""

from __future__ import annotations

import json
import os
import tarfile
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
        self._failed: list[dict[str, str]] = []

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

    def record_failure(self, key: str, reason: str, detail: str = "") -> None:
        """Count a sample that could not be produced; key, reason and detail go into the stats json."""
        self._failures[reason] += 1
        self._failed.append({"key": key, "reason": reason, "detail": detail})

    def close(self) -> list[str]:
        """Complete the open shard and return the paths of all shards written, in order.

        Failures recorded after the last complete shard still get a (possibly empty) shard, so
        their stats json exists and names them.
        """
        if self._writer is None and self._failed:
            self._open()
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
            "failed": self._failed,
        }
        _atomic_write_text(os.path.join(self.out_dir, f"{self._shard:05d}_stats.json"), json.dumps(stats))
        self.paths.append(final)
        self._shard += 1
        self._failures = Counter()
        self._failed = []


def stats_path(shard_path: str) -> str:
    """'dir/00012.tar' → 'dir/00012_stats.json' (video2dataset's name for a shard's stats)."""
    return shard_path.removesuffix(".tar") + "_stats.json"


def shard_sample_count(url: str) -> int | None:
    """Samples in one shard: `successes` of its stats json, else counted from the tar's headers.

    Returns None for a remote shard without a local stats file. A tar that is cut short counts the
    samples before the cut; one that is not a tar at all counts 0 (the pipeline then names it).
    """
    stats = stats_path(url)
    if os.path.exists(stats):
        try:
            with open(stats, encoding="utf-8") as f:
                successes = json.load(f).get("successes")
            if isinstance(successes, int):
                return successes
        except (OSError, ValueError):
            pass  # an unreadable stats file: count the tar instead
    if not os.path.isfile(url):
        return None
    keys, last = 0, None
    try:
        with tarfile.open(url, mode="r|") as tar:  # streaming: reads headers, skips the data
            for member in tar:
                if not member.isfile():
                    continue
                # webdataset groups files by the name up to the first dot of the basename.
                directory, base = os.path.split(member.name)
                key = os.path.join(directory, base.split(".", 1)[0])
                if key != last:
                    keys, last = keys + 1, key
    except (tarfile.TarError, OSError, EOFError):
        pass
    return keys


def assign_shards(counts: list[int], slots: int, order: list[int] | None = None) -> list[list[int]]:
    """Split shards over `slots` (ranks x workers) so that the sample counts come out even.

    Greedy: shards are taken in `order` (default: as listed) and each goes to the slot holding the
    fewest samples so far (ties: the lowest slot). Every process computes the same split from the
    same counts and order, so no communication is needed.

    Args:
        counts: samples per shard.
        slots: number of slots; must not exceed the number of shards.
        order: the shard indices in the order they are handed out (e.g. an epoch's permutation).

    Returns:
        For each slot, its shard indices in the order they are read.
    """
    if slots > len(counts):
        raise ValueError(f"{len(counts)} shards cannot fill {slots} slots")
    assigned: list[list[int]] = [[] for _ in range(slots)]
    load = [0] * slots
    for shard in range(len(counts)) if order is None else order:
        # An empty slot first: every slot gets at least one shard even when some hold 0 samples.
        slot = min(range(slots), key=lambda s: (len(assigned[s]) > 0, load[s], s))
        assigned[slot].append(shard)
        load[slot] += counts[shard]
    return assigned
