"""Encode numpy clips to H.264 mp4 bytes (PyAV) and decode mp4 bytes to frame tensors (`data.decoders`).

Both directions work in memory: shards store mp4 bytes, and the pipeline decodes them straight
from those bytes without touching the file system. `transcode` (PyAV) cuts, scales and resamples a
source video once, when shards are made, so training-time decoding stays cheap; `probe_video`
(decord, the decoder training uses) is the gate that keeps unreadable videos out of the shards.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import decord
import numpy as np
import torch
from av.video.reformatter import Interpolation

from data.decoders import get_decoder

# decord lets ffmpeg print every "moov atom not found" to stderr; the pipeline already counts and
# logs bad samples once, so the library's own log lines are noise.
decord.logging.set_level(decord.logging.QUIET)


# swscale's SIMD RGB → YUV conversion rounds differently from its C code; these flags make every CPU
# compute the C code's result.
_BITEXACT_SCALING = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT


class VideoDecodeError(ValueError):
    """The bytes are not a decodable video (empty, corrupt, truncated or without frames)."""


def encode_mp4(frames: np.ndarray, fps: float = 8.0, crf: int = 18) -> bytes:
    """Encode RGB frames as an H.264 (libx264, yuv420p) mp4 held in memory.

    Args:
        frames: uint8 [T, H, W, 3] RGB, T >= 1; H and W must be even (yuv420p halves chroma).
        fps: frame rate written into the container.
        crf: x264 quality (lower = closer to the input); 18 keeps the colours of small clips.

    Returns:
        The mp4 file as bytes.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames [T,H,W,3] with T >= 1, got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {height}x{width}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # The same frames must give the same bytes on every machine (SynthVid is regenerated, not
        # shipped). x264's output depends on its thread count, and its SIMD code is not bit-exact
        # across instruction sets: on one AVX-512 CPU the same clip came out in 4 byte versions
        # over 30 encodes in one process, and AVX2 gave other bytes than SSE2. Its C code ("asm=0",
        # the same bytes as SSE2) on one thread costs 4.5 instead of 2.8 ms per 64x64x16 clip.
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
            container.mux(stream.encode(rgb.reformat(format="yuv420p", interpolation=_BITEXACT_SCALING)))
        container.mux(stream.encode())  # flush the frames x264 still holds (lookahead, B-frames)
    return buffer.getvalue()


def uniform_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Centres of `num_frames` equal segments of [0, num_available): int64 [num_frames].

    When the clip is shorter than `num_frames`, indices repeat (each frame is picked about
    num_frames / num_available times), so every clip yields the same number of frames.
    """
    centres = (np.arange(num_frames) + 0.5) * num_available / num_frames
    return np.minimum(centres.astype(np.int64), num_available - 1)


def fps_indices(num_available: int, source_fps: float, num_frames: int, target_fps: float) -> np.ndarray:
    """`num_frames` frames `1 / target_fps` seconds apart, centred in the clip: int64 [num_frames].

    A clip shorter than num_frames / target_fps seconds starts at frame 0 and repeats its last
    frame, so every clip still yields the same number of frames.
    """
    if source_fps <= 0 or target_fps <= 0:
        raise ValueError(f"frame rates must be > 0, got source {source_fps}, target {target_fps}")
    step = source_fps / target_fps  # source frames per sampled frame
    start = max(0.0, (num_available - step * num_frames) / 2)
    centres = start + (np.arange(num_frames) + 0.5) * step
    return np.minimum(centres.astype(np.int64), num_available - 1)


def frame_indices(
    num_available: int, source_fps: float, num_frames: int, sample_fps: float | None
) -> list[int]:
    """The frames `decode_frames` returns: `uniform_indices` (sample_fps None) or `fps_indices`."""
    if sample_fps is None:
        return uniform_indices(num_available, num_frames).tolist()
    return fps_indices(num_available, source_fps, num_frames, sample_fps).tolist()


def decode_frames(
    mp4: bytes,
    num_frames: int,
    size: tuple[int, int],
    num_threads: int = 1,
    sample_fps: float | None = None,
    decoder: str = "decord",
) -> torch.Tensor:
    """Decode `num_frames` frames spread uniformly over the clip (or `sample_fps` apart), resized.

    Args:
        mp4: the video file's bytes.
        num_frames: N, how many frames to return.
        size: (H, W) of the returned frames; the decoder resizes while decoding (much cheaper than after).
        num_threads: decoder threads; 1 by default because DataLoader workers already decode in
            parallel and more threads per worker would oversubscribe the cores.
        sample_fps: None: uniform over the whole clip; else frames at this rate centred in the clip
            (see `fps_indices`).
        decoder: the backend (`data.decoders`: decord, pyav).

    Returns:
        uint8 [N, 3, H, W] RGB.

    Raises:
        VideoDecodeError: empty, corrupt or frameless input (the library's own errors are wrapped).
        ValueError: num_frames < 1, or an unknown or uninstalled decoder.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return get_decoder(decoder)(mp4, num_frames, tuple(size), num_threads=num_threads, sample_fps=sample_fps)


def probe_video(data: bytes) -> int:
    """Number of frames of a video that decord (the training-time decoder) can read end to end.

    Opens the bytes and decodes the first and the last frame at a small size: a file without an
    index (moov) fails to open, and one cut short fails on its last frame.

    Raises:
        VideoDecodeError: empty, corrupt, truncated or frameless input.
    """
    if not data:
        raise VideoDecodeError("empty video bytes")
    try:
        # 64x64: a width decord 0.6.0 always decodes correctly (see decode_frames).
        reader = decord.VideoReader(io.BytesIO(data), width=64, height=64, num_threads=1)
        num_frames = len(reader)
        if num_frames == 0:
            raise VideoDecodeError(f"video has zero frames ({len(data)} bytes)")
        reader.get_batch([0, num_frames - 1]).asnumpy()
    except VideoDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"cannot decode video ({len(data)} bytes): {exc}") from exc
    return num_frames


