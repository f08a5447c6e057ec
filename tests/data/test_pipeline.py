import os
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds

from batch_contract import IGNORE_INDEX
from data.batch import VideoBatch
from data.loader import build_loader
from data.pipeline import build_dataset, expand_shards
from data.shards import ShardSink
from data.synthvid import generate_clip
from data.video_io import encode_mp4

from .conftest import FRAMES, NUM_CLIPS, SIZE


def word_ids(caption: str) -> dict[str, torch.Tensor]:
    """A stand-in tokenizer: one id per word (its length), so sequence lengths differ by caption."""
    ids = torch.tensor([len(w) for w in caption.split()])
    return {"input_ids": ids, "labels": ids.clone()}


def _keys(dataset) -> list[str]:
    """Keys of the real rows (padding rows repeat earlier ones so that ranks stay in step)."""
    return [
        k
        for batch in dataset
        for k, pad in zip(batch.keys, batch.is_padding.tolist(), strict=True)
        if not pad
    ]


def test_batches_have_right_shapes_and_padding(synth_shards):
    ds = build_dataset(synth_shards, num_frames=4, frame_size=(SIZE, SIZE), batch_size=5, text_fn=word_ids)
    batches = list(ds)
    assert [b.batch_size for b in batches] == [5, 5, 5, 5, 4]
    batch = batches[0]
    assert isinstance(batch, VideoBatch) and batch.num_frames == 4
    assert batch.frames.shape == (5, 4, 3, SIZE, SIZE) and batch.frames.dtype == torch.uint8
    assert batch.input_ids.dtype == batch.labels.dtype == batch.attention_mask.dtype == torch.long
    for row, caption in enumerate(batch.captions):
        n = len(caption.split())
        assert batch.input_ids[row, :n].tolist() == [len(w) for w in caption.split()]
        assert (batch.input_ids[row, n:] == 0).all() and (batch.labels[row, n:] == IGNORE_INDEX).all()
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
    assert batch.metas[0]["caption"] == batch.captions[0] and batch.bad_samples == {}
    moved = batch.to("cpu")
    assert moved.frames.device.type == "cpu" and moved.keys == batch.keys


def test_eval_mode_without_text_fn(synth_shards):
    batch = next(
        iter(build_dataset(synth_shards[0], num_frames=2, frame_size=(16, 16), batch_size=3, text_fn=None))
    )
    assert batch.input_ids is None and batch.labels is None and batch.attention_mask is None
    assert batch.frames.shape == (3, 2, 3, 16, 16) and all(batch.captions)


def test_shard_spec_forms(synth_shards):
    directory = os.path.dirname(synth_shards[0])
    assert expand_shards(directory) == synth_shards
    assert expand_shards(os.path.join(directory, "{00000..00003}.tar")) == synth_shards
    with pytest.raises(ValueError, match="not found"):
        expand_shards(os.path.join(directory, "missing.tar"))
    with pytest.raises(ValueError, match="no shards"):
        expand_shards([])


def test_same_seed_same_order_and_shuffle_changes_it(synth_shards):
    def order(seed):
        ds = build_dataset(
            synth_shards,
            num_frames=1,
            frame_size=(16, 16),
            batch_size=4,
            text_fn=None,
            shuffle_buffer=8,
            seed=seed,
        )
        return _keys(ds)

    first = order(0)
    assert first == order(0)
    assert sorted(first) == [f"{i:09d}" for i in range(NUM_CLIPS)]
    assert first != order(1) and first != sorted(first)


def _write_bad_shard(out_dir) -> list[str]:
    """A shard of 6 samples: 3 good, one corrupt mp4, one empty caption, one non-UTF-8 caption,
    then a sample without mp4 written with the raw TarWriter."""
    good = [encode_mp4(generate_clip(i, seed=0, size=SIZE, num_frames=FRAMES)[0]) for i in range(3)]
    with ShardSink(str(out_dir), samples_per_shard=100) as sink:
        sink.write("000000000", good[0], "a red circle moves up")
        sink.write("000000001", b"\x00\x01garbage" * 20, "a blue square moves down")
        sink.write("000000002", good[1], "   ")
        sink.write("000000003", good[2], "a green circle moves up")
    path = sink.paths[0]
    # append two hand-made samples (no video; caption not utf-8) in a second shard
    with wds.TarWriter(os.path.join(out_dir, "00001.tar")) as tw:
        tw.write({"__key__": "000000004", "txt": b"a caption without video"})
        tw.write({"__key__": "000000005", "mp4": good[0], "txt": b"\xff\xfe bad"})
        tw.write({"__key__": "000000006", "mp4": good[0], "txt": b"a yellow circle moves up"})
    return [path, os.path.join(out_dir, "00001.tar")]


