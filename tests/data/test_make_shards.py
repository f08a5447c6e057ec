"""make_shards on tiny fixtures written in each data set's own annotation format."""

import csv
import glob
import io
import json
import os
from fractions import Fraction

import av
import decord
import numpy as np
import pytest
import webdataset as wds

from data.make_shards import main, make_shards
from data.video_io import encode_mp4

FPS = 8


def _frames(n: int, seed: int) -> np.ndarray:
    """uint8 [n, 32, 32, 3]: a flat colour per clip that brightens over time (so clips differ)."""
    base = np.random.default_rng(seed).integers(30, 200, size=3)
    ramp = np.linspace(0, 50, n)[:, None]
    return np.broadcast_to((base[None] + ramp)[:, None, None, :], (n, 32, 32, 3)).astype(np.uint8)


def _mp4(path, n: int = 8, seed: int = 0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_mp4(_frames(n, seed), fps=FPS))


def _avi(path, n: int = 8, seed: int = 0) -> None:
    """An MPEG-4 Part 2 avi, the container LSMDC ships: make_shards must re-encode it to mp4."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), mode="w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in _frames(n, seed):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def _read(out) -> dict[str, dict]:
    """key → {txt, json, frames} read back by plain webdataset."""
    samples = wds.WebDataset(sorted(glob.glob(os.path.join(out, "*.tar"))), shardshuffle=False)
    result = {}
    for s in samples:
        frames = len(decord.VideoReader(io.BytesIO(s["mp4"])))
        result[s["__key__"]] = {"txt": s["txt"].decode(), "json": json.loads(s["json"]), "frames": frames}
    return result


def _failed(out) -> dict[str, str]:
    failed = {}
    for path in glob.glob(os.path.join(out, "*_stats.json")):
        failed.update({f["key"]: f["reason"] for f in json.load(open(path))["failed"]})
    return failed


@pytest.fixture
def msrvtt(tmp_path):
    root, videos = tmp_path / "msrvtt", tmp_path / "msrvtt" / "videos"
    data = {
        "info": {"year": "2016"},
        "videos": [
            {"video_id": f"video{i}", "id": i, "category": i, "url": "u", "split": split}
            for i, split in enumerate(["train", "train", "test"])
        ],
        "sentences": [
            {"video_id": "video0", "sen_id": 1, "caption": "a man cooks pasta"},
            {"video_id": "video0", "sen_id": 0, "caption": "someone is cooking"},
            {"video_id": "video1", "sen_id": 2, "caption": "a dog runs"},
            {"video_id": "video2", "sen_id": 3, "caption": "a car drives"},
            {"video_id": "video2", "sen_id": 4, "caption": "cars on a road"},
        ],
    }
    os.makedirs(videos)
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr7579,video2,cars on a road\n"
    )
    _mp4(videos / "video0.mp4", seed=0)
    _mp4(videos / "video2.mp4", seed=2)  # video1 was never downloaded
    return root


def test_msrvtt_9k_split_keeps_all_references_and_lists_missing_videos(msrvtt, tmp_path):
    out = tmp_path / "out"
    summary = make_shards(
        "msrvtt",
        str(msrvtt / "MSRVTT_data.json"),
        str(msrvtt / "videos"),
        str(out),
        split="train9k",
        progress=False,
    )
    assert summary["written"] == 1 and summary["failures"] == {"video_not_found": 1}
    samples = _read(out)
    assert list(samples) == ["video0"]
    assert samples["video0"]["txt"] == "someone is cooking"  # first by sen_id
    assert samples["video0"]["json"]["captions"] == ["someone is cooking", "a man cooks pasta"]
    assert samples["video0"]["json"]["source"] == "msrvtt" and samples["video0"]["frames"] == 8
    assert _failed(out) == {"video1": "video_not_found"}


def test_msrvtt_jsfusion_1k_and_json_splits(msrvtt, tmp_path):
    out = tmp_path / "test1k"
    make_shards("msrvtt", str(msrvtt), str(msrvtt / "videos"), str(out), split="test1k", progress=False)
    sample = _read(out)["video2"]
    assert sample["json"]["retrieval_query"] == "cars on a road"
    assert sample["json"]["captions"] == ["a car drives", "cars on a road"]
    make_shards(
        "msrvtt", str(msrvtt), str(msrvtt / "videos"), str(tmp_path / "t"), split="test", progress=False
    )
    assert list(_read(tmp_path / "t")) == ["video2"]
    with pytest.raises(ValueError, match="unknown MSR-VTT split"):
        make_shards("msrvtt", str(msrvtt), str(msrvtt / "videos"), str(tmp_path / "x"), split="nope")


def test_vatex_cut_clips_and_full_videos(tmp_path):
    videos = tmp_path / "videos"
    _mp4(videos / "Ab_c-1_000000_000001.mp4", n=8, seed=1)  # already cut to its window
    _mp4(videos / "Zz9.mp4", n=24, seed=2)  # the whole 3 s YouTube video; the clip is [1, 2) s
    anno = tmp_path / "vatex_validation_v1.0.json"
    anno.write_text(
        json.dumps(
            [
                {"videoID": "Ab_c-1_000000_000001", "enCap": ["one", "two"], "chCap": ["一"]},
                {"videoID": "Zz9_000001_000002", "enCap": ["three"], "chCap": []},
                {"videoID": "Missing_000003_000004", "enCap": ["four"], "chCap": []},
            ]
        )
    )
    out = tmp_path / "out"
    make_shards("vatex", str(anno), str(videos), str(out), samples_per_shard=2, progress=False)
    samples = _read(out)
    assert sorted(samples) == ["Ab_c-1_000000_000001", "Zz9_000001_000002"]
    assert samples["Ab_c-1_000000_000001"]["json"]["captions"] == ["one", "two"]
    assert samples["Ab_c-1_000000_000001"]["json"]["captions_by_language"] == {"en": ["one", "two"], "zh": ["一"]}
    assert samples["Zz9_000001_000002"]["json"]["captions_by_language"] == {"en": ["three"]}
    assert samples["Zz9_000001_000002"]["frames"] == 8 and samples["Zz9_000001_000002"]["txt"] == "three"
    assert samples["Zz9_000001_000002"]["json"]["youtube_id"] == "Zz9"
    assert _failed(out) == {"Missing_000003_000004": "video_not_found"}
    assert sorted(os.listdir(out)) == [
        "00000.tar",
        "00000_stats.json",
        "00001.tar",
        "00001_stats.json",
        "make_shards.json",
    ]


def _activitynet(tmp_path):
    _mp4(tmp_path / "videos" / "v_abc.mp4", n=16, seed=3)  # 2 s
    anno = tmp_path / "val_1.json"
    anno.write_text(
        json.dumps(
            {
                "v_abc": {
                    "duration": 2.0,
                    "timestamps": [[1.0, 2.5], [0.0, 0.5]],  # the end runs past the video: clamped
                    "sentences": ["  Then she jumps.", "A woman runs."],
                }
            }
        )
    )
    return anno


def test_activitynet_timestamps_become_clips(tmp_path):
    anno = _activitynet(tmp_path)
    make_shards("activitynet", str(anno), str(tmp_path / "videos"), str(tmp_path / "out"), progress=False)
    samples = _read(tmp_path / "out")
    assert sorted(samples) == ["v_abc_000", "v_abc_001"]
    assert samples["v_abc_000"]["txt"] == "Then she jumps." and samples["v_abc_000"]["frames"] == 8
    assert samples["v_abc_001"]["frames"] == 4
    assert samples["v_abc_000"]["json"]["clip_window"] == [1.0, 2.0]


def test_activitynet_paragraph_mode(tmp_path):
    anno = _activitynet(tmp_path)
    out = tmp_path / "para"
    make_shards("activitynet", str(anno), str(tmp_path / "videos"), str(out), paragraph=True, progress=False)
    sample = _read(out)["v_abc"]
    assert sample["txt"] == "A woman runs. Then she jumps." and sample["frames"] == 16
    assert sample["json"]["timestamps"] == [[0.0, 0.5], [1.0, 2.5]]


def test_lsmdc_tsv_avi_and_dotted_ids(tmp_path):
    clip_a = "0001_American_Beauty_00.00.51.926-00.00.54.129"
    clip_b = "0001_American_Beauty_00.01.00.000-00.01.02.500"
    _avi(tmp_path / "videos" / "0001_American_Beauty" / f"{clip_a}.avi", seed=4)
    _avi(tmp_path / "videos" / "0001_American_Beauty" / f"{clip_b}.avi", seed=5)
    anno = tmp_path / "LSMDC16_annos_val.csv"
    anno.write_text(
        f'{clip_a}\t00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.55.000\tSOMEONE says "hi" to SOMEONE.\n'
        f"{clip_b}\t00.01.00.000\t00.01.02.500\t00.01.00.000\t00.01.03.000\tHe leaves.\n"
    )
    out = tmp_path / "out"
    make_shards("lsmdc", str(anno), str(tmp_path / "videos"), str(out), progress=False)
    samples = _read(out)
    key_a = "0001_American_Beauty_00_00_51_926-00_00_54_129"
    assert sorted(samples) == sorted([key_a, "0001_American_Beauty_00_01_00_000-00_01_02_500"])
    assert samples[key_a]["txt"] == 'SOMEONE says "hi" to SOMEONE.' and samples[key_a]["frames"] == 8
    assert samples[key_a]["json"]["source_id"] == clip_a


def test_webvid_csv_with_resize(tmp_path):
    _mp4(tmp_path / "videos" / "001_050" / "31353427.mp4", seed=6)
    anno = tmp_path / "results_2M_val.csv"
    with open(anno, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        writer.writerow(["31353427", "https://example/x.mp4", "PT00H00M01S", "001_050", "Tourists, walking."])
    out = tmp_path / "out"
    make_shards("webvid", str(anno), str(tmp_path / "videos"), str(out), resize=16, progress=False)
    sample = next(iter(wds.WebDataset(str(out / "00000.tar"), shardshuffle=False)))
    assert sample["txt"] == b"Tourists, walking."
    with av.open(io.BytesIO(sample["mp4"])) as container:  # decord mis-reads 16 px wide frames
        stream = container.streams.video[0]
        assert (stream.height, stream.width) == (16, 16)
    assert json.loads(sample["json"])["page_dir"] == "001_050"


def test_folder_with_sidecars_reencode_and_bad_files(tmp_path):
    videos = tmp_path / "videos"
    _mp4(videos / "a" / "one.mp4", seed=7)
    (videos / "a" / "one.txt").write_text("first caption\n\nsecond caption\n")
    _mp4(videos / "two.mp4", seed=8)  # no sidecar
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    (videos / "broken.txt").write_text("never written")
    _mp4(videos / "latin.mp4", seed=9)
    (videos / "latin.txt").write_bytes(b"caf\xe9")
    out = tmp_path / "out"
    summary = make_shards("folder", None, str(videos), str(out), fps=4, progress=False)
    assert summary["written"] == 1
    assert summary["failures"] == {"no_caption": 2, "unreadable_video": 1}
    samples = _read(out)
    assert list(samples) == ["a_one"]
    assert samples["a_one"]["json"]["captions"] == ["first caption", "second caption"]
    assert "captions_by_language" not in samples["a_one"]["json"]  # a sidecar's language is unknown
    assert samples["a_one"]["frames"] == 4  # 1 s at 8 fps re-encoded at 4 fps
    assert _failed(out) == {"two": "no_caption", "broken": "unreadable_video", "latin": "no_caption"}


def test_resume_keeps_complete_shards_and_rejects_other_settings(tmp_path):
    videos = tmp_path / "videos"
    for i in range(4):
        _mp4(videos / f"c{i}.mp4", seed=i)
        (videos / f"c{i}.txt").write_text(f"clip {i}")
    out = tmp_path / "out"
    first = make_shards("folder", None, str(videos), str(out), samples_per_shard=1, progress=False)
    assert first["shards"] == 4 and first["skipped_shards"] == 0
    before = open(out / "00002.tar", "rb").read()
    os.remove(out / "00002_stats.json")  # as if killed between the tar's rename and its stats
    (out / "00003.tar").unlink()
    again = make_shards("folder", None, str(videos), str(out), samples_per_shard=1, progress=False)
    assert again["skipped_shards"] == 2 and again["written"] == 2
    assert open(out / "00002.tar", "rb").read() == before  # same clips, same bytes
    assert len(_read(out)) == 4
    with pytest.raises(ValueError, match="other settings"):
        make_shards("folder", None, str(videos), str(out), samples_per_shard=2, progress=False)


def test_cli_with_parallel_workers(tmp_path, capsys):
    videos = tmp_path / "videos"
    for i in range(3):
        _mp4(videos / f"c{i}.mp4", seed=i)
        (videos / f"c{i}.txt").write_text(f"clip {i}")
    out = tmp_path / "out"
    main(
        [
            "--source",
            "folder",
            "--videos",
            str(videos),
            "--out",
            str(out),
            "--samples-per-shard",
            "1",
            "--workers",
            "2",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 3 and summary["shards"] == 3
    assert {k: v["txt"] for k, v in _read(out).items()} == {f"c{i}": f"clip {i}" for i in range(3)}
    with pytest.raises(SystemExit, match="annotations is required"):
        main(["--source", "webvid", "--videos", str(videos), "--out", str(tmp_path / "w")])
