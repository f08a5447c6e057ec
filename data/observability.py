"""Observability of SynthVid events through the frame selector: no model, no training.

A caption such as "a blue square moves up and then from right to left" can only be right if the
frames the model sees show every event moving. This report measures, for every frame-selection
policy, K frames kept and N candidate frames, how often that is possible at all: the selector's
contribution, separated from what a model does with its frames.

Definition. For one clip of T source frames (the SynthVid generator's default clip length):

1. The clip is rendered at the SynthVid configs' frame size (`FRAME_SIZE`, 64 as in
   configs/synthvid/finetune.yaml), encoded with `data.video_io.encode_mp4` (as the shards are) and
   decoded at N candidates with `data.video_io.decode_frames`, the training pipeline's decoder, so
   compression artefacts reach the scores as they do in training. Candidate j shows source frame
   `uniform_indices(T', N)[j]`, the same call `decode_frames` makes (T' = decord's frame count of
   the mp4, `probe_video`); for N > T several candidates show the same source frame.
2. `data.frame_selector.FrameSelector(K, policy)` in eval mode (random policies are then
   deterministic) keeps K of the N candidates, batched over all clips of a (task, N).
3. An event (truth["events"]: inclusive start/end source frames) is *recoverable* when at least two
   kept candidates show distinct source frames inside its window in which the shape is visible
   (truth["visible"]): its centre moved between them, so the direction can be read off. One kept
   frame, or two that show the same source frame, cannot tell a direction from its opposite.

Per (task, N, policy, K), K <= N (larger K are skipped), a row holds: `events_recoverable`, the
fraction of all events that are recoverable; `clips_all_recoverable`, the fraction of clips whose
every event is (what a multi-event caption needs); `mean_kept_in_event`, the mean number of kept
candidates per event that show a visible frame of its window (duplicates counted);
`median_displacement_px`, the median over events of how far the shape's centre moves between the
earliest and the latest kept frame of its window that show it (`kept_displacement`; 0 for an
event not recoverable), and `events_displaced_a_patch`, the fraction of events where that is at
least `PATCH_PX` (the tiny preset's ViT patch): "recoverable" only asks for two distinct frames,
which may be a few pixels apart, and a displacement under one patch is a weak signal for a ViT.
Each (task, N) also has a `ceiling`: the fraction of events whose window holds two distinct visible
source frames among the N candidates at all, what keeping every candidate would reach.

Tasks. By default every task in `data.synthvid.TASKS` whose events are shorter than the clip
(`default_tasks`, read off the generator, not a list kept here): those are the ones where the
selector decides what is seen. A task whose one event spans the whole clip (`pretrain`) is left
out: any two kept candidates that show distinct source frames recover it, so its answer is 1.0 for
every policy with K >= 2 up to duplicate candidates; `--tasks pretrain` measures it anyway. Tasks
without events (SynthVid v2's appearance-only `dense` and `shift`) have nothing to recover and are
refused. Clips are the generator's defaults (clip length, split) at stream `--seed`.

CLI (writes `<out>.json`, the settings and rows, and `<out>.png`, one column of panels per task,
one row per N, fraction of events recoverable against K with one line per policy)::

    python -m data.observability --out docs/results/synthvid/observability \
        [--num 128] [--device cpu] [--tasks ...] [--n 16 32 64] [--k 2 4 8 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.frame_scores import frame_scores
from data.frame_selector import POLICIES, FrameSelector
from data.synthvid import SYNTHVID_VERSION, TASKS, generate_clip
from data.video_io import decode_frames, encode_mp4, probe_video, uniform_indices

# The frame size the SynthVid configs train at (configs/synthvid/*.yaml: data.frame_size and the
# generator's size); tests/data/test_observability.py checks that they still agree.
FRAME_SIZE = 64
DEFAULT_CANDIDATES = (16, 32, 64)
DEFAULT_KS = (2, 4, 8, 16)
DEFAULT_NUM_CLIPS = 128
# Luma bits of the histogram scores: FrameSelector's default, what training runs use.
SCORE_BITS = 4
# The ViT patch of the tiny preset the SynthVid experiments train (models/presets.py; the test checks
# that they agree): a kept displacement under it moves the shape within about one patch token.
PATCH_PX = 16
# Clips scored at once: [chunk, N, 3, 64, 64] uint8 is 50 MiB at N = 64, whatever --num is.
_SCORE_CHUNK = 64


def _event_lengths(task: str, seed: int) -> tuple[int, list[int]]:
    """(clip length T, event lengths in frames) of the task's first clip: the event layout is a
    property of the task (how many, how long), not of the clip."""
    _, _, truth = generate_clip(0, seed=seed, task=task, size=FRAME_SIZE)
    return len(truth["visible"]), [e["end"] - e["start"] + 1 for e in truth["events"]]


def default_tasks(seed: int = 0) -> tuple[str, ...]:
    """The tasks of `TASKS` whose events are shorter than the clip, in `TASKS` order.

    Read off one generated clip per task, so the list follows the generator when its tasks change.
    """
    tasks = []
    for task in TASKS:
        clip, lengths = _event_lengths(task, seed)
        if any(length < clip for length in lengths):
            tasks.append(task)
    return tuple(tasks)


def event_counts(
    kept_sources: Sequence[int], events: Sequence[dict], visible: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """How many kept frames fall into each event, and how many distinct source frames they show.

    Args:
        kept_sources: int [K] source frame shown by each kept candidate (any order, repeats allowed).
        events: E dicts with inclusive "start" and "end" source frames.
        visible: bool [T] whether the shape is visible in each source frame.

    Returns:
        (kept int64 [E], distinct int64 [E]): kept candidates whose source frame lies in the event's
        window and shows the shape, and the number of distinct such source frames.
    """
    sources = np.asarray(kept_sources, dtype=np.int64).reshape(-1)  # [K]
    seen = np.asarray(visible, dtype=bool)[sources]  # [K]
    starts = np.array([e["start"] for e in events], dtype=np.int64)[:, None]  # [E, 1]
    ends = np.array([e["end"] for e in events], dtype=np.int64)[:, None]
    inside = (sources[None] >= starts) & (sources[None] <= ends) & seen[None]  # [E, K]
    distinct = np.array([np.unique(sources[row]).size for row in inside], dtype=np.int64)
    return inside.sum(1), distinct


def kept_displacement(
    kept_sources: Sequence[int], events: Sequence[dict], visible: Sequence[bool], positions: Sequence
) -> np.ndarray:
    """float [E]: per event, the distance in pixels between the shape's centres in the earliest and
    the latest kept source frame of its window that show it; 0 with fewer than two such frames.

    Args:
        kept_sources, events, visible: as `event_counts` takes them.
        positions: the moving shape's centres [T] of (x, y) or None (truth["positions"][0]).
    """
    sources = np.unique(np.asarray(kept_sources, dtype=np.int64).reshape(-1))  # sorted
    moved = np.zeros(len(events), dtype=np.float64)
    for i, event in enumerate(events):
        shown = [s for s in sources if event["start"] <= s <= event["end"] and visible[s]]
        if len(shown) >= 2:
            first, last = np.asarray(positions[shown[0]]), np.asarray(positions[shown[-1]])
            moved[i] = float(np.linalg.norm(last - first))
    return moved


def recoverable(kept_sources: Sequence[int], events: Sequence[dict], visible: Sequence[bool]) -> np.ndarray:
    """bool [E]: whether each event's direction is recoverable from the kept frames (two distinct
    visible source frames inside its window; see the module docstring)."""
    return event_counts(kept_sources, events, visible)[1] >= 2


@dataclass
class _Candidates:
    """One task's clips decoded at one candidate count N.

    Attributes:
        scores: float32 [C, N, 3] per-candidate (entropy, scene_change, motion), on the device.
        sources: int64 [C, N] source frame shown by each candidate.
    """

    scores: torch.Tensor
    sources: np.ndarray


def _encode_decode(
    task: str, num_clips: int, seed: int, candidate_counts: Sequence[int], device: torch.device, bar: tqdm
) -> tuple[dict[int, _Candidates], list[dict]]:
    """Generate, encode and decode one task's clips at every N; score the candidates on `device`.

    Returns ({N: candidates}, truths): the clips' ground truth dicts, in clip order.
    """
    truths: list[dict] = []
    frames: dict[int, list[torch.Tensor]] = {n: [] for n in candidate_counts}  # per N: [N, 3, S, S]
    sources: dict[int, list[np.ndarray]] = {n: [] for n in candidate_counts}
    for index in range(num_clips):
        clip, _, truth = generate_clip(index, seed=seed, task=task, size=FRAME_SIZE)
        mp4 = encode_mp4(clip)
        num_source = probe_video(mp4)  # decord's frame count: what decode_frames spreads N over
        for n in candidate_counts:
            frames[n].append(decode_frames(mp4, n, (FRAME_SIZE, FRAME_SIZE)))
            sources[n].append(uniform_indices(num_source, n))
        truths.append(truth)
        bar.update(1)
    decoded = {}
    for n in candidate_counts:
        stack = torch.stack(frames[n])  # [C, N, 3, S, S] uint8, on the CPU
        scores = [
            frame_scores(stack[i : i + _SCORE_CHUNK].to(device), SCORE_BITS)
            for i in range(0, num_clips, _SCORE_CHUNK)
        ]
        decoded[n] = _Candidates(torch.cat(scores), np.stack(sources[n]))
    return decoded, truths


def _row(task: str, n: int, policy: str, k: int, kept_sources: np.ndarray, truths: list[dict]) -> dict:
    """One report row from kept source frames int64 [C, K] and the clips' truths."""
    kept, hits, all_hit, moved = [], [], [], []
    for row, truth in zip(kept_sources, truths, strict=True):
        in_event, distinct = event_counts(row, truth["events"], truth["visible"])
        kept.extend(in_event.tolist())
        hits.extend((distinct >= 2).tolist())
        all_hit.append(bool((distinct >= 2).all()))
        moved.extend(kept_displacement(row, truth["events"], truth["visible"], truth["positions"][0]).tolist())
    return {
        "task": task,
        "n": n,
        "policy": policy,
        "k": k,
        "clips": len(truths),
        "events": len(hits),
        "events_recoverable": float(np.mean(hits)),
        "clips_all_recoverable": float(np.mean(all_hit)),
        "mean_kept_in_event": float(np.mean(kept)),
        "median_displacement_px": float(np.median(moved)),
        "events_displaced_a_patch": float(np.mean(np.asarray(moved) >= PATCH_PX)),
    }