def test_bad_samples_are_skipped_and_counted(tmp_path):
    shards = _write_bad_shard(tmp_path)
    batches = list(
        build_dataset(shards, num_frames=2, frame_size=(SIZE, SIZE), batch_size=2, text_fn=word_ids)
    )
    assert _keys(batches) == ["000000000", "000000003", "000000006"]
    total = {}
    for batch in batches:
        for reason, n in batch.bad_samples.items():
            total[reason] = total.get(reason, 0) + n
    assert total == {"decode_error": 1, "empty_caption": 1, "missing_video": 1, "bad_caption_encoding": 1}


def test_bad_sample_counts_survive_worker_processes(tmp_path):
    ds = build_dataset(
        _write_bad_shard(tmp_path), num_frames=2, frame_size=(SIZE, SIZE), batch_size=2, text_fn=word_ids
    )
    batches = list(build_loader(ds, num_workers=2))
    assert sorted(_keys(batches)) == ["000000000", "000000003", "000000006"]
    assert sum(sum(b.bad_samples.values()) for b in batches) == 4


def test_truncated_tar_does_not_crash(synth_shards, tmp_path):
    broken = tmp_path / "00000.tar"
    data = open(synth_shards[0], "rb").read()
    broken.write_bytes(data[: len(data) // 2])
    shutil.copy(synth_shards[1], tmp_path / "00001.tar")
    batches = list(
        build_dataset(str(tmp_path), num_frames=2, frame_size=(16, 16), batch_size=4, text_fn=None)
    )
    keys = _keys(batches)
    assert set(keys) >= {f"{i:09d}" for i in range(6, 12)}  # the intact shard is read in full
    reasons = {r for b in batches for r in b.bad_samples}
    assert "tar_error" in reasons


def test_loader_refuses_to_starve_workers(synth_shards, monkeypatch):
    ds = build_dataset(synth_shards[:1], num_frames=1, frame_size=(16, 16), batch_size=2, text_fn=None)
    with pytest.raises(ValueError, match="shards cannot feed"):
        build_loader(ds, num_workers=2)
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="8 ranks"):
        build_loader(
            build_dataset(synth_shards, num_frames=1, frame_size=(16, 16), batch_size=2, text_fn=None), 0
        )
    resampled = build_dataset(
        synth_shards[:1],
        num_frames=1,
        frame_size=(16, 16),
        batch_size=2,
        text_fn=None,
        resampled=True,
        epoch_samples=4,
    )
    assert build_loader(resampled, num_workers=0) is not None  # resampling never starves


def test_epoch_samples_caps_resampled_stream(synth_shards):
    ds = build_dataset(
        synth_shards,
        num_frames=1,
        frame_size=(16, 16),
        batch_size=4,
        text_fn=None,
        resampled=True,
        epoch_samples=10,
        seed=3,
    )
    first = [b.keys for b in ds]
    assert len(first) == 3  # ceil(10 / 4) batches on one rank without workers
    again = build_dataset(
        synth_shards,
        num_frames=1,
        frame_size=(16, 16),
        batch_size=4,
        text_fn=None,
        resampled=True,
        epoch_samples=10,
        seed=3,
    )
    assert [b.keys for b in again] == first


def test_non_resampled_epoch_samples_cycles_shards(synth_shards):
    ds = build_dataset(
        synth_shards[:1], num_frames=1, frame_size=(16, 16), batch_size=4, text_fn=None, epoch_samples=16
    )
    keys = _keys(ds)
    assert len(keys) == 16 and len(set(keys)) == 6


def test_frames_decode_to_clip_content(synth_shards):
    batch = next(
        iter(
            build_dataset(
                synth_shards[0], num_frames=FRAMES, frame_size=(SIZE, SIZE), batch_size=1, text_fn=None
            )
        )
    )
    original = generate_clip(0, seed=0, size=SIZE, num_frames=FRAMES)[0]
    decoded = batch.frames[0].permute(0, 2, 3, 1).numpy().astype(np.int16)
    assert np.abs(decoded - original).mean() < 12  # lossy H.264 but the same picture


def test_unopenable_shard_is_named_and_counted(synth_shards, tmp_path, caplog):
    shutil.copy(synth_shards[0], tmp_path / "00000.tar")
    (tmp_path / "00001.tar").write_bytes(b"this is not a tar archive" * 40)
    batches = list(
        build_dataset(str(tmp_path), num_frames=1, frame_size=(16, 16), batch_size=4, text_fn=None)
    )
    assert len(_keys(batches)) == 6
    assert sum(b.bad_samples.get("tar_error", 0) for b in batches) == 1
    assert "00001.tar" in caplog.text


def test_frames_by_fps(synth_shards):
    ds = build_dataset(
        synth_shards[0], num_frames=2, frame_size=(SIZE, SIZE), batch_size=1, text_fn=None, sample_fps=100.0
    )
    batch = next(iter(ds))
    original = generate_clip(0, seed=0, size=SIZE, num_frames=FRAMES)[0]
    # 100 fps on an 8 fps clip: two neighbouring source frames around the middle (3 and 4)
    decoded = batch.frames[0].permute(0, 2, 3, 1).numpy().astype(np.int16)
    assert np.abs(decoded[0] - original[3]).mean() < 12 and np.abs(decoded[1] - original[4]).mean() < 12
