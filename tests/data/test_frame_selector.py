import pytest
import torch

from data.frame_selector import CLIP_MEAN, CLIP_STD, POLICIES, FrameSelector, frame_scores


def _random_frames(b=2, n=12, h=16, w=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_shapes_sorted_unique_indices_and_determinism(policy):
    frames = _random_frames()
    out = FrameSelector(5, policy)(frames, dtype=torch.bfloat16)
    assert out.frames.shape == (2, 5, 3, 16, 16) and out.frames.dtype == torch.bfloat16
    assert out.indices.shape == (2, 5) and out.indices.dtype == torch.long
    assert out.scores.shape == (2, 5, 3) and out.scores.dtype == torch.float32
    assert (out.indices[:, 1:] > out.indices[:, :-1]).all()  # sorted and unique
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    again = FrameSelector(5, policy)(frames, dtype=torch.bfloat16)
    assert torch.equal(out.indices, again.indices) and torch.equal(out.frames, again.frames)


def test_uniform_picks_segment_centres_and_normalizes():
    frames = torch.full((1, 8, 3, 4, 4), 255, dtype=torch.uint8)
    out = FrameSelector(4, "uniform")(frames)
    assert out.indices.tolist() == [[1, 3, 5, 7]]
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out.frames[0, 0, :, 0, 0], expected)


def test_k_at_least_n_returns_all_frames_and_n_equals_one():
    frames = _random_frames(n=3)
    out = FrameSelector(8, "entropy")(frames)
    assert out.indices.tolist() == [[0, 1, 2], [0, 1, 2]] and out.frames.shape[1] == 3
    single = FrameSelector(4, "uniform")(frames[:, :1])
    assert single.indices.tolist() == [[0], [0]] and torch.isfinite(single.scores).all()


def test_all_black_clip_has_no_nan():
    out = FrameSelector(3, "entropy")(torch.zeros(1, 6, 3, 8, 8, dtype=torch.uint8))
    assert torch.isfinite(out.frames).all() and torch.isfinite(out.scores).all()
    assert (out.scores == 0).all()
    assert out.indices.tolist() == [[0, 2, 4]]  # ties go to the earliest frame of each segment


def test_entropy_prefers_the_frame_with_content_within_its_segment():
    frames = torch.zeros(1, 8, 3, 16, 16, dtype=torch.uint8)
    frames[0, 2, :, 4:10, 4:10] = 200  # segment 0 is frames 0..3: only frame 2 shows a shape
    frames[0, 6, 0, 2:8, 2:8] = 250  # segment 1 is frames 4..7: only frame 6 shows one
    assert FrameSelector(2, "entropy")(frames).indices.tolist() == [[2, 6]]


def test_scene_change_and_motion_scores():
    frames = torch.zeros(1, 6, 3, 32, 32, dtype=torch.uint8)
    frames[0, 3:] = 255  # a hard cut from black to white at frame 3
    scores = frame_scores(frames)
    assert scores[0, :, 1].tolist() == [0, 0, 0, 1, 0, 0]  # histogram mass moves completely once
    assert torch.allclose(scores[0, :, 2], torch.tensor([0, 0, 0, 1.0, 0, 0]))
    moving = torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8)
    moving[0, 0, :, :, :8] = 255
    moving[0, 1, :, :, 8:16] = 255
    motion = frame_scores(moving)[0, 1, 2]
    assert 0 < motion < 1


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError, match="entropy.*uniform"):
        FrameSelector(4, "best")
