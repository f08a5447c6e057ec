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
    HELD_OUT,
    SHAPES,
    TASKS,
    VOCABULARY,
    caption_corpus,
    generate_clip,
    main,
    write_synthvid,
)
from data.synthvid_grammar import facts_of, parse_caption

EVENT_TASKS = ("sparse", "order", "retrieval")


@pytest.mark.parametrize("task", TASKS)
def test_clips_are_deterministic_and_depend_on_seed(task):
    a = generate_clip(3, seed=7, task=task)
    b = generate_clip(3, seed=7, task=task)
    c = generate_clip(3, seed=8, task=task)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (32, 64, 64, 3) and a[0].dtype == np.uint8  # v2: 32 frames by default


@pytest.mark.parametrize("task", TASKS)
def test_caption_words_are_in_vocabulary_and_parse_to_the_ground_truth(task):
    vocab = set(VOCABULARY)
    for i in range(60):
        _, caption, truth = generate_clip(i, seed=0, task=task, size=32, num_frames=4)
        assert set(caption.split()) <= vocab, caption
        assert parse_caption(caption) == facts_of(truth), caption
        assert truth["task"] == task


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


def test_motion_ground_truth_matches_pixels_and_caption():
    for i in range(20):
        frames, caption, truth = generate_clip(i, seed=1, task="motion", size=64, num_frames=16)
        visible = np.array(truth["visible"])
        (first, last), *_ = [(e["start"], e["end"]) for e in truth["events"]]
        assert np.flatnonzero(visible).tolist() == list(range(first, last + 1))  # one run in view
        assert last - first + 1 >= 4  # at least a quarter of the clip
        colour = np.array(COLORS[truth["color"]], dtype=np.uint8)
        assert np.array_equal((frames == colour).all(-1).any((1, 2)), visible)
        for path in truth["positions"]:  # every shape in view over the same frames
            assert [p is not None for p in path] == visible.tolist()
            x, y = np.round(path[first]).astype(int)
            assert tuple(frames[first, y, x]) == COLORS[truth["color"]]  # its centre has the colour
        assert truth["color"] in caption and truth["shape"] in caption
        positions = truth["positions"][0]
        dx, dy = np.subtract(positions[last], positions[first])
        # The shortest leg (one reach, >= 22.8 px at 64 px) over the longest motion (12 of 16 frames)
        # moves the shape over 2 px a frame, in the caption's direction.
        expected = {"right": dx, "left": -dx, "down": dy, "up": -dy}
        assert expected[truth["direction"]] >= 2 * (last - first), (caption, dx, dy)


def test_motion_sense_is_not_told_by_one_frame():
    """Where a motion shape is in a middle frame does not tell left-going from right-going clips (the
    motion's time and place are random, so the sense needs two frames); in pretrain it does."""
    assert _sense_from_one_frame("motion") < 0.65
    assert _sense_from_one_frame("pretrain") > 0.95


def _sense_from_one_frame(task: str, num: int = 600, t: int = 32, frame: int = 12) -> float:
    """How well the best threshold on the shape's x at one frame tells left- from right-going
    clips of `task`: 1.0 if the sense can be read off that frame alone, 0.5 if not at all."""
    xs = {"right": [], "left": []}
    for i in range(num):
        _, _, truth = generate_clip(i, seed=3, task=task, size=64, num_frames=t)
        position = truth["positions"][0][frame]
        if truth["direction"] in xs and position is not None:
            xs[truth["direction"]].append(position[0])
    right, left = np.array(xs["right"]), np.array(xs["left"])
    assert min(len(right), len(left)) > 50
    return max(
        max((right < th).mean() + (left >= th).mean(), (right >= th).mean() + (left < th).mean()) / 2
        for th in np.concatenate([right, left])
    )


