import pytest
import torch

from data.frame_scores import frame_scores
from data.frame_selector import (
    CLIP_MEAN,
    CLIP_STD,
    POLICIES,
    FrameSelector,
    PolicyArgs,
    main,
    temporal_nms,
)
from data.synthvid import generate_clip
from data.video_io import encode_mp4
from tests.data.frames import textured_shots


def _random_frames(b=2, n=12, h=16, w=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, n, 3, h, w), generator=g, dtype=torch.uint8)



@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_shapes_sorted_unique_indices_and_determinism(policy):
    frames = _random_frames()
    out = FrameSelector(5, policy).eval()(frames, dtype=torch.bfloat16)
    assert out.frames.shape == (2, 5, 3, 16, 16) and out.frames.dtype == torch.bfloat16
    assert out.indices.shape == (2, 5) and out.indices.dtype == torch.long
    assert out.scores.shape == (2, 5, 3) and out.scores.dtype == torch.float32
    assert (out.indices[:, 1:] > out.indices[:, :-1]).all()  # sorted and unique
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    rows = torch.arange(2)[:, None]
    assert torch.equal(out.scores, frame_scores(frames)[rows, out.indices])
    selector = FrameSelector(5, policy).eval()
    again = [selector(frames, dtype=torch.bfloat16) for _ in range(2)]  # eval: same frames every call
    assert all(torch.equal(out.indices, a.indices) and torch.equal(out.frames, a.frames) for a in again)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_without_scores_the_same_frames_are_chosen(policy):
    frames = _random_frames()
    full = FrameSelector(5, policy).eval()(frames)
    bare = FrameSelector(5, policy).eval()(frames, with_scores=False)
    assert bare.scores is None
    assert torch.equal(bare.indices, full.indices) and torch.equal(bare.frames, full.frames)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_edge_cases_k_at_least_n_single_frame_and_black_clip(policy):
    frames = _random_frames(n=3)
    for k in (3, 8):  # K >= N keeps every frame
        out = FrameSelector(k, policy)(frames)
        assert out.indices.tolist() == [[0, 1, 2], [0, 1, 2]] and out.frames.shape[1] == 3
    single = FrameSelector(4, policy)(frames[:, :1])
    assert single.indices.tolist() == [[0], [0]] and torch.isfinite(single.scores).all()
    black = FrameSelector(4, policy)(torch.zeros(2, 16, 3, 8, 8, dtype=torch.uint8))
    assert black.indices.shape == (2, 4) and (black.indices[:, 1:] > black.indices[:, :-1]).all()
    assert torch.isfinite(black.frames).all() and (black.scores == 0).all()


def test_uniform_picks_segment_centres_and_normalizes():
    frames = torch.full((1, 8, 3, 4, 4), 255, dtype=torch.uint8)
    out = FrameSelector(4, "uniform")(frames)
    assert out.indices.tolist() == [[1, 3, 5, 7]]
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out.frames[0, 0, :, 0, 0], expected)


def test_all_black_entropy_ties_go_to_segment_starts_and_nms_spreads_out():
    black = torch.zeros(1, 6, 3, 8, 8, dtype=torch.uint8)
    assert FrameSelector(3, "entropy")(black).indices.tolist() == [[0, 2, 4]]
    # Nothing to see: the NMS pickers fall back to farthest-point sampling, not a clump at the start.
    spread = FrameSelector(4, "motion")(torch.zeros(1, 32, 3, 8, 8, dtype=torch.uint8)).indices[0]
    assert spread.diff().min() >= 8


def test_entropy_prefers_the_frame_with_content_within_its_segment():
    frames = torch.zeros(1, 8, 3, 16, 16, dtype=torch.uint8)
    frames[0, 2, :, 4:10, 4:10] = 200  # segment 0 is frames 0..3: only frame 2 shows a shape
    frames[0, 6, 0, 2:8, 2:8] = 250  # segment 1 is frames 4..7: only frame 6 shows one
    assert FrameSelector(2, "entropy")(frames).indices.tolist() == [[2, 6]]


def test_scene_picks_the_first_frame_of_every_shot():
    frames = textured_shots(24, cuts=[7, 15])
    assert FrameSelector(3, "scene")(frames).indices.tolist() == [[0, 7, 15]]
    assert FrameSelector(3, "uniform")(frames).indices.tolist() == [[4, 12, 20]]  # not the cut frames


def test_motion_picks_the_moving_segment_that_uniform_misses():
    frames = textured_shots(32, cuts=[])
    positions = [2] * 17 + [8, 14, 20] + [20] * 12  # a square that moves in frames 17..19 only
    for t, x in enumerate(positions):
        frames[0, t, :, 10:18, x : x + 8] = 255
    moving = set(range(17, 20))
    assert moving & set(FrameSelector(4, "motion")(frames).indices[0].tolist())
    assert not moving & set(FrameSelector(4, "uniform")(frames).indices[0].tolist())


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


