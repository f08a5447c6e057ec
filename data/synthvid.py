"""SynthVid: a synthetic video-text benchmark of coloured shapes moving on a dark background.

Every caption is a function of what the pixels show (shape, colour, count, direction, order), so a
tiny model can learn it quickly and a falling loss means the whole video-to-text path works.

Tasks:
    pretrain   appearance: "a red circle moves from left to right", "two green triangles move down";
               the shapes move for the whole clip.
    temporal   direction and order of events that are sparse in time: one shape appears for a
               short window (about 6-10% of the clip), moves, disappears, and does so 2 or 3 times,
               "a blue square moves up and then from right to left". Uniform sampling of K frames
               misses short windows, and a model that ignores frame order cannot tell the caption
               from "... from right to left and then up".
    retrieval  temporal clips in groups of `GROUP_SIZE` that share everything (shape, colour,
               background, event windows, positions) except the order of the two events
               ("order" negative) or the direction of one of them ("direction" negative).

Ground truth in each sample's json (every task): task, shape, color, count, direction(s), events
(start/end frame, inclusive, and direction, in time order), visible (per frame), motion (per-frame
displacement (dx, dy) of the shape's centre in pixels, 0 where it is not visible in both frames),
positions (float [count][T][2] (x, y) centres; null where the shape is not visible). Retrieval adds
group, variant and group_indices (the clip indices of the whole group, anchor first).

CLI::

    python -m data.synthvid --task temporal --num 256 --seed 0 --out shards/synthvid_temporal
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import numpy as np

from data.shards import ShardSink
from data.video_io import encode_mp4

# Bumped whenever the same arguments would write other bytes, so that cached shards named after their
# settings (trainer/assets.py) are not reused across a change. 2: x264's C code and bit-exact colour
# conversion (data/video_io.encode_mp4), the same bytes on every machine.
SYNTHVID_VERSION = 2
TASKS = ("pretrain", "temporal", "retrieval")
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# Saturated, well separated hues: they survive yuv420p chroma subsampling at 64x64.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 205, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 40),
    "purple": (165, 60, 210),
    "white": (235, 235, 235),
}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
# Unit motion vectors in image coordinates (x right, y down) and how captions say them.
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
DIRECTION_PHRASES = {"right": "from left to right", "left": "from right to left", "up": "up", "down": "down"}
OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
# Temporal events: how many per clip, and how long each lasts as a share of the clip.
EVENT_COUNTS = (2, 3)
EVENT_LENGTH = (0.06, 0.10)
GROUP_SIZE = 3
VARIANTS = ("anchor", "order", "direction")  # retrieval: the clip, then its two hard negatives


def _caption(shape: str, color: str, count: int, directions: list[str]) -> str:
    noun = shape if count == 1 else PLURALS[shape]
    verb = "moves" if count == 1 else "move"
    motion = " and then ".join(DIRECTION_PHRASES[d] for d in directions)
    return f"{COUNT_WORDS[count]} {color} {noun} {verb} {motion}"


def _direction_sequences() -> list[tuple[str, ...]]:
    """Every sequence of 2 or 3 event directions without the same direction twice in a row."""
    return [
        seq
        for length in EVENT_COUNTS
        for seq in itertools.product(DIRECTIONS, repeat=length)
        if all(a != b for a, b in itertools.pairwise(seq))
    ]


def caption_corpus() -> list[str]:
    """Every caption SynthVid can produce (all tasks), in a fixed order: the tiny tokenizer's corpus.

    Retrieval captions are temporal ones (two events), so the temporal sequences cover them.
    """
    corpus = [
        _caption(shape, color, count, [d])
        for count, shape, color, d in itertools.product(COUNT_WORDS, SHAPES, COLORS, DIRECTIONS)
    ]
    corpus += [
        _caption(shape, color, 1, list(seq))
        for shape, color, seq in itertools.product(SHAPES, COLORS, _direction_sequences())
    ]
    return corpus


VOCABULARY: list[str] = sorted({word for sentence in caption_corpus() for word in sentence.split()})


def _shape_masks(shape: str, centres: np.ndarray, radius: float, size: int) -> np.ndarray:
    """Boolean masks bool [T, size, size] of one shape at per-frame centres float [T, 2] (x, y)."""
    grid = np.arange(size, dtype=np.float32)
    dx = grid[None, None, :] - centres[:, 0, None, None]  # [T, 1, W]
    dy = grid[None, :, None] - centres[:, 1, None, None]  # [T, H, 1]
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half = radius * 0.85  # about the circle's area, so size does not give the shape away
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # apex up: the half-width grows from 0 at the top (dy = -r) to r at the bottom (dy = r)
        return (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _pretrain_paths(
    rng: np.random.Generator, count: int, direction: str, size: int, radius: float, t: int
) -> np.ndarray:
    """Per-object, per-frame centres float [count, T, 2] (x, y): edge to edge over the whole clip."""
    centre = (size - 1) / 2
    reach = centre - radius - 1  # farthest a centre may go from the middle without leaving the frame
    progress = np.linspace(0.0, 1.0, t, dtype=np.float32)[:, None]  # [T, 1]
    v = np.array(DIRECTIONS[direction], dtype=np.float32)
    start, end = centre - v * reach, centre + v * reach
    base = start + progress * (end - start)  # [T, 2]
    # Objects travel in parallel lanes across the motion axis so that they never overlap.
    lane_axis = np.abs(v[::-1])
    spacing = min(2.4 * radius, 2 * reach / max(count - 1, 1))
    offsets = (np.arange(count) - (count - 1) / 2) * spacing
    jitter = rng.uniform(-1, 1) * max(reach - abs(offsets).max(), 0)
    return np.stack([base + (o + jitter) * lane_axis for o in offsets])


def _event_windows(rng: np.random.Generator, num_events: int, t: int) -> list[tuple[int, int]]:
    """(start, end) inclusive frame ranges of `num_events` events, one in each equal part of the clip.

    Each event lasts EVENT_LENGTH of the clip (at least 2 frames: a direction needs two positions)
    and, where its part has room, keeps an empty frame before and after it, so that events never
    touch and every event starts with the shape appearing.
    """
    bounds = np.linspace(0, t, num_events + 1).round().astype(int)
    windows = []
    for lo, hi in itertools.pairwise(bounds.tolist()):
        part = hi - lo
        length = int(np.clip(round(t * rng.uniform(*EVENT_LENGTH)), 2, part))
        margin = 1 if part >= length + 2 else 0
        start = int(rng.integers(lo + margin, hi - length - margin + 1))
        windows.append((start, start + length - 1))
    return windows


def _event_legs(rng: np.random.Generator, num_events: int, size: int, radius: float) -> np.ndarray:
    """Per event, the leg's midpoint float [E, 2] (x, y) and its length float [E] packed as [E, 3].

    A leg of length L centred on m runs from m - v L/2 to m + v L/2 whatever the direction v, so a
    leg and its reverse cover the same pixels: the "direction" negatives of retrieval rely on it.
    """
    centre = (size - 1) / 2
    reach = centre - radius - 1
    length = rng.uniform(0.8, 1.2, size=num_events) * reach
    # The midpoint may sit off centre by up to what keeps both ends inside the frame on any axis.
    room = np.maximum(reach - length / 2, 0)[:, None]
    midpoint = centre + rng.uniform(-1, 1, size=(num_events, 2)) * room
    return np.concatenate([midpoint, length[:, None]], axis=1)


def _temporal_paths(
    windows: list[tuple[int, int]], legs: np.ndarray, directions: list[str], t: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centres float [T, 2] (NaN where the shape is absent) and visibility bool [T]."""
    centres = np.full((t, 2), np.nan, dtype=np.float32)
    for (start, end), leg, direction in zip(windows, legs, directions, strict=True):
        v = np.array(DIRECTIONS[direction], dtype=np.float32)
        progress = np.linspace(-0.5, 0.5, end - start + 1, dtype=np.float32)[:, None]
        centres[start : end + 1] = leg[:2] + progress * v * leg[2]
    return centres, ~np.isnan(centres[:, 0])