def _check_events(frames: np.ndarray, caption: str, truth: dict) -> None:
    """The ground truth of a sparse / order / retrieval clip agrees with its pixels and its caption."""
    t = len(frames)
    colour = np.array(COLORS[truth["color"]], dtype=np.uint8)
    has_shape = (frames == colour).all(-1).any((1, 2))  # [T]: some pixel has the shape's colour
    visible = np.array(truth["visible"])
    assert np.array_equal(has_shape, visible)
    empty = frames[~visible]
    assert len(empty) and (empty == empty[0]).all()  # absent: the same static frame every time
    # Events are the visible runs, in time order, each preceded by an empty frame when there is room.
    runs = np.flatnonzero(np.diff(np.r_[0, visible.astype(int), 0]))
    assert [(e["start"], e["end"]) for e in truth["events"]] == [
        (int(a), int(b) - 1) for a, b in zip(runs[::2], runs[1::2], strict=True)
    ]
    positions, motion = truth["positions"][0], np.array(truth["motion"])
    for event in truth["events"]:
        start, end, direction = event["start"], event["end"], event["direction"]
        length = end - start + 1
        assert length >= 2 and length <= 0.1875 * t + 1  # short: 12.5-18.75% of the clip
        if t >= 32:
            assert length >= 4  # v2: long enough for two selected frames to show the direction
        x, y = np.round(positions[start]).astype(int)
        assert np.array_equal(frames[start, y, x], colour)
        assert motion[start].tolist() == [0, 0]  # it appears: no previous position
        steps = np.sign(motion[start + 1 : end + 1]).astype(int)
        assert (steps == np.array(DIRECTIONS[direction])).all()  # every step goes the stated way
    assert all(p is None for p, v in zip(positions, visible, strict=True) if not v)
    phrases = " and then ".join(DIRECTION_PHRASES[e["direction"]] for e in truth["events"])
    assert caption.endswith(f"{truth['shape']} moves {phrases}") and truth["color"] in caption


@pytest.mark.parametrize("task", EVENT_TASKS)
def test_events_last_at_least_four_of_32_frames(task):
    lengths = [
        e["end"] - e["start"] + 1
        for i in range(30)
        for e in generate_clip(i, seed=6, task=task, size=32, num_frames=32)[2]["events"]
    ]
    assert min(lengths) >= 4 and max(lengths) <= 6


def test_sparse_has_one_event_and_a_distractor_that_never_moves():
    with_distractor = 0
    for i in range(24):
        frames, caption, truth = generate_clip(i, seed=3, task="sparse", size=64, num_frames=32)
        assert len(truth["events"]) == 1 and truth["count"] == 1 and len(truth["directions"]) == 1
        _check_events(frames, caption, truth)
        distractor = truth["distractor"]
        if distractor is None:
            # Nothing but the graded background outside the event: one constant colour per row.
            outside = np.delete(frames, np.flatnonzero(truth["visible"]), axis=0)
            assert (outside == outside[:, :, :1]).all()
            continue
        with_distractor += 1
        assert distractor["shape"] != truth["shape"] and distractor["color"] != truth["color"]
        assert distractor["color"] not in caption and distractor["shape"] not in caption
        mask = (frames == np.array(COLORS[distractor["color"]], dtype=np.uint8)).all(-1)  # [T, H, W]
        assert mask[0].any() and (mask == mask[0]).all()  # the same pixels in every frame
        ys, xs = np.nonzero(mask[0])
        box_centre = np.array([xs.min() + xs.max(), ys.min() + ys.max()]) / 2  # a triangle's too
        assert np.abs(box_centre - distractor["position"]).max() <= 1
    assert 6 <= with_distractor <= 18  # about half the clips


def test_uniform_k4_of_32_never_keeps_two_frames_of_a_sparse_event():
    picks = uniform_positions(32, 4).tolist()
    kept = [
        sum(e["start"] <= i <= e["end"] for i in picks)
        for index in range(40)
        for e in generate_clip(index, seed=0, task="sparse", size=32, num_frames=32)[2]["events"]
    ]
    assert max(kept) == 1  # a direction needs two positions: uniform never sees one
    assert 0.3 < np.mean(kept) < 0.95  # and it misses the event altogether in some clips


def test_order_ground_truth_matches_pixels_and_caption():
    counts = set()
    for i in range(12):
        frames, caption, truth = generate_clip(i, seed=4, task="order", size=64, num_frames=64)
        _check_events(frames, caption, truth)
        counts.add(len(truth["events"]))
        assert truth["directions"] != truth["directions"][::-1]  # the reversed order is another caption
    assert counts == {2, 3}


