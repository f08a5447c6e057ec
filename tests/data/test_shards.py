import json
import os

import pytest
import webdataset as wds

from data.shards import ShardSink


def test_video2dataset_layout_read_back_by_plain_webdataset(tmp_path):
    with ShardSink(str(tmp_path), samples_per_shard=2) as sink:
        for i in range(5):
            sink.write(f"{i:09d}", b"fake-mp4-%d" % i, f"caption {i} é", {"fps": 8})
    paths = sink.paths
    assert [os.path.basename(p) for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["00000.tar", "00001.tar", "00002.tar", "00000_stats.json", "00001_stats.json", "00002_stats.json"]
    )  # no temporary files left behind
    counts = [json.load(open(tmp_path / f"{s:05d}_stats.json"))["count"] for s in range(3)]
    assert counts == [2, 2, 1]

    samples = list(wds.WebDataset(paths, shardshuffle=False))
    assert len(samples) == 5
    for i, sample in enumerate(samples):
        assert set(sample) >= {"__key__", "mp4", "txt", "json"}
        assert sample["__key__"] == f"{i:09d}"
        assert sample["txt"].decode("utf-8") == f"caption {i} é"
        assert json.loads(sample["json"]) == {"fps": 8, "key": f"{i:09d}", "caption": f"caption {i} é"}


def test_failures_are_counted_in_stats(tmp_path):
    sink = ShardSink(str(tmp_path), samples_per_shard=10)
    sink.write("000000000", b"x", "ok")
    sink.record_failure("000000001", "decode_error")
    assert sink.close() == [str(tmp_path / "00000.tar")]
    stats = json.load(open(tmp_path / "00000_stats.json"))
    assert stats["count"] == 2 and stats["successes"] == 1 and stats["failures"] == 1


def test_keys_with_dots_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="key"):
        ShardSink(str(tmp_path), 2).write("clip.001", b"x", "c")


def test_interrupted_run_leaves_no_half_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardSink(str(tmp_path), samples_per_shard=2) as sink:
            for i in range(3):
                sink.write(f"{i:09d}", b"x", "c")
            raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["00000.tar", "00000_stats.json"]
