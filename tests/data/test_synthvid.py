import json
import os

import numpy as np
import pytest
import webdataset as wds

from data.frame_selector import uniform_positions
from data.synthvid import (
    COLORS,
    DIRECTION_PHRASES,
    DIRECTIONS,
    GROUP_SIZE,
    TASKS,
    VOCABULARY,
    caption_corpus,
    generate_clip,
    main,
    write_synthvid,
)


@pytest.mark.parametrize("task", TASKS)
def test_clips_are_deterministic_and_depend_on_seed(task):
    a = generate_clip(3, seed=7, task=task)
    b = generate_clip(3, seed=7, task=task)
    c = generate_clip(3, seed=8, task=task)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (16, 64, 64, 3) and a[0].dtype == np.uint8


@pytest.mark.parametrize("task", TASKS)
def test_caption_words_are_in_vocabulary(task):
    vocab = set(VOCABULARY)
    for i in range(60):
        _, caption, _ = generate_clip(i, seed=0, task=task, size=32, num_frames=4)
        assert set(caption.split()) <= vocab, caption


def test_corpus_covers_vocabulary():
    corpus = caption_corpus()
    assert {w for s in corpus for w in s.split()} == set(VOCABULARY)
    assert len(corpus) == len(set(corpus))


def test_ground_truth_matches_pixels_and_caption():
    for i in range(20):
        frames, caption, truth = generate_clip(i, seed=1, task="pretrain", size=64, num_frames=16)
        positions = np.array(truth["positions"])  # [count, T, 2] (x, y)
        assert positions.shape == (truth["count"], 16, 2)
        x, y = positions[0, 5].round().astype(int)
        assert tuple(frames[5, y, x]) == COLORS[truth["color"]]  # shape centre has the caption's colour
        assert truth["color"] in caption and truth["shape"] in caption
        dx, dy = positions[0, -1] - positions[0, 0]
        expected = {"right": dx > 20, "left": dx < -20, "down": dy > 20, "up": dy < -20}
        assert expected[truth["direction"]], (caption, dx, dy)


def _check_sparse_events(frames: np.ndarray, caption: str, truth: dict) -> None:
    """The ground truth of a temporal / retrieval clip agrees with its pixels and its caption."""
    t = len(frames)
    colour = np.array(COLORS[truth["color"]], dtype=np.uint8)
    has_shape = (frames == colour).all(-1).any((1, 2))  # [T]: some pixel has the shape's colour
    visible = np.array(truth["visible"])
    assert np.array_equal(has_shape, visible)
    empty = frames[~visible]
    assert len(empty) and (empty == empty[0]).all()  # absent: the same static background every time
    # Events are the visible runs, in time order, each preceded by an empty frame when there is room.
    runs = np.flatnonzero(np.diff(np.r_[0, visible.astype(int), 0]))
    assert [(e["start"], e["end"]) for e in truth["events"]] == [
        (int(a), int(b) - 1) for a, b in zip(runs[::2], runs[1::2], strict=True)
    ]
    positions, motion = truth["positions"][0], np.array(truth["motion"])
    for event in truth["events"]:
        start, end, direction = event["start"], event["end"], event["direction"]
        assert end > start and (t < 16 or end - start + 1 <= 0.1 * t + 1)  # short: a few % of the clip
        x, y = np.round(positions[start]).astype(int)
        assert np.array_equal(frames[start, y, x], colour)
        assert motion[start].tolist() == [0, 0]  # it appears: no previous position
        steps = np.sign(motion[start + 1 : end + 1]).astype(int)
        assert (steps == np.array(DIRECTIONS[direction])).all()  # every step goes the stated way
    assert all(p is None for p, v in zip(positions, visible, strict=True) if not v)
    phrases = " and then ".join(DIRECTION_PHRASES[e["direction"]] for e in truth["events"])
    assert caption.endswith(f"{truth['shape']} moves {phrases}") and truth["color"] in caption


def test_temporal_ground_truth_matches_pixels_and_caption():
    counts = set()
    for i in range(12):
        frames, caption, truth = generate_clip(i, seed=4, task="temporal", size=64, num_frames=64)
        _check_sparse_events(frames, caption, truth)
        counts.add(len(truth["events"]))
    assert counts == {2, 3}


