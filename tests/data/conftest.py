"""Shared tiny SynthVid shards for the data tests (written once per session)."""

import pytest

from data.synthvid import write_synthvid

NUM_CLIPS, PER_SHARD, SIZE, FRAMES = 24, 6, 32, 8


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory) -> list[str]:
    """4 shards of 6 SynthVid pretrain clips, 32x32, 8 frames."""
    out = tmp_path_factory.mktemp("synthvid")
    return write_synthvid(
        str(out), num=NUM_CLIPS, seed=0, samples_per_shard=PER_SHARD, size=SIZE, num_frames=FRAMES
    )
