"""SynthVid: a synthetic video-text benchmark of coloured shapes moving on a dark background.

Every caption is a function of what the pixels show (shape, colour, count, direction, order), so a
tiny model can learn it quickly and a falling loss means the whole video-to-text path works. The
captions follow one grammar (data/synthvid_grammar.py), which also reads them back;
data/synthvid_choices.py builds the forced-choice sets of evaluation.

Tasks (each isolates one ability; events last EVENT_LENGTH of the clip, 4-6 frames at 32 frames):
    pretrain   appearance and motion: "a red circle moves from left to right", "two green
               triangles move down"; the shapes move for the whole clip.
    motion     pretrain's captions, but the shapes appear, cross part of the frame and disappear,
               at a random time and place (MOTION_WINDOW, MOTION_LEG): the sense of the motion is
               read only by comparing two frames, as in the event tasks, and not off where the
               shape is at a given frame index, as it can be in pretrain.
    sparse     finding one short event: a shape appears, moves, disappears, once, in an otherwise
               static clip ("a red circle moves up"). In about half the clips a still distractor
               of another shape and colour (not in the caption) sits there the whole clip. Uniform
               K=4 of 32 frames keeps at most one frame of the event: too few to see a direction.
    order      direction and order: the same with 2 or 3 events, "a blue square moves up and then
               from right to left"; never a palindrome (up, left, up), so the reversed order is
               always another caption.
    dense      appearance only, the negative control: 1-3 shapes visible in every frame, drifting
               slowly; "two red circles". Time should not matter.
    shift      dense clips whose (shape, colour) is drawn from HELD_OUT at eval / test and never
               at train: composing seen colours and shapes anew (vision capacity).
    retrieval  order clips (two events) in groups of `GROUP_SIZE` that share everything (shape,
               colour, background, event windows, positions) except the order of the two events
               ("order" negative) or the direction of one of them ("direction" negative).

Ground truth in each sample's json (every task): task, shape, color, count, direction(s), events
(start/end frame, inclusive, and direction, in time order; empty for dense / shift), visible (per
frame), motion (per-frame displacement (dx, dy) of the first shape's centre in pixels, 0 where it is
not visible in both frames), positions (float [count][T][2] (x, y) centres; null where the shape is
not visible), radius. Sparse adds distractor ({shape, color, position} or null); retrieval group,
variant and group_indices (the clip indices of the whole group, anchor first); shift split and
held_out (whether the clip's pair is in HELD_OUT).

CLI::

    python -m data.synthvid --task order --num 256 --seed 0 --out shards/synthvid_order
    python -m data.synthvid --task shift --split eval --num 64 --seed 1 --out shards/synthvid_shift_eval
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from typing import Any

import numpy as np

from data.shards import ShardSink
from data.synthvid_grammar import (
    COLOR_WORDS,
    COUNT_WORDS,
    DIRECTION_PHRASES,
    OPPOSITE,
    PLURALS,
    SHAPES,
    VOCABULARY,
    CaptionFacts,
    caption,
    caption_corpus,
    event_sequences,
)
from data.video_io import encode_mp4

# The grammar's words, importable from here as before.
__all__ = [
    "COLORS",
    "COLOR_WORDS",
    "COUNT_WORDS",
    "DIRECTIONS",
    "DIRECTION_PHRASES",
    "GROUP_SIZE",
    "HELD_OUT",
    "OPPOSITE",
    "PLURALS",
    "SHAPES",
    "SPLITS",
    "SYNTHVID_VERSION",
    "TASKS",
    "VOCABULARY",
    "caption_corpus",
    "generate_clip",
    "main",
    "order_sequences",
    "retrieval_sequences",
    "write_synthvid",
]

# Bumped whenever the same arguments would write other bytes, so that cached shards named after their
# settings (trainer/assets.py) are not reused across a change. 2: x264's C code and bit-exact colour
# conversion (data/video_io.encode_mp4), the same bytes on every machine. 3: SynthVid v2 (tasks
# sparse / order / dense / shift, events of 12.5-18.75% of the clip, retrieval's new stream).
SYNTHVID_VERSION = 3
# New tasks go at the end: a clip's generator is seeded by its task's index here.
TASKS = ("pretrain", "sparse", "order", "dense", "shift", "retrieval", "motion")
SPLITS = ("train", "eval", "test")
EVENT_TASKS = ("sparse", "order", "retrieval")
# One motion of 1-3 shapes, captioned with its direction: edge to edge over the whole clip, or not.
MOTION_TASKS = ("pretrain", "motion")
# Saturated, well separated hues: they survive yuv420p chroma subsampling at 64x64.
COLORS: dict[str, tuple[int, int, int]] = dict(
    zip(
        COLOR_WORDS,
        [(225, 40, 40), (40, 205, 60), (50, 90, 235), (235, 220, 40), (165, 60, 210), (235, 235, 235)],
        strict=True,
    )
)
# Unit motion vectors in image coordinates (x right, y down), in the grammar's direction order.
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
assert tuple(DIRECTIONS) == tuple(DIRECTION_PHRASES)
# Events: how many per clip (order), and how long each lasts as a share of the clip: 4-6 frames at
# 32, so that a selector keeping two frames of one event can see its direction while uniform K=4
# (a frame every 8) keeps at most one.
EVENT_COUNTS = (2, 3)
EVENT_LENGTH = (0.125, 0.1875)
MIN_EVENT_FRAMES = 2  # a direction needs two positions
GROUP_SIZE = 3
VARIANTS = ("anchor", "order", "direction")  # retrieval: the clip, then its two hard negatives
# shift: the (shape, colour) pairs only eval / test clips show; each shape twice, each colour once,
# so every word is seen at train, in other combinations.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("circle", "green"),
    ("circle", "purple"),
    ("square", "red"),
    ("square", "white"),
    ("triangle", "blue"),
    ("triangle", "yellow"),
)
TRAIN_PAIRS = tuple(p for p in itertools.product(SHAPES, COLOR_WORDS) if p not in HELD_OUT)
# motion: how long the motion lasts (a share of the clip), how far the shapes travel (a share of
# `reach`; the events' legs are 0.8-1.2) and how much of the motion is in view at least (and never
# under a quarter of the clip, so that uniform K = 8 keeps two of its frames). At 32 frames, 64 px:
# a median 14 frames in view and 26 px between the first and the last. Letting the motion run off
# the clip's ends keeps the frame index from telling the sense: a threshold on one frame's x
# separates "right" from "left" for 0.53-0.55 of clips in the middle frames and 0.79 at frame 0,
# against 1.00 in `pretrain` (2000 clips, ad hoc).
MOTION_WINDOW = (0.375, 0.75)
MOTION_LEG = (1.0, 1.6)
MOTION_IN_VIEW = 0.25
DISTRACTOR_SHARE = 0.5  # sparse: share of clips with a still distractor shape
# dense / shift: the farthest the shapes drift over the whole clip, as a share of `reach`.
MAX_DRIFT = 0.25


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


def _reach(size: int, radius: float) -> tuple[float, float]:
    """The frame's centre and the farthest a shape's centre may go from it without leaving it."""
    centre = (size - 1) / 2
    return centre, centre - radius - 1


def _lanes(
    rng: np.random.Generator, base: np.ndarray, v: np.ndarray, count: int, radius: float, reach: float
) -> np.ndarray:
    """`count` copies of one path float [T, 2] (moving along v) in parallel lanes across the motion
    axis, far enough apart that they never overlap, at a random place: float [count, T, 2]."""
    lane_axis = np.abs(v[::-1])
    spacing = min(2.4 * radius, 2 * reach / max(count - 1, 1))
    offsets = (np.arange(count) - (count - 1) / 2) * spacing
    jitter = rng.uniform(-1, 1) * max(reach - abs(offsets).max(), 0)
    return np.stack([base + (o + jitter) * lane_axis for o in offsets])


def _pretrain_paths(
    rng: np.random.Generator, count: int, direction: str, size: int, radius: float, t: int
) -> np.ndarray:
    """Per-object, per-frame centres float [count, T, 2] (x, y): edge to edge over the whole clip."""
    centre, reach = _reach(size, radius)
    progress = np.linspace(0.0, 1.0, t, dtype=np.float32)[:, None]  # [T, 1]
    v = np.array(DIRECTIONS[direction], dtype=np.float32)
    start, end = centre - v * reach, centre + v * reach
    base = start + progress * (end - start)  # [T, 2]
    return _lanes(rng, base, v, count, radius, reach)


def _motion_paths(
    rng: np.random.Generator, count: int, direction: str, size: int, radius: float, t: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Per-object, per-frame centres float [count, T, 2] (x, y), NaN outside the motion window, and
    that window (start, end), inclusive.

    The shapes appear, travel one leg of MOTION_LEG x `reach` in parallel lanes, and disappear; the
    motion lasts MOTION_WINDOW of the clip, starts at a random frame (possibly before the clip, or
    ends after it) and its leg's midpoint sits at a random place on the motion axis. Neither the
    frame index nor a shape's place in one frame therefore tells the motion's sense: only comparing
    where it is in two frames does, as in the event tasks. (pretrain's edge-to-edge paths over the
    whole clip let a model read the sense off frame k's position alone: learnability.md.)
    """
    centre, reach = _reach(size, radius)
    length = max(round(t * rng.uniform(*MOTION_WINDOW)), MIN_EVENT_FRAMES)
    # The motion may begin before the clip or end after it: at a frame in the middle of the clip,
    # where the shapes are along their leg is then uniform whatever the sense.
    in_view = min(max(math.ceil(MOTION_IN_VIEW * length), MIN_EVENT_FRAMES, t // 4), t)
    start = int(rng.integers(in_view - length, t - in_view + 1))
    leg = rng.uniform(*MOTION_LEG) * reach
    v = np.array(DIRECTIONS[direction], dtype=np.float32)
    midpoint = centre + v * rng.uniform(-1, 1) * max(reach - leg / 2, 0)  # [2], off centre on the motion axis
    progress = np.linspace(-0.5, 0.5, length, dtype=np.float32)[:, None]  # [length, 1]
    first, last = max(start, 0), min(start + length, t) - 1  # the frames in view
    base = np.full((t, 2), np.nan, dtype=np.float32)
    base[first : last + 1] = midpoint + progress[first - start : last - start + 1] * v * leg
    return _lanes(rng, base, v, count, radius, reach), (first, last)


def _appearance_paths(rng: np.random.Generator, count: int, size: int, radius: float, t: int) -> np.ndarray:
    """dense / shift centres float [count, T, 2] (x, y): a row or column of shapes, all in frame in
    every frame, drifting together in a random direction by at most MAX_DRIFT of `reach`."""
    centre, reach = _reach(size, radius)
    axis = int(rng.integers(2))  # 0: a row (side by side along x), 1: a column
    spacing = min(2.4 * radius, 2 * reach / max(count - 1, 1))
    offsets = (np.arange(count) - (count - 1) / 2) * spacing
    start = np.empty((count, 2), dtype=np.float64)
    start[:, axis] = centre + offsets + rng.uniform(-1, 1) * max(reach - abs(offsets).max(), 0)
    start[:, 1 - axis] = centre + rng.uniform(-0.5, 0.5) * reach
    angle = rng.uniform(0, 2 * math.pi)
    drift = rng.uniform(0, MAX_DRIFT) * reach * np.array([math.cos(angle), math.sin(angle)])
    # A common drift keeps the shapes apart; clipping it per axis keeps every one inside the frame.
    drift = np.clip(drift, centre - reach - start.min(0), centre + reach - start.max(0))
    progress = np.linspace(0.0, 1.0, t)[None, :, None]  # [1, T, 1]
    return (start[:, None, :] + progress * drift).astype(np.float32)


def _event_windows(rng: np.random.Generator, num_events: int, t: int) -> list[tuple[int, int]]:
    """(start, end) inclusive frame ranges of `num_events` events, one in each equal part of the clip.

    Each event lasts EVENT_LENGTH of the clip (at least MIN_EVENT_FRAMES) and, where its part has
    room, keeps an empty frame before and after it, so that events never touch and every event
    starts with the shape appearing.
    """
    bounds = np.linspace(0, t, num_events + 1).round().astype(int)
    windows = []
    for lo, hi in itertools.pairwise(bounds.tolist()):
        part = hi - lo
        length = int(np.clip(round(t * rng.uniform(*EVENT_LENGTH)), MIN_EVENT_FRAMES, part))
        margin = 1 if part >= length + 2 else 0
        start = int(rng.integers(lo + margin, hi - length - margin + 1))
        windows.append((start, start + length - 1))
    return windows


def _event_legs(rng: np.random.Generator, num_events: int, size: int, radius: float) -> np.ndarray:
    """Per event, the leg's midpoint float [E, 2] (x, y) and its length float [E] packed as [E, 3].

    A leg of length L centred on m runs from m - v L/2 to m + v L/2 whatever the direction v, so a
    leg and its reverse cover the same pixels: the "direction" negatives of retrieval rely on it.
    """
    centre, reach = _reach(size, radius)
    length = rng.uniform(0.8, 1.2, size=num_events) * reach
    # The midpoint may sit off centre by up to what keeps both ends inside the frame on any axis.
    room = np.maximum(reach - length / 2, 0)[:, None]
    midpoint = centre + rng.uniform(-1, 1, size=(num_events, 2)) * room
    return np.concatenate([midpoint, length[:, None]], axis=1)


def _event_paths(
    windows: list[tuple[int, int]], legs: np.ndarray, directions: list[str], t: int
) -> np.ndarray:
    """Centres float [T, 2] of the one shape of an event task, NaN where it is absent."""
    centres = np.full((t, 2), np.nan, dtype=np.float32)
    for (start, end), leg, direction in zip(windows, legs, directions, strict=True):
        v = np.array(DIRECTIONS[direction], dtype=np.float32)
        progress = np.linspace(-0.5, 0.5, end - start + 1, dtype=np.float32)[:, None]
        centres[start : end + 1] = leg[:2] + progress * v * leg[2]
    return centres


def order_sequences(num_events: int) -> list[tuple[str, ...]]:
    """Every direction sequence an order clip of `num_events` events can show, in a fixed order: no
    direction twice in a row, and first != last, so that the reversed order is another caption (a
    palindrome's order cannot be asked about). Order clips draw one uniformly."""
    return [seq for seq in event_sequences() if len(seq) == num_events and seq[0] != seq[-1]]


def retrieval_sequences(variant: str) -> list[tuple[str, ...]]:
    """Every direction pair a retrieval clip of `variant` can show; each is equally likely.

    An anchor is any two different directions, and so is its reversal ("order"). The "direction"
    negative always ends on two perpendicular directions: reversing one leg of a perpendicular pair
    keeps it perpendicular, and an opposite pair (up, down) is turned by 90 degrees instead.
    """
    pairs = order_sequences(2)
    if variant == "direction":
        return [(a, b) for a, b in pairs if b != OPPOSITE[a]]
    return pairs


def _order_directions(rng: np.random.Generator, num_events: int) -> list[str]:
    """Event directions of an order clip: one of order_sequences(num_events), uniformly."""
    sequences = order_sequences(num_events)
    return list(sequences[int(rng.integers(len(sequences)))])


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


def _distractor(
    rng: np.random.Generator,
    shape: str,
    color: str,
    leg: np.ndarray,
    direction: str,
    size: int,
    radius: float,
) -> dict[str, Any] | None:
    """sparse: a still shape of another kind and colour, placed off the event's path.

    The event moves along one axis at the leg's midpoint coordinate m on the other; keeping the
    distractor's centre at least 2 radius + 2 pixels from m on that axis keeps the two shapes
    apart in every frame, so each shape's pixels stay whole. None when the frame has no such room
    (tiny sizes).
    """
    centre, reach = _reach(size, radius)
    other_shape = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
    other_color = [c for c in COLOR_WORDS if c != color][int(rng.integers(len(COLOR_WORDS) - 1))]
    axis = 0 if DIRECTIONS[direction][0] else 1  # the motion axis
    m, gap = float(leg[1 - axis]), 2 * radius + 2
    sides = [(centre - reach, m - gap), (m + gap, centre + reach)]  # allowed ranges across the path
    lengths = np.array([max(hi - lo, 0.0) for lo, hi in sides])
    u = rng.uniform(0, 1, size=2)  # drawn even when unused: the stream does not depend on room
    if lengths.sum() <= 0:
        return None
    offset = u[0] * lengths.sum()
    lo = sides[0][0] + offset if offset < lengths[0] else sides[1][0] + offset - lengths[0]
    position = np.empty(2)
    position[1 - axis] = lo
    position[axis] = centre + (2 * u[1] - 1) * reach
    return {"shape": other_shape, "color": other_color, "position": [round(float(p), 2) for p in position]}


def _background(rng: np.random.Generator, size: int, graded: bool) -> np.ndarray:
    """uint8 [size, size, 3]: a dark tint, plus (every task but pretrain) a static vertical
    gradient so that an empty frame is not perfectly flat, as no real frame is."""
    tint = rng.integers(0, 30, size=3)
    background = np.empty((size, size, 3), dtype=np.int64)
    background[:] = tint
    if graded:
        background += np.linspace(0, 24, size).round().astype(np.int64)[:, None, None]
    return background.astype(np.uint8)


def _draw(frames: np.ndarray, shape: str, color: str, centres: np.ndarray, radius: float) -> None:
    """Paint one shape into frames uint8 [T, S, S, 3] in place at centres float [T, 2] (NaN: absent)."""
    visible = ~np.isnan(centres[:, 0])
    masks = _shape_masks(shape, centres[visible], radius, frames.shape[1])
    frames[visible] = np.where(masks[..., None], np.array(COLORS[color], dtype=np.uint8), frames[visible])


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


def _check_arguments(task: str, split: str, num_frames: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if task in EVENT_TASKS and num_frames < 2 * MIN_EVENT_FRAMES:
        what = (
            "an event of two frames and a frame either side"
            if task == "sparse"
            else "two events of two frames"
        )
        raise ValueError(f"SynthVid {task!r} needs num_frames >= 4 ({what}), got {num_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def generate_clip(
    index: int,
    *,
    seed: int,
    task: str = "pretrain",
    size: int = 64,
    num_frames: int = 32,
    split: str = "train",
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Draw clip number `index` of the SynthVid stream `seed`.

    Each clip has its own generator seeded by (seed, index, task) - for retrieval by (seed, group,
    task), shared by the whole group; for shift by (seed, index, task, split): a clip does not
    depend on how many clips are generated or in which order. `split` (train | eval | test) only
    changes shift: train never draws a HELD_OUT pair, eval and test draw only those.

    Returns:
        frames uint8 [T, size, size, 3], caption, ground truth dict (see the module docstring).

    Raises:
        ValueError: an unknown task or split, or too few frames for the task's events.
    """
    _check_arguments(task, split, num_frames)
    t = num_frames
    group, variant = divmod(index, GROUP_SIZE) if task == "retrieval" else (index, 0)
    key = [seed, group, TASKS.index(task)] + ([SPLITS.index(split)] if task == "shift" else [])
    rng = np.random.default_rng(key)
    if task == "shift":
        pairs = TRAIN_PAIRS if split == "train" else HELD_OUT
        shape, color = pairs[int(rng.integers(len(pairs)))]
    else:
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = COLOR_WORDS[rng.integers(len(COLOR_WORDS))]
    names = list(DIRECTIONS)
    truth: dict[str, Any] = {"task": task, "shape": shape, "color": color}
    windows: list[tuple[int, int]] = []
    distractor: dict[str, Any] | None = None
    if task in MOTION_TASKS:
        count = int(rng.integers(1, 4))
        directions = [names[rng.integers(len(names))]]
        radius = size * rng.uniform(0.09, 0.12)
        if task == "pretrain":
            paths, windows = _pretrain_paths(rng, count, directions[0], size, radius, t), [(0, t - 1)]
        else:
            paths, window = _motion_paths(rng, count, directions[0], size, radius, t)
            windows = [window]
        background = _background(rng, size, graded=False)
    elif task in ("dense", "shift"):
        count = int(rng.integers(1, 4))
        directions = []
        radius = size * rng.uniform(0.09, 0.12)
        paths = _appearance_paths(rng, count, size, radius, t)
        background = _background(rng, size, graded=True)
        if task == "shift":
            truth.update(split=split, held_out=(shape, color) in HELD_OUT)
    else:
        count = 1
        if task == "sparse":
            directions = [names[rng.integers(len(names))]]
        elif task == "order":
            directions = _order_directions(rng, min(int(rng.choice(EVENT_COUNTS)), t // MIN_EVENT_FRAMES))
        else:
            directions = _retrieval_directions(rng, VARIANTS[variant])
            members = range(group * GROUP_SIZE, (group + 1) * GROUP_SIZE)
            truth.update(group=group, variant=VARIANTS[variant], group_indices=list(members))
        radius = size * rng.uniform(0.09, 0.12)
        windows = _event_windows(rng, len(directions), t)
        legs = _event_legs(rng, len(directions), size, radius)
        paths = _event_paths(windows, legs, directions, t)[None]
        background = _background(rng, size, graded=True)
        if task == "sparse":
            if rng.uniform() < DISTRACTOR_SHARE:
                distractor = _distractor(rng, shape, color, legs[0], directions[0], size, radius)
            truth["distractor"] = distractor

    frames = np.empty((t, size, size, 3), dtype=np.uint8)
    frames[:] = background
    if distractor is not None:
        still = np.tile(np.array(distractor["position"], dtype=np.float32), (t, 1))
        _draw(frames, distractor["shape"], distractor["color"], still, radius)
    for centres in paths:
        _draw(frames, shape, color, centres, radius)

    truth.update(
        count=count,
        direction=(directions[0] if task in MOTION_TASKS else " then ".join(directions)) or None,
        directions=directions,
        events=[
            {"start": s, "end": e, "direction": d} for (s, e), d in zip(windows, directions, strict=True)
        ],
        visible=(~np.isnan(paths[0, :, 0])).tolist(),
        motion=np.round(_motion(paths[0].astype(np.float64)), 2).tolist(),
        radius=round(float(radius), 3),
        positions=_rounded(paths.astype(np.float64)),
    )
    return frames, caption(CaptionFacts(count, color, shape, tuple(directions))), truth


def write_synthvid(
    out_dir: str,
    task: str = "pretrain",
    num: int = 256,
    seed: int = 0,
    samples_per_shard: int = 64,
    size: int = 64,
    num_frames: int = 32,
    fps: float = 8.0,
    split: str = "train",
) -> list[str]:
    """Generate `num` clips and write them as shards `out_dir/{00000..}.tar`; returns the shard paths.

    Deterministic given the arguments (fixed tar mtimes, single-threaded x264): the same call
    writes byte-identical shards. For retrieval, `num` not a multiple of GROUP_SIZE leaves the last
    group incomplete (its json still lists the whole group's indices). `split` picks shift's
    colour/shape pairs (generate_clip); the other tasks ignore it.
    """
    _check_arguments(task, split, num_frames)  # before the output folder is created
    with ShardSink(out_dir, samples_per_shard) as sink:
        for index in range(num):
            frames, text, truth = generate_clip(
                index, seed=seed, task=task, size=size, num_frames=num_frames, split=split
            )
            meta = {**truth, "fps": fps, "num_frames": num_frames, "size": [size, size], "seed": seed}
            sink.write(f"{index:09d}", encode_mp4(frames, fps=fps), text, meta)
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
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="train",
        help="shift: train avoids HELD_OUT pairs, eval/test draw only them",
    )
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
        split=args.split,
    )
    print("\n".join(paths))


if __name__ == "__main__":
    main()
