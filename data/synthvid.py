"""SynthVid: a synthetic video-text benchmark of coloured shapes moving on a dark background.

Every caption is a function of what the pixels show (shape, colour, count, direction), so a tiny
model can learn it quickly and a falling loss means the whole video-to-text path works.

Tasks:
    pretrain  "a red circle moves from left to right", "two green triangles move down"
    temporal  "a blue square moves up and then from right to left" (order matters: a model that
              ignores time cannot tell it from "... moves from right to left and then up")

Ground truth in each sample's json: task, shape, color, count, direction(s), per-frame positions.

CLI::

    python -m data.synthvid --task pretrain --num 256 --seed 0 --out shards/synthvid
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import numpy as np

from data.shards import ShardSink
from data.video_io import encode_mp4

TASKS = ("pretrain", "temporal")
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


def _caption(task: str, shape: str, color: str, count: int, directions: list[str]) -> str:
    noun = shape if count == 1 else PLURALS[shape]
    verb = "moves" if count == 1 else "move"
    motion = " and then ".join(DIRECTION_PHRASES[d] for d in directions)
    return f"{COUNT_WORDS[count]} {color} {noun} {verb} {motion}"


def caption_corpus() -> list[str]:
    """Every caption SynthVid can produce (both tasks), in a fixed order: the tiny tokenizer's corpus."""
    corpus = [
        _caption("pretrain", shape, color, count, [d])
        for count, shape, color, d in itertools.product(COUNT_WORDS, SHAPES, COLORS, DIRECTIONS)
    ]
    corpus += [
        _caption("temporal", shape, color, 1, [d1, d2])
        for shape, color, d1, d2 in itertools.product(SHAPES, COLORS, DIRECTIONS, DIRECTIONS)
        if d1 != d2
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


def _paths(
    rng: np.random.Generator, task: str, count: int, directions: list[str], size: int, radius: float, t: int
) -> np.ndarray:
    """Per-object, per-frame centres float [count, T, 2] (x, y) that stay inside the frame."""
    centre = (size - 1) / 2
    reach = centre - radius - 1  # farthest a centre may go from the middle without leaving the frame
    progress = np.linspace(0.0, 1.0, t, dtype=np.float32)[:, None]  # [T, 1]
    if task == "pretrain":
        v = np.array(DIRECTIONS[directions[0]], dtype=np.float32)
        start, end = centre - v * reach, centre + v * reach
        base = start + progress * (end - start)  # [T, 2]
        # Objects travel in parallel lanes across the motion axis so that they never overlap.
        lane_axis = np.abs(v[::-1])
        spacing = min(2.4 * radius, 2 * reach / max(count - 1, 1))
        offsets = (np.arange(count) - (count - 1) / 2) * spacing
        jitter = rng.uniform(-1, 1) * max(reach - abs(offsets).max(), 0)
        return np.stack([base + (o + jitter) * lane_axis for o in offsets])
    # temporal: two legs of equal length; the path is centred so both legs fit in the frame.
    v1, v2 = (np.array(DIRECTIONS[d], dtype=np.float32) for d in directions)
    # Legs of length `reach`: opposite legs go out to the edge and back to the middle, perpendicular
    # ones form an L whose corners are at most reach / 2 from the middle on each axis.
    leg = reach
    start = centre - (v1 + v2) * leg / 2
    half = t // 2
    first = start + np.linspace(0, 1, half, dtype=np.float32)[:, None] * v1 * leg
    second = start + v1 * leg + np.linspace(0, 1, t - half, dtype=np.float32)[:, None] * v2 * leg
    return np.concatenate([first, second])[None]


def generate_clip(
    index: int, *, seed: int, task: str = "pretrain", size: int = 64, num_frames: int = 16
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Draw clip number `index` of the SynthVid stream `seed`.

    Each clip has its own generator seeded by (seed, index): a clip does not depend on how many
    clips are generated or in which order.

    Returns:
        frames uint8 [T, size, size, 3], caption, ground truth dict (task, shape, color, count,
        directions/direction, positions: float [count][T][2] (x, y) object centres in pixels).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    rng = np.random.default_rng([seed, index, TASKS.index(task)])
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    names = list(DIRECTIONS)
    if task == "pretrain":
        count = int(rng.integers(1, 4))
        directions = [names[rng.integers(len(names))]]
    else:
        count = 1
        first, second = rng.choice(len(names), size=2, replace=False)
        directions = [names[first], names[second]]
    radius = size * rng.uniform(0.09, 0.12)
    paths = _paths(rng, task, count, directions, size, radius, num_frames)

    # A dark, slightly tinted background: varies between clips but never competes with the shapes.
    background = rng.integers(0, 30, size=3).astype(np.uint8)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = background
    for centres in paths:
        frames[_shape_masks(shape, centres, radius, size)] = COLORS[color]

    caption = _caption(task, shape, color, count, directions)
    truth = {
        "task": task,
        "shape": shape,
        "color": color,
        "count": count,
        "direction": directions[0] if task == "pretrain" else " then ".join(directions),
        "directions": directions,
        "radius": round(float(radius), 3),
        "positions": np.round(paths.astype(np.float64), 2).tolist(),
    }
    return frames, caption, truth


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
    writes byte-identical shards.
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
