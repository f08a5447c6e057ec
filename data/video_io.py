"""Encode numpy clips to H.264 mp4 bytes (PyAV) and decode mp4 bytes to frame tensors (decord).

Both directions work in memory: shards store mp4 bytes, and the pipeline decodes them straight
from those bytes without touching the file system.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import decord
import numpy as np
import torch
import torch.nn.functional as F

# decord lets ffmpeg print every "moov atom not found" to stderr; the pipeline already counts and
# logs bad samples once, so the library's own log lines are noise.
decord.logging.set_level(decord.logging.QUIET)


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
        # One x264 thread: clips are tiny, and a fixed thread count keeps the bytes identical from
        # machine to machine (x264's output depends on how many threads it uses).
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the frames x264 still holds (lookahead, B-frames)
    return buffer.getvalue()


def uniform_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Centres of `num_frames` equal segments of [0, num_available): int64 [num_frames].

    When the clip is shorter than `num_frames`, indices repeat (each frame is picked about
    num_frames / num_available times), so every clip yields the same number of frames.
    """
    centres = (np.arange(num_frames) + 0.5) * num_available / num_frames
    return np.minimum(centres.astype(np.int64), num_available - 1)


def decode_frames(mp4: bytes, num_frames: int, size: tuple[int, int], num_threads: int = 1) -> torch.Tensor:
    """Decode `num_frames` frames spread uniformly over the clip, resized by decord.

    Args:
        mp4: the video file's bytes.
        num_frames: N, how many frames to return.
        size: (H, W) of the returned frames; decord resizes while decoding (much cheaper than after).
        num_threads: decoder threads; 1 by default because DataLoader workers already decode in
            parallel and more threads per worker would oversubscribe the cores.

    Returns:
        uint8 [N, 3, H, W] RGB.

    Raises:
        VideoDecodeError: empty, corrupt or frameless input (decord's own errors are wrapped).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not mp4:
        raise VideoDecodeError("empty video bytes")
    height, width = size
    try:
        # decord copies the bytes out of the file object, so the BytesIO can be dropped afterwards.
        reader = decord.VideoReader(io.BytesIO(mp4), width=width, height=height, num_threads=num_threads)
        num_available = len(reader)
    except Exception as exc:  # decord raises RuntimeError/DECORDError depending on the fault
        raise VideoDecodeError(f"cannot open video ({len(mp4)} bytes): {exc}") from exc
    if num_available == 0:
        raise VideoDecodeError(f"video has zero frames ({len(mp4)} bytes)")
    indices = uniform_indices(num_available, num_frames).tolist()
    try:
        array = reader.get_batch(indices).asnumpy()
        if array.shape != (num_frames, height, width, 3):
            raise RuntimeError(f"decord returned {array.shape}")
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    except Exception:
        pass
    # decord 0.6.0 mis-strides a few output widths (of 4..400 px, measured: 4, 8, 12, 16, 24, 48, 72,
    # every time, whatever the source): frames come back 4 or 6 "channels" wide or fail a size check.
    # Widths that are multiples of 32 always work, so decode at the next one and let torch resize.
    # Truly corrupt data (damaged mid-stream) fails again here and is reported.
    safe_width = max(32, -(-width // 32) * 32)
    try:
        reader = decord.VideoReader(io.BytesIO(mp4), width=safe_width, height=height, num_threads=num_threads)
        array = reader.get_batch(indices).asnumpy()
    except Exception as exc:
        raise VideoDecodeError(f"cannot decode video ({len(mp4)} bytes): {exc}") from exc
    frames = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    frames = F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return frames.round_().clamp_(0, 255).to(torch.uint8)