def test_uniform_sampling_misses_temporal_events():
    picks = set(uniform_positions(64, 8).tolist())
    hits = [
        any(e["start"] <= i <= e["end"] for i in picks)
        for index in range(20)
        for e in generate_clip(index, seed=0, task="temporal", size=32, num_frames=64)[2]["events"]
    ]
    assert 0.3 < sum(hits) / len(hits) < 0.9  # uniform K=8 of N=64 sees some events, not all


def test_retrieval_groups_differ_only_in_order_or_direction():
    for group in range(6):
        members = [
            generate_clip(group * GROUP_SIZE + v, seed=2, task="retrieval", num_frames=32) for v in range(3)
        ]
        (anchor, a_cap, a), (order, o_cap, o), (flip, f_cap, f) = members
        for frames, caption, truth in members:
            _check_sparse_events(frames, caption, truth)
            assert truth["group"] == group and truth["group_indices"] == [
                group * GROUP_SIZE + v for v in range(3)
            ]
        assert [t["variant"] for _, _, t in members] == ["anchor", "order", "direction"]
        assert len({a_cap, o_cap, f_cap}) == 3  # three different captions, same words otherwise
        assert all(t["shape"] == a["shape"] and t["color"] == a["color"] for t in (o, f))
        windows = [(e["start"], e["end"]) for e in a["events"]]
        assert all([(e["start"], e["end"]) for e in t["events"]] == windows for t in (o, f))
        assert o["directions"] == a["directions"][::-1]
        changed = [i for i in range(2) if f["directions"][i] != a["directions"][i]]
        assert len(changed) == 1
        # Pixels outside the changed event are identical; a reversed leg shows the same frames backwards.
        start, end = windows[changed[0]]
        outside = np.r_[0:start, end + 1 : len(anchor)]
        assert np.array_equal(flip[outside], anchor[outside])
        assert np.array_equal(anchor[0], order[0])  # the same background
        reversed_leg = np.array(DIRECTIONS[f["directions"][changed[0]]]) == -np.array(
            DIRECTIONS[a["directions"][changed[0]]]
        )
        if reversed_leg.all():
            assert np.array_equal(flip[start : end + 1], anchor[start : end + 1][::-1])


def test_write_synthvid_is_byte_deterministic_and_readable(tmp_path):
    a = write_synthvid(str(tmp_path / "a"), num=5, seed=3, samples_per_shard=2, size=32, num_frames=4)
    b = write_synthvid(str(tmp_path / "b"), num=5, seed=3, samples_per_shard=2, size=32, num_frames=4)
    assert [os.path.basename(p) for p in a] == ["00000.tar", "00001.tar", "00002.tar"]
    for pa, pb in zip(a, b, strict=True):
        assert open(pa, "rb").read() == open(pb, "rb").read()
    samples = list(wds.WebDataset(a, shardshuffle=False))
    meta = json.loads(samples[0]["json"])
    assert meta["key"] == samples[0]["__key__"] == "000000000"
    assert meta["caption"] == samples[0]["txt"].decode()
    assert meta["num_frames"] == 4 and meta["size"] == [32, 32] and meta["fps"] == 8.0


def test_retrieval_shards_carry_groups(tmp_path):
    paths = write_synthvid(str(tmp_path), task="retrieval", num=6, seed=0, size=32, num_frames=8)
    metas = [json.loads(s["json"]) for s in wds.WebDataset(paths, shardshuffle=False)]
    assert [m["group"] for m in metas] == [0, 0, 0, 1, 1, 1]
    assert [m["variant"] for m in metas[:3]] == ["anchor", "order", "direction"]
    assert all(m["events"] and len(m["motion"]) == 8 for m in metas)


def test_temporal_needs_room_for_two_events():
    with pytest.raises(ValueError, match="num_frames >= 4"):
        generate_clip(0, seed=0, task="temporal", num_frames=3)


def test_cli_prints_shard_paths(tmp_path, capsys):
    main(
        [
            "--task",
            "temporal",
            "--num",
            "3",
            "--seed",
            "0",
            "--out",
            str(tmp_path),
            "--samples-per-shard",
            "2",
            "--size",
            "32",
            "--frames",
            "4",
        ]
    )
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")]