def _scaled_size(width: int, height: int, target_height: int | None) -> tuple[int, int]:
    """(W, H) scaled to `target_height` with the aspect ratio kept, both even (yuv420p)."""
    if target_height is None:
        return width - width % 2, height - height % 2
    new_width = max(2, round(width * target_height / height))
    return new_width - new_width % 2, target_height - target_height % 2


def transcode(
    source: str | bytes,
    *,
    start: float | None = None,
    end: float | None = None,
    height: int | None = None,
    fps: float | None = None,
    crf: int = 23,
) -> bytes:
    """Re-encode (a time window of) a video as H.264 mp4 in memory with PyAV; audio is dropped.

    Args:
        source: a path or the file's bytes (any container/codec ffmpeg reads: mp4, avi, webm, mkv).
        start, end: the window in seconds (None: from the beginning / to the end).
        height: output height in pixels, width scaled to keep the aspect ratio (None: as is).
        fps: output frame rate; frames are dropped or repeated to hit it (None: the source's).
        crf: x264 quality.

    Returns:
        The mp4 bytes.

    Raises:
        VideoDecodeError: the source cannot be read or the window holds no frame.
    """
    try:
        return _transcode(source, start, end, height, fps, crf)
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        name = source if isinstance(source, str) else f"{len(source)} bytes"
        raise VideoDecodeError(f"cannot transcode {name}: {exc}") from exc


def _transcode(
    source: str | bytes,
    start: float | None,
    end: float | None,
    height: int | None,
    fps: float | None,
    crf: int,
) -> bytes:
    begin = start or 0.0
    stop = float("inf") if end is None else end
    buffer = io.BytesIO()
    with av.open(source if isinstance(source, str) else io.BytesIO(source)) as src:
        if not src.streams.video:
            raise VideoDecodeError("no video stream")
        stream_in = src.streams.video[0]
        stream_in.thread_type = "AUTO"
        rate = Fraction(fps).limit_denominator(1001) if fps else stream_in.average_rate or Fraction(25)
        if begin > 0:
            # Lands on the keyframe before `begin`; the frames up to `begin` are decoded and dropped.
            src.seek(int(begin / stream_in.time_base), stream=stream_in, backward=True)
        written = 0
        with av.open(buffer, mode="w", format="mp4") as out:
            stream_out = None
            next_time = begin  # time of the next output frame, 1/rate apart
            for frame in src.decode(stream_in):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if t < begin - 1e-6:
                    continue
                if t >= stop:
                    break
                if stream_out is None:
                    width, new_height = _scaled_size(frame.width, frame.height, height)
                    stream_out = out.add_stream("libx264", rate=rate)
                    stream_out.width, stream_out.height, stream_out.pix_fmt = width, new_height, "yuv420p"
                    stream_out.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
                # Keep this frame for every output tick it covers: drops frames when the output rate
                # is lower, repeats them when it is higher.
                repeats = 1
                if fps:
                    repeats = 0
                    while next_time <= t + 1e-6:
                        repeats += 1
                        next_time += 1 / float(rate)
                    if repeats == 0:
                        continue
                image = frame.reformat(width=stream_out.width, height=stream_out.height, format="yuv420p")
                for _ in range(repeats):
                    image.pts, image.time_base = written, 1 / rate
                    out.mux(stream_out.encode(image))
                    written += 1
            if stream_out is None:
                raise VideoDecodeError(f"no frame in the window [{begin}, {stop}) s")
            # The last frame lasts one source frame period: fill the output ticks it still covers.
            clip_end = min(stop, t + 1 / float(stream_in.average_rate or rate))
            while fps and next_time < clip_end - 1e-6:
                image.pts, image.time_base = written, 1 / rate
                out.mux(stream_out.encode(image))
                written += 1
                next_time += 1 / float(rate)
            out.mux(stream_out.encode())
    return buffer.getvalue()
