"""PyAV (FFmpeg): every frame decoded in order and the wanted ones kept, so seeking is frame-exact.

Slower than decord on long clips (it decodes up to the last wanted frame) but it trusts no
keyframe index: the reference decode that `benchmarks/pipeline.py` measures seek accuracy against.
"""

from __future__ import annotations

import io

import av
import numpy as np
import torch

from data.video_io import VideoDecodeError, frame_indices


def decode_frames(
    mp4: bytes,
    num_frames: int,
    size: tuple[int, int],
    num_threads: int = 1,
    sample_fps: float | None = None,
) -> torch.Tensor:
    """uint8 [N, 3, H, W] RGB at `size` = (H, W), scaled by swscale; see `data.video_io.decode_frames`.

    Raises:
        VideoDecodeError: empty, corrupt, truncated or frameless input (FFmpeg's errors are wrapped).
    """
    if not mp4:
        raise VideoDecodeError("empty video bytes")
    try:
        return _decode(mp4, num_frames, size, num_threads, sample_fps)
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoDecodeError(f"cannot decode video ({len(mp4)} bytes): {exc}") from exc


def _decode(
    mp4: bytes, num_frames: int, size: tuple[int, int], num_threads: int, sample_fps: float | None
) -> torch.Tensor:
    height, width = size
    with av.open(io.BytesIO(mp4)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream ({len(mp4)} bytes)")
        stream = container.streams.video[0]
        # Counting packets reads the index without decoding; an mp4 holds one video frame per packet.
        num_available = sum(1 for packet in container.demux(stream) if packet.size)
        if num_available == 0:
            raise VideoDecodeError(f"video has zero frames ({len(mp4)} bytes)")
        indices = frame_indices(num_available, float(stream.average_rate or 0) or 1.0, num_frames, sample_fps)
        container.seek(0, stream=stream)
        stream.thread_count = num_threads
        wanted: dict[int, np.ndarray] = {}
        wanted_positions, last = set(indices), max(indices)
        for position, frame in enumerate(container.decode(stream)):
            if position in wanted_positions:
                wanted[position] = frame.to_ndarray(width=width, height=height, format="rgb24")
            if position >= last:
                break
    missing = sorted(set(indices) - set(wanted))
    if missing:
        raise VideoDecodeError(
            f"decoded {len(wanted)} of the wanted frames, frame {missing[0]} of {num_available} missing "
            f"({len(mp4)} bytes: cut short or damaged)"
        )
    array = np.stack([wanted[i] for i in indices])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