def _retrieval_directions(rng: np.random.Generator, variant: str) -> list[str]:
    """The two event directions of one member of a retrieval group (the rng is the group's)."""
    names = list(DIRECTIONS)
    first, second = rng.choice(len(names), size=2, replace=False)
    anchor = [names[first], names[second]]
    leg = int(rng.integers(2))  # which event the "direction" negative changes
    # Reversing a leg is the hardest negative; when it would repeat the other leg's direction
    # (up then down → down, down), turn it by 90 degrees instead.
    replacement = OPPOSITE[anchor[leg]]
    if replacement == anchor[1 - leg]:
        turns = [d for d in names if d not in (anchor[leg], replacement)]
        replacement = turns[int(rng.integers(len(turns)))]
    if variant == "anchor":
        return anchor
    if variant == "order":
        return anchor[::-1]
    changed = list(anchor)
    changed[leg] = replacement
    return changed


def _background(rng: np.random.Generator, size: int, graded: bool) -> np.ndarray:
    """uint8 [size, size, 3]: a dark tint, plus (temporal tasks) a static vertical gradient so that
    an empty frame is not perfectly flat, as no real frame is."""
    tint = rng.integers(0, 30, size=3)
    background = np.empty((size, size, 3), dtype=np.int64)
    background[:] = tint
    if graded:
        background += np.linspace(0, 24, size).round().astype(np.int64)[:, None, None]
    return background.astype(np.uint8)


def _motion(positions: np.ndarray) -> np.ndarray:
    """float [T, 2] centres (NaN: absent) → float [T, 2] displacement from the previous frame, 0
    where the shape is absent in either frame (and for the first frame)."""
    motion = np.zeros_like(positions)
    motion[1:] = positions[1:] - positions[:-1]
    return np.nan_to_num(motion, nan=0.0)


