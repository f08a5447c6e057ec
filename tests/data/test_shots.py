import torch

from data.frame_scores import frame_scores
from data.frame_selector import FrameSelector, hybrid_value, main, temporal_nms
from data.shots import detect_cuts, shot_ids
from data.synthvid import generate_clip
from data.video_io import encode_mp4
from tests.data.frames import textured_shots


def _moving_square(frames: torch.Tensor, start: int, end: int) -> None:
    """A bright square that moves 2 pixels per frame over frames start..end-1 (motion, no cut)."""
    for t in range(start, end):
        x = 2 * ((t - start) % 12)
        frames[0, t, :, 4:12, x : x + 8] = 255


def test_cuts_are_found_even_between_shots_of_one_or_two_frames():
    cuts = [1, 20, 22, 23, 30, 39]  # shots of 1 and 2 candidates, at the clip's ends too
    frames = textured_shots(40, cuts)
    found = detect_cuts(frame_scores(frames))[0]
    assert found.nonzero().flatten().tolist() == [0, *cuts]
    assert shot_ids(frame_scores(frames))[0].tolist() == [0] + [1] * 19 + [2, 2, 3] + [4] * 7 + [5] * 9 + [6]


def test_motion_brightness_drift_and_synthvid_style_events_are_not_cuts():
    frames = textured_shots(32, [])
    _moving_square(frames, 8, 32)  # an object moving within the shot
    frames[0, 16:] = (frames[0, 16:].int() + 20).clamp(max=255).to(torch.uint8)  # a light change
    assert detect_cuts(frame_scores(frames))[0].nonzero().flatten().tolist() == [0]
    black = torch.zeros(2, 16, 3, 8, 8, dtype=torch.uint8)
    assert shot_ids(frame_scores(black)).eq(0).all()


def test_a_cut_far_above_a_busy_background_is_found_and_a_spike_of_the_same_size_in_busier_footage_is_not():
    scores = torch.zeros(2, 20, 3)
    scores[1, 1:, 1:] = 0.12  # clip 1 changes a lot everywhere (from its second frame on)
    scores[:, 10, 1:] = 0.3  # the same spike in both clips: 2.5x clip 1's background, under the ratio
    cuts = detect_cuts(scores)
    assert cuts[0].nonzero().flatten().tolist() == [0, 10]
    assert cuts[1].nonzero().flatten().tolist() == [0]


def test_hybrid_gives_every_short_shot_a_frame_where_plain_nms_does_not():
    # One long shot with a moving object, then short shots of 3 candidates: K = #shots.
    cuts = [40, 43, 46, 49, 52, 55]
    frames = textured_shots(64, cuts)
    _moving_square(frames, 0, 40)
    scores = frame_scores(frames)
    truth = shot_ids(scores)[0]
    k = len(cuts) + 1
    picked = FrameSelector(k, "hybrid")(frames).indices[0]
    assert sorted(set(truth[picked].tolist())) == list(range(k))
    plain = temporal_nms(hybrid_value(scores), k)[0]  # hybrid before shots: radius N/2K = 4 > 3
    assert len(set(truth[plain].tolist())) < k


def test_hybrid_on_a_clip_of_one_shot_is_plain_nms():
    frames = textured_shots(48, [])
    _moving_square(frames, 10, 30)
    scores = frame_scores(frames)
    assert shot_ids(scores).eq(0).all()
    for k in (2, 5, 9):
        assert torch.equal(FrameSelector(k, "hybrid").select(scores), temporal_nms(hybrid_value(scores), k))


def test_after_every_shot_has_a_frame_the_rest_fill_by_coverage():
    frames = textured_shots(32, [4, 28])  # shots of 4, 24 and 4 candidates
    picked = FrameSelector(6, "hybrid")(frames).indices[0]
    truth = shot_ids(frame_scores(frames))[0]
    assert set(truth[picked].tolist()) == {0, 1, 2}
    assert (picked.diff() >= 2).all()  # within a shot the NMS radius still spreads the picks


def test_temporal_nms_within_shots_returns_k_distinct_sorted_frames():
    g = torch.Generator().manual_seed(0)
    value = torch.rand(64, 24, generator=g)
    shots = (torch.rand(64, 24, generator=g) < 0.3).long().cumsum(1)  # random cuts, shots of any length
    for k in (1, 5, 12, 23):
        picks = temporal_nms(value, k, shots=shots)
        assert picks.shape == (64, k) and (picks[:, 1:] > picks[:, :-1]).all()
        assert picks[:, 0].ge(0).all() and picks[:, -1].lt(24).all()


def test_cli_reports_and_draws_the_detected_shots(tmp_path, capsys):
    frames = textured_shots(48, [20, 26], size=32)[0].permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
    video = tmp_path / "cuts.mp4"
    video.write_bytes(encode_mp4(frames))
    out = tmp_path / "sel.png"
    main(f"--video {video} --k 3 --n 48 --policy hybrid --height 32 --out {out}".split())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 shots →" in capsys.readouterr().out


def test_synthvid_clips_have_no_cut_so_hybrid_picks_as_plain_nms():
    # SynthVid's events (a shape appears, moves, leaves) change the frame little: one shot per clip,
    # which keeps hybrid's SynthVid figures (observability, event recall) what they were.
    for task in ("sparse", "order"):
        clips = [generate_clip(i, seed=3, task=task, size=32, num_frames=32)[0] for i in range(8)]
        frames = torch.stack([torch.from_numpy(f).permute(0, 3, 1, 2) for f in clips])
        scores = frame_scores(frames)
        assert shot_ids(scores).eq(0).all()
        assert torch.equal(FrameSelector(4, "hybrid").select(scores), temporal_nms(hybrid_value(scores), 4))


def test_with_fewer_frames_than_shots_every_pick_is_in_its_own_shot():
    frames = textured_shots(40, [8, 12, 30, 33]).expand(3, -1, -1, -1, -1).contiguous()  # 5 shots
    scores = frame_scores(frames)
    truth = shot_ids(scores)
    for k in (2, 3, 4):
        picked = FrameSelector(k, "hybrid").select(scores)
        assert all(len(set(truth[b, picked[b]].tolist())) == k for b in range(3))
