import numpy as np
import pytest
import torch

from data.video_io import (
    VideoDecodeError,
    decode_frames,
    encode_mp4,
    fps_indices,
    probe_video,
    transcode,
    uniform_indices,
)


def _two_colour_clip(t: int = 8, h: int = 64, w: int = 64) -> np.ndarray:
    """Left half red, right half blue: uint8 [T, H, W, 3]."""
    frames = np.zeros((t, h, w, 3), dtype=np.uint8)
    frames[:, :, : w // 2] = (220, 30, 30)
    frames[:, :, w // 2 :] = (30, 30, 220)
    return frames


def test_round_trip_shapes_dtypes_and_colours():
    mp4 = encode_mp4(_two_colour_clip(), fps=8.0)
    assert mp4[4:8] == b"ftyp"  # an ISO-BMFF (mp4) file
    frames = decode_frames(mp4, num_frames=4, size=(32, 48))
    assert frames.shape == (4, 3, 32, 48) and frames.dtype == torch.uint8
    left = frames[:, :, :, 4:20].float().mean(dim=(0, 2, 3))  # away from the edge that chroma blurs
    right = frames[:, :, :, 28:44].float().mean(dim=(0, 2, 3))
    assert torch.allclose(left, torch.tensor([220.0, 30.0, 30.0]), atol=20)
    assert torch.allclose(right, torch.tensor([30.0, 30.0, 220.0]), atol=20)


def test_uniform_indices_cover_the_clip_and_repeat_on_short_clips():
    assert uniform_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert uniform_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def test_short_clip_yields_requested_number_of_frames():
    clip = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (0, 120, 240)])
    frames = decode_frames(encode_mp4(clip), num_frames=6, size=(16, 16))
    assert frames.shape == (6, 3, 16, 16)
    brightness = frames.float().mean(dim=(1, 2, 3))
    assert torch.all(brightness[1:] >= brightness[:-1] - 2)  # time order kept, frames repeated


@pytest.mark.parametrize("bad", [b"", b"not a video at all" * 8, "truncated"])
def test_corrupt_input_raises_video_decode_error(bad):
    if bad == "truncated":
        bad = encode_mp4(_two_colour_clip())[:300]
    with pytest.raises(VideoDecodeError):
        decode_frames(bad, num_frames=4, size=(32, 32))
    assert issubclass(VideoDecodeError, ValueError)


def test_encode_rejects_odd_sizes_and_wrong_dtype():
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 16, 16, 3), np.float32))


def test_fps_indices_are_centred_and_spaced():
    assert fps_indices(100, 25.0, 4, 5.0).tolist() == [42, 47, 52, 57]
    assert fps_indices(6, 10.0, 4, 5.0).tolist() == [1, 3, 5, 5]  # short clip: last frame repeats


def test_transcode_cuts_scales_and_resamples_and_probe_rejects_truncation():
    mp4 = encode_mp4(_two_colour_clip(t=16, h=64, w=96), fps=8.0)  # 2 s
    assert probe_video(mp4) == 16
    cut = transcode(mp4, start=0.5, end=1.5, height=32, fps=4)
    assert probe_video(cut) == 4
    frames = decode_frames(cut, num_frames=1, size=(32, 48))
    assert frames[0, 2, :, 40:].float().mean() > 150  # still blue on the right after scaling
    with pytest.raises(VideoDecodeError):
        probe_video(mp4[: len(mp4) // 2])
    with pytest.raises(VideoDecodeError, match="no frame"):
        transcode(mp4, start=5.0, end=6.0)