def _rounded(positions: np.ndarray) -> list:
    """float [count, T, 2] with NaN → nested lists with None (JSON null) where absent."""
    return [
        [None if np.isnan(p[0]) else [round(float(p[0]), 2), round(float(p[1]), 2)] for p in path]
        for path in positions
    ]


def generate_clip(
    index: int, *, seed: int, task: str = "pretrain", size: int = 64, num_frames: int = 16
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Draw clip number `index` of the SynthVid stream `seed`.

    Each clip has its own generator seeded by (seed, index, task) - for retrieval by (seed, group,
    task), shared by the whole group: a clip does not depend on how many clips are generated or in
    which order.

    Returns:
        frames uint8 [T, size, size, 3], caption, ground truth dict (see the module docstring).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if task != "pretrain" and num_frames < 4:
        raise ValueError(
            f"SynthVid {task!r} needs num_frames >= 4 (two events of two frames), got {num_frames}"
        )
    group, variant = divmod(index, GROUP_SIZE) if task == "retrieval" else (index, 0)
    rng = np.random.default_rng([seed, group, TASKS.index(task)])
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    names = list(DIRECTIONS)
    truth: dict[str, Any] = {"task": task, "shape": shape, "color": color}
    if task == "pretrain":
        count = int(rng.integers(1, 4))
        directions = [names[rng.integers(len(names))]]
        radius = size * rng.uniform(0.09, 0.12)
        paths = _pretrain_paths(rng, count, directions[0], size, radius, num_frames)
        windows = [(0, num_frames - 1)]
        background = _background(rng, size, graded=False)
    else:
        count = 1
        if task == "temporal":
            num_events = min(int(rng.choice(EVENT_COUNTS)), num_frames // 2)
            directions = [names[rng.integers(len(names))]]
            while len(directions) < num_events:  # no direction twice in a row
                directions.append(names[rng.integers(len(names))])
                if directions[-1] == directions[-2]:
                    directions.pop()
        else:
            num_events = 2
            directions = _retrieval_directions(rng, VARIANTS[variant])
            members = range(group * GROUP_SIZE, (group + 1) * GROUP_SIZE)
            truth.update(group=group, variant=VARIANTS[variant], group_indices=list(members))
        radius = size * rng.uniform(0.09, 0.12)
        windows = _event_windows(rng, num_events, num_frames)
        legs = _event_legs(rng, num_events, size, radius)
        centres, _ = _temporal_paths(windows, legs, directions, num_frames)
        paths = centres[None]
        background = _background(rng, size, graded=True)

    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = background
    for centres in paths:
        visible = ~np.isnan(centres[:, 0])
        masks = _shape_masks(shape, np.nan_to_num(centres[visible], nan=0.0), radius, size)
        frames[visible] = np.where(masks[..., None], np.array(COLORS[color], dtype=np.uint8), frames[visible])

    truth.update(
        count=count,
        direction=directions[0] if task == "pretrain" else " then ".join(directions),
        directions=directions,
        events=[
            {"start": s, "end": e, "direction": d} for (s, e), d in zip(windows, directions, strict=True)
        ],
        visible=(~np.isnan(paths[0, :, 0])).tolist(),
        motion=np.round(_motion(paths[0].astype(np.float64)), 2).tolist(),
        radius=round(float(radius), 3),
        positions=_rounded(paths.astype(np.float64)),
    )
    return frames, _caption(shape, color, count, directions), truth


def write_synthvid(
    out_dir: str,
    task: str = "pretrain",
    num: int = 256,
    seed: int = 0,
    samples_per_shard: int = 64,
    size: int = 64,
    num_frames: int = 16,
    fps: float = 8.0,
) -> list[str]:
    """Generate `num` clips and write them as shards `out_dir/{00000..}.tar`; returns the shard paths.

    Deterministic given the arguments (fixed tar mtimes, single-threaded x264): the same call
    writes byte-identical shards. For retrieval, `num` not a multiple of GROUP_SIZE leaves the last
    group incomplete (its json still lists the whole group's indices).
    """
    with ShardSink(out_dir, samples_per_shard) as sink:
        for index in range(num):
            frames, caption, truth = generate_clip(
                index, seed=seed, task=task, size=size, num_frames=num_frames
            )
            meta = {**truth, "fps": fps, "num_frames": num_frames, "size": [size, size], "seed": seed}
            sink.write(f"{index:09d}", encode_mp4(frames, fps=fps), caption, meta)
    return sink.paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=TASKS, default="pretrain")
    parser.add_argument("--num", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--samples-per-shard", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="frame height = width (even)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8.0)
    args = parser.parse_args(argv)
    paths = write_synthvid(
        os.path.expanduser(args.out),
        task=args.task,
        num=args.num,
        seed=args.seed,
        samples_per_shard=args.samples_per_shard,
        size=args.size,
        num_frames=args.frames,
        fps=args.fps,
    )
    print("\n".join(paths))


if __name__ == "__main__":
    main()
