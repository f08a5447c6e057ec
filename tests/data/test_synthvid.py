import json
import os

import numpy as np
import pytest
import webdataset as wds

from data.synthvid import COLORS, TASKS, VOCABULARY, caption_corpus, generate_clip, main, write_synthvid


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
