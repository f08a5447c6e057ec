"""Fuzz: 200 samples with random corruption go through DataLoader workers; nothing is lost, nothing dies."""

import os
import random

import numpy as np
import pytest
import webdataset as wds

from data.decoders import DECODERS
from data.loader import build_loader
from data.pipeline import build_dataset
from data.video_io import encode_mp4

NUM, PER_SHARD = 200, 50
KINDS = (
    "good",
    "bitflip_mp4",
    "truncated_mp4",
    "empty_mp4",
    "zero_frame_mp4",
    "empty_txt",
    "latin1_txt",
    "mp4_named_avi",
    "txt_named_text",
    "no_mp4",
)
# What the pipeline must call each corruption that cannot be used (bit flips may still decode).
REASONS = {
    "truncated_mp4": "decode_error",
    "empty_mp4": "decode_error",
    "zero_frame_mp4": "decode_error",
    "empty_txt": "empty_caption",
    "latin1_txt": "bad_caption_encoding",
    "mp4_named_avi": "missing_video",
    "txt_named_text": "missing_caption",
    "no_mp4": "missing_video",
}


def _zero_frame_mp4(mp4: bytes) -> bytes:
    """The container header (ftyp) alone: an mp4 that announces no frames at all."""
    return mp4[: int.from_bytes(mp4[:4], "big")]


def _corrupt_shards(out) -> tuple[list[str], dict[str, str]]:
    rng = random.Random(1234)
    clips = [encode_mp4(np.full((4, 32, 32, 3), 20 + 11 * i, np.uint8)) for i in range(8)]
    kinds: dict[str, str] = {}
    paths = []
    for shard in range(NUM // PER_SHARD):
        path = os.path.join(out, f"{shard:05d}.tar")
        with wds.TarWriter(path) as tar:
            for i in range(shard * PER_SHARD, (shard + 1) * PER_SHARD):
                key, kind = f"{i:06d}", rng.choice(KINDS)
                kinds[key] = kind
                mp4, txt = bytearray(clips[i % 8]), f"caption {i}".encode()
                if kind == "bitflip_mp4":
                    for _ in range(rng.randint(1, 20)):
                        mp4[rng.randrange(len(mp4))] ^= 1 << rng.randrange(8)
                elif kind == "truncated_mp4":
                    mp4 = mp4[: rng.randrange(len(mp4) // 2)]
                elif kind == "empty_mp4":
                    mp4 = b""
                elif kind == "zero_frame_mp4":
                    mp4 = _zero_frame_mp4(bytes(mp4))
                elif kind == "empty_txt":
                    txt = b" \n"
                elif kind == "latin1_txt":
                    txt = "café".encode("latin-1")
                sample = {"__key__": key, "mp4": bytes(mp4), "txt": txt}
                if kind == "mp4_named_avi":
                    sample["avi"] = sample.pop("mp4")
                elif kind == "txt_named_text":
                    sample["text"] = sample.pop("txt")
                elif kind == "no_mp4":
                    del sample["mp4"]
                tar.write(sample)
        paths.append(path)
    return paths, kinds


def _cut_shard(path, samples: int = 20) -> list[str]:
    """A shard of good samples cut in the middle of a member, as a crawl killed mid-write leaves it."""
    keys = [f"cut{i:03d}" for i in range(samples)]
    with wds.TarWriter(path) as tar:
        for i, key in enumerate(keys):
            tar.write(
                {"__key__": key, "mp4": encode_mp4(np.full((4, 32, 32, 3), 9 * i, np.uint8)), "txt": b"c"}
            )
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2 + 100])
    return keys


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_random_corruption_is_counted_and_every_good_sample_comes_out(tmp_path, decoder):
    """The same reasons for every decoder (`data.decoders`); the decode time limit is on, as in runs."""
    _, kinds = _corrupt_shards(tmp_path)
    cut_keys = _cut_shard(os.path.join(tmp_path, "00004.tar"))
    ds = build_dataset(
        str(tmp_path),
        num_frames=2,
        frame_size=(32, 32),
        batch_size=4,
        text_fn=None,
        shuffle_buffer=16,
        decoder=decoder,
        decode_timeout_s=30,
    )
    batches = list(build_loader(ds, num_workers=2))  # bad samples meet DataLoader worker processes
    out = [k for b in batches for k, p in zip(b.keys, b.is_padding.tolist(), strict=True) if not p]
    counts: dict[str, int] = {}
    for b in batches:
        for reason, n in b.bad_samples.items():
            counts[reason] = counts.get(reason, 0) + n

    assert len(out) == len(set(out))
    fuzzed_out = {k for k in out if k in kinds}
    assert {k for k, kind in kinds.items() if kind == "good"} <= fuzzed_out
    assert all(kinds[k] in ("good", "bitflip_mp4") for k in fuzzed_out)  # nothing broken slips through
    # the cut shard: the samples before the cut come out in order, the cut is reported
    from_cut = [k for k in out if k not in kinds]
    assert 0 < len(from_cut) < len(cut_keys) and sorted(from_cut) == cut_keys[: len(from_cut)]
    assert counts.pop("tar_error") >= 1

    expected: dict[str, int] = {}
    for key, kind in kinds.items():
        reason = REASONS.get(kind) or ("decode_error" if kind == "bitflip_mp4" and key not in out else None)
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    assert len(fuzzed_out) + sum(expected.values()) == NUM  # each of the 200 came out or has a reason
    assert len(expected) >= 5  # the corruption kinds really occurred
    # the counts are exactly those, give or take the one sample torn apart by the cut
    extra = {r: counts.get(r, 0) - expected.get(r, 0) for r in set(counts) | set(expected)}
    assert all(v >= 0 for v in extra.values()) and sum(extra.values()) <= 1, (counts, expected)
