"""A decode that blocks cannot stall a worker: it is killed after `decode_timeout_s` and counted."""

import faulthandler
import hashlib
import os
import signal
import time

import numpy as np
import pytest
import webdataset as wds

import data.decoders.decord_backend as backend
from data.decode_guard import DecodeTimeout, IsolatedDecoder
from data.loader import build_loader
from data.pipeline import build_dataset
from data.video_io import VideoDecodeError, decode_frames, encode_mp4
from tests.data.blocking_decoder import blocking


def _clip(value: int) -> bytes:
    return encode_mp4(np.full((6, 32, 32, 3), value, np.uint8))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_blocked_decode_is_killed_and_the_next_one_works(monkeypatch):
    good, hung = _clip(90), _clip(180)
    monkeypatch.setattr(backend, "decode_frames", blocking(hashlib.sha1(hung).hexdigest()))
    decoder = IsolatedDecoder(timeout_s=1.0)
    try:
        want = decode_frames(good, 4, (32, 32))
        assert decoder(good, 4, (32, 32)).equal(want)  # same frames as decoding in this process
        first_child = decoder._pid
        start = time.monotonic()
        with pytest.raises(DecodeTimeout, match="after 1 s"):
            decoder(hung, 4, (32, 32))
        assert 1.0 <= time.monotonic() - start < 10  # the limit, not the hour the decode would take
        assert not _alive(first_child)  # killed and reaped
        assert decoder(good, 4, (32, 32)).equal(want)  # a fresh child serves the next sample
        assert decoder._pid != first_child
        with pytest.raises(VideoDecodeError, match="cannot open"):  # bad data: the usual error
            decoder(b"not a video" * 20, 4, (32, 32))
        os.kill(decoder._pid, 9)  # a decoder that dies (a segfault would) between samples
        assert decoder(good, 4, (32, 32)).equal(want)
    finally:
        decoder.close()


def test_zero_or_negative_limit_is_refused():
    with pytest.raises(ValueError, match="> 0"):
        IsolatedDecoder(0)


def test_pipeline_workers_skip_the_blocked_sample_count_it_and_go_on(tmp_path, monkeypatch):
    """Two DataLoader workers, one blocked sample: every other sample comes out, one decode_timeout."""
    clips = {f"{i:04d}": _clip(10 * i) for i in range(16)}
    paths = []
    for shard in range(2):
        path = str(tmp_path / f"{shard:05d}.tar")
        with wds.TarWriter(path) as tar:
            for key in list(clips)[shard * 8 : (shard + 1) * 8]:
                tar.write({"__key__": key, "mp4": clips[key], "txt": f"clip {key}".encode()})
        paths.append(path)
    monkeypatch.setattr(backend, "decode_frames", blocking(hashlib.sha1(clips["0005"]).hexdigest()))
    ds = build_dataset(
        paths, num_frames=2, frame_size=(32, 32), batch_size=4, text_fn=None, decode_timeout_s=1.5
    )
    start = time.monotonic()
    batches = list(build_loader(ds, num_workers=2))
    assert time.monotonic() - start < 60
    keys = [k for b in batches for k, pad in zip(b.keys, b.is_padding.tolist(), strict=True) if not pad]
    assert sorted(keys) == sorted(set(clips) - {"0005"})
    counts = {}
    for b in batches:
        for reason, n in b.bad_samples.items():
            counts[reason] = counts.get(reason, 0) + n
    assert counts == {"decode_timeout": 1}


def test_a_decoder_that_crashes_costs_the_sample_not_the_caller(monkeypatch):
    good, fatal = _clip(60), _clip(120)
    decode = backend.decode_frames

    def segfaulting(mp4, *args, **kwargs):
        if mp4 == fatal:
            # The fork inherits pytest's fault handler, which under xdist prints this crash's Python
            # traceback into the run's log as if the suite had crashed.
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)  # what a native decoder bug does to its process
        return decode(mp4, *args, **kwargs)

    monkeypatch.setattr(backend, "decode_frames", segfaulting)
    decoder = IsolatedDecoder(timeout_s=5.0)
    try:
        with pytest.raises(VideoDecodeError, match="died while decoding"):
            decoder(fatal, 4, (32, 32))
        assert decoder(good, 4, (32, 32)).shape == (4, 3, 32, 32)
    finally:
        decoder.close()