@pytest.mark.parametrize("task", ["dense", "shift"])
def test_appearance_clips_show_every_object_in_every_frame(task):
    counts = set()
    for i in range(12):
        frames, caption, truth = generate_clip(i, seed=2, task=task, size=64, num_frames=32)
        counts.add(truth["count"])
        assert truth["directions"] == [] and truth["events"] == [] and all(truth["visible"])
        assert parse_caption(caption).directions == ()  # appearance only: no motion phrase
        assert "move" not in caption
        positions = np.array(truth["positions"])  # [count, T, 2], no nulls
        assert positions.shape == (truth["count"], 32, 2)
        colour = np.array(COLORS[truth["color"]], dtype=np.uint8)
        for path in positions:
            for frame, (x, y) in zip(frames, np.round(path).astype(int), strict=True):
                assert np.array_equal(frame[y, x], colour)  # each centre has the colour in every frame
        drift = np.abs(positions[:, -1] - positions[:, 0]).max()
        assert drift <= 0.25 * 64 / 2  # slow: at most a fraction of the frame over the clip
    assert counts == {1, 2, 3}


def test_shift_train_never_draws_a_held_out_pair_and_eval_only_those():
    assert len(HELD_OUT) == 6 == len(set(HELD_OUT))
    assert sorted(c for _, c in HELD_OUT) == sorted(COLORS)  # each colour once
    assert all(sum(s == shape for s, _ in HELD_OUT) == 2 for shape in SHAPES)  # each shape twice
    seen = {}
    for split in ("train", "eval", "test"):
        pairs = []
        for i in range(200):
            truth = generate_clip(i, seed=0, task="shift", size=16, num_frames=1, split=split)[2]
            assert truth["split"] == split and truth["held_out"] == (split != "train")
            pairs.append((truth["shape"], truth["color"]))
        seen[split] = set(pairs)
    assert not seen["train"] & set(HELD_OUT) and len(seen["train"]) == 12
    assert seen["eval"] == seen["test"] == set(HELD_OUT)
    a = generate_clip(0, seed=0, task="shift", split="eval")
    b = generate_clip(0, seed=0, task="shift", split="test")
    assert not np.array_equal(a[0], b[0])  # the split is part of the clip's stream


def test_split_is_ignored_by_other_tasks_and_checked():
    for task in ("sparse", "dense", "order"):
        a, b = (
            generate_clip(1, seed=0, task=task, split="train"),
            generate_clip(1, seed=0, task=task, split="eval"),
        )
        assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        generate_clip(0, seed=0, task="shift", split="valid")


def test_retrieval_groups_differ_only_in_order_or_direction():
    for group in range(6):
        members = [
            generate_clip(group * GROUP_SIZE + v, seed=2, task="retrieval", num_frames=32) for v in range(3)
        ]
        (anchor, a_cap, a), (order, o_cap, o), (flip, f_cap, f) = members
        for frames, caption, truth in members:
            _check_events(frames, caption, truth)
            assert truth["group"] == group and truth["group_indices"] == [
                group * GROUP_SIZE + v for v in range(3)
            ]
        assert [t["variant"] for _, _, t in members] == ["anchor", "order", "direction"]
        assert len({a_cap, o_cap, f_cap}) == 3  # three different captions, same words otherwise
        assert all(t["shape"] == a["shape"] and t["color"] == a["color"] for t in (o, f))
        assert all(t["radius"] == a["radius"] and t["visible"] == a["visible"] for t in (o, f))
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


def test_shift_shards_record_the_split(tmp_path):
    paths = write_synthvid(str(tmp_path), task="shift", num=4, seed=0, size=16, num_frames=2, split="eval")
    metas = [json.loads(s["json"]) for s in wds.WebDataset(paths, shardshuffle=False)]
    assert all(m["split"] == "eval" and m["held_out"] for m in metas)
    assert all((m["shape"], m["color"]) in HELD_OUT for m in metas)


@pytest.mark.parametrize("task", EVENT_TASKS)
def test_event_tasks_need_room_for_their_events(task, tmp_path):
    with pytest.raises(ValueError, match="num_frames >= 4"):
        generate_clip(0, seed=0, task=task, num_frames=3)
    with pytest.raises(ValueError, match="num_frames >= 4"):
        write_synthvid(str(tmp_path / "x"), task=task, num=1, num_frames=2)
    assert not (tmp_path / "x").exists()  # checked before anything is written


def test_cli_prints_shard_paths(tmp_path, capsys):
    main(
        [
            "--task",
            "order",
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


def test_cli_writes_shift_eval_with_32_frames_by_default(tmp_path):
    main(["--task", "shift", "--split", "eval", "--num", "2", "--out", str(tmp_path), "--size", "16"])
    metas = [
        json.loads(s["json"])
        for s in wds.WebDataset(sorted(map(str, tmp_path.glob("*.tar"))), shardshuffle=False)
    ]
    assert [m["num_frames"] for m in metas] == [32, 32] and all(m["held_out"] for m in metas)