def test_scores_on_large_frames_use_the_analysis_grid_and_keep_the_cut():
    frames = torch.zeros(1, 4, 3, 224, 320, dtype=torch.uint8)
    frames[0, 2:] = 200
    scores = frame_scores(frames)
    assert scores[0, :, 1].tolist() == [0, 0, 1, 0]


def test_random_and_headtail_draw_per_call_in_training_and_resume_from_state():
    frames = _random_frames(b=1, n=64)
    for policy in ("random", "headtail"):
        selector = FrameSelector(8, policy, seed=3)
        state = selector.state_dict()
        draws = [selector(frames).indices for _ in range(4)]
        assert len({tuple(d[0].tolist()) for d in draws}) > 1  # training: new frames per call
        resumed = FrameSelector(8, policy, seed=99)
        resumed.load_state_dict(state)
        assert all(torch.equal(d, resumed(frames).indices) for d in draws)
        assert not torch.equal(
            FrameSelector(8, policy, seed=3).eval()(frames).indices,
            FrameSelector(8, policy, seed=4).eval()(frames).indices,
        )


def test_random_keeps_one_frame_per_segment_and_headtail_half_per_half():
    frames = _random_frames(b=16, n=40)
    random = FrameSelector(5, "random")(frames).indices
    assert torch.equal(random // 8, torch.arange(5).expand(16, 5))  # segment of each pick
    headtail = FrameSelector(5, "headtail")(frames).indices  # odd K: the tail gets the extra frame
    assert ((headtail < 20).sum(1) == 2).all() and ((headtail >= 20).sum(1) == 3).all()


def test_hybrid_weights_reduce_to_single_scores_and_are_validated():
    frames = textured_shots(40, cuts=[9, 23])
    frames[0, 30:34, :, 4:12, 4:12] = 255  # something appears late
    for weights, alone in (((0, 0, 1), "motion"), ((0, 1, 0), "scene")):
        hybrid = FrameSelector(4, "hybrid", weights=weights)(frames).indices
        assert torch.equal(hybrid, FrameSelector(4, alone)(frames).indices)
    with pytest.raises(ValueError, match="weights"):
        FrameSelector(4, "hybrid", weights=(0, 0, 0))
    with pytest.raises(ValueError, match="weights"):
        FrameSelector(4, "hybrid", weights=(1, -1, 1))


@pytest.mark.parametrize("n,k", [(5, 4), (9, 8), (64, 8), (10, 3), (7, 1)])
def test_temporal_nms_returns_k_distinct_sorted_frames(n, k):
    value = torch.rand(32, n, generator=torch.Generator().manual_seed(n * k))
    picks = temporal_nms(value, k)
    assert picks.shape == (32, k) and (picks[:, 1:] > picks[:, :-1]).all()
    assert picks[:, 0].ge(0).all() and picks[:, -1].lt(n).all()


def test_hybrid_finds_sparse_synthvid_events_that_uniform_misses():
    # SynthVid v2: one event of 4-6 frames in 32; uniform K=4 (a frame every 8) misses some.
    clips = [generate_clip(i, seed=5, task="sparse", size=32, num_frames=32) for i in range(16)]
    frames = torch.stack([torch.from_numpy(f).permute(0, 3, 1, 2) for f, _, _ in clips])
    events = [[(e["start"], e["end"]) for e in truth["events"]] for _, _, truth in clips]

    def recall(policy: str) -> float:
        picked = FrameSelector(4, policy)(frames).indices
        hits = [
            any(s <= i <= e for i in row.tolist())
            for row, clip in zip(picked, events, strict=True)
            for s, e in clip
        ]
        return sum(hits) / len(hits)

    assert recall("hybrid") >= 0.95
    assert recall("hybrid") > recall("uniform")


def test_scores_and_every_policy_compile_to_one_graph():
    frames, noise, args = _random_frames(n=16), torch.rand(2, 16), PolicyArgs(k=5)

    def select_all(frames, noise):
        scores = frame_scores(frames)
        return [fn(scores, noise, args) for fn in POLICIES.values()]

    # fullgraph=True raises on any graph break (a Python loop over data, .item(), a host sync).
    compiled = torch.compile(select_all, fullgraph=True, backend="eager", dynamic=False)
    for got, expected in zip(compiled(frames, noise), select_all(frames, noise), strict=True):
        assert torch.equal(got, expected)


def test_cli_writes_a_png(tmp_path, capsys):
    frames, _, _ = generate_clip(0, seed=1, task="order", size=32, num_frames=32)
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_mp4(frames))
    out = tmp_path / "sel.png"
    main(f"--video {video} --k 4 --n 16 --policy hybrid --height 32 --out {out}".split())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "hybrid: frames [" in capsys.readouterr().out


def test_cli_names_an_unreadable_video(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        main(["--video", str(bad), "--out", str(tmp_path / "x.png")])


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError, match="entropy.*uniform"):
        FrameSelector(4, "best")