def observability(
    tasks: Sequence[str] | None = None,
    candidate_counts: Sequence[int] = DEFAULT_CANDIDATES,
    ks: Sequence[int] = DEFAULT_KS,
    policies: Sequence[str] | None = None,
    num_clips: int = DEFAULT_NUM_CLIPS,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Fraction of SynthVid events whose direction is recoverable from the kept frames.

    Args:
        tasks: SynthVid tasks (None: `default_tasks(seed)`).
        candidate_counts: N values, candidates decoded per clip.
        ks: K values, frames kept; (N, K) pairs with K > N are skipped.
        policies: `POLICIES` names (None: all, in registry order).
        num_clips: clips per task (indices 0 .. num_clips - 1 of stream `seed`).
        seed: SynthVid stream seed.
        device: where the scores and the selector run.
        progress: show a tqdm bar over the clips.

    Returns:
        A JSON-able dict: "settings", "rows" (one per task, N, policy, K <= N; see the module
        docstring), "ceilings" (one per task, N) and "seconds" (wall time).
    """
    started = time.perf_counter()
    tasks = tuple(tasks) if tasks is not None else default_tasks(seed)
    policies = tuple(policies) if policies is not None else tuple(POLICIES)
    candidate_counts, ks = tuple(sorted(set(candidate_counts))), tuple(sorted(set(ks)))
    unknown = [t for t in tasks if t not in TASKS] + [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown tasks or policies {unknown}; tasks: {TASKS}, policies: {sorted(POLICIES)}")
    if num_clips < 1 or min(candidate_counts) < 1 or min(ks) < 1:
        raise ValueError(f"need num_clips, N and K >= 1, got {num_clips}, {candidate_counts}, {ks}")
    eventless = [task for task in tasks if not _event_lengths(task, seed)[1]]
    if eventless:
        raise ValueError(f"tasks {eventless} have no events: there is no direction to recover")
    device = torch.device(device)
    rows, ceilings, clip_frames = [], [], {}
    with tqdm(total=len(tasks) * num_clips, desc="encode/decode", unit="clip", disable=not progress) as bar:
        for task in tasks:
            bar.set_postfix(task=task)
            decoded, truths = _encode_decode(task, num_clips, seed, candidate_counts, device, bar)
            clip_frames[task] = len(truths[0]["visible"])
            for n, candidates in decoded.items():
                ceiling = _row(task, n, "all candidates", n, candidates.sources, truths)
                ceilings.append({"task": task, "n": n, "events_recoverable": ceiling["events_recoverable"]})
                for policy in policies:
                    for k in (k for k in ks if k <= n):
                        picked = FrameSelector(k, policy, bits=SCORE_BITS).eval().select(candidates.scores)
                        kept = np.take_along_axis(candidates.sources, picked.cpu().numpy(), axis=1)  # [C, K]
                        rows.append(_row(task, n, policy, k, kept, truths))
    return {
        "settings": {
            "tasks": list(tasks),
            "candidate_counts": list(candidate_counts),
            "ks": list(ks),
            "policies": list(policies),
            "num_clips": num_clips,
            "seed": seed,
            "device": str(device),
            "frame_size": FRAME_SIZE,
            "clip_frames": clip_frames,
            "score_bits": SCORE_BITS,
            "synthvid_version": SYNTHVID_VERSION,
            "rule": "an event is recoverable when >= 2 kept candidates show distinct source frames "
            "inside its window in which the shape is visible",
        },
        "rows": rows,
        "ceilings": ceilings,
        "seconds": round(time.perf_counter() - started, 2),
    }


def plot_observability(report: dict[str, Any], path: str) -> None:
    """Write a PNG: a column of panels per task, a row per N; fraction of events recoverable
    against K (log2 axis), one line per policy, the all-candidates ceiling dashed in grey."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    settings = report["settings"]
    tasks, counts, policies = settings["tasks"], settings["candidate_counts"], settings["policies"]
    colours = dict(zip(policies, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(
        len(counts),
        len(tasks),
        figsize=(3.6 * len(tasks) + 1.8, 2.6 * len(counts) + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for col, task in enumerate(tasks):
        for row, n in enumerate(counts):
            ax = axes[row, col]
            for policy in policies:
                points = sorted(
                    (r["k"], r["events_recoverable"])
                    for r in report["rows"]
                    if (r["task"], r["n"], r["policy"]) == (task, n, policy)
                )
                if points:
                    ax.plot(
                        *zip(*points, strict=True),
                        marker="o",
                        ms=3.5,
                        lw=1.4,
                        color=colours[policy],
                        label=policy,
                    )
            for ceiling in report["ceilings"]:
                if (ceiling["task"], ceiling["n"]) == (task, n):
                    ax.axhline(
                        ceiling["events_recoverable"], color="grey", ls="--", lw=1, label="all N candidates"
                    )
            ax.set_xscale("log", base=2)
            ax.set_xticks(settings["ks"], [str(k) for k in settings["ks"]])
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{task}, T = {settings['clip_frames'][task]} frames, N = {n}", fontsize=10)
            if row == len(counts) - 1:
                ax.set_xlabel("frames kept K (of N candidates)")
            if col == 0:
                ax.set_ylabel("events recoverable (fraction)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=9, title="policy")
    fig.suptitle(
        f"SynthVid events whose direction the kept frames show ({settings['num_clips']} clips per task, "
        f"{settings['frame_size']}x{settings['frame_size']} H.264)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(report: dict[str, Any]) -> str:
    """A text table: per task and N, each policy's events_recoverable at every K."""
    ks = report["settings"]["ks"]
    lines = [f"{'task':<10} {'N':>3} {'policy':<9} " + " ".join(f"K={k:<4}" for k in ks)]
    for task in report["settings"]["tasks"]:
        for n in report["settings"]["candidate_counts"]:
            for policy in report["settings"]["policies"]:
                by_k = {
                    r["k"]: r["events_recoverable"]
                    for r in report["rows"]
                    if (r["task"], r["n"], r["policy"]) == (task, n, policy)
                }
                cells = " ".join(f"{by_k[k]:<6.3f}" if k in by_k else f"{'-':<6}" for k in ks)
                lines.append(f"{task:<10} {n:>3} {policy:<9} {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Fraction of SynthVid events whose direction the frame selector's kept frames show.",
    )
    parser.add_argument("--out", required=True, help="output prefix: writes <out>.json and <out>.png")
    parser.add_argument("--num", type=int, default=DEFAULT_NUM_CLIPS, help="clips per task")
    parser.add_argument("--device", default="cpu", help="where the scores and the selector run")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS,
        default=None,
        help="default: the tasks whose events are shorter than the clip",
    )
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=None, help="default: all")
    parser.add_argument(
        "--n", type=int, nargs="+", default=list(DEFAULT_CANDIDATES), help="candidate counts N"
    )
    parser.add_argument(
        "--k", type=int, nargs="+", default=list(DEFAULT_KS), help="frames kept K (K > N skipped)"
    )
    parser.add_argument("--seed", type=int, default=0, help="SynthVid stream seed")
    args = parser.parse_args(argv)

    report = observability(args.tasks, args.n, args.k, args.policies, args.num, args.seed, args.device)
    out = os.path.expanduser(args.out)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(f"{out}.json", "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    plot_observability(report, f"{out}.png")
    print(_summary(report))
    print(f"{len(report['rows'])} rows in {report['seconds']} s → {out}.json, {out}.png")


if __name__ == "__main__":
    main()
