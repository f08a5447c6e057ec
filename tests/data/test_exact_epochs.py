"""Exact epochs over ranks x workers, per-epoch shuffling, resuming from a StreamState, and no hang under DDP."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import webdataset as wds

from data.batch import VideoBatch
from data.loader import build_loader
from data.pipeline import StreamState, build_dataset
from data.shards import ShardSink
from data.video_io import encode_mp4

SIZES = (7, 3, 5, 1, 4)  # uneven on purpose: 20 samples in 5 shards
BATCH = 2


def _clip(i: int) -> bytes:
    frames = np.full((4, 32, 32, 3), (i * 37) % 200 + 20, dtype=np.uint8)
    return encode_mp4(frames)


def write_uneven_shards(out, sizes=SIZES, bad_keys=()) -> list[str]:
    """Shards of the given sizes; keys in `bad_keys` get an undecodable mp4. Every json has 2 references."""
    paths, i = [], 0
    for shard, size in enumerate(sizes):
        with ShardSink(str(out), samples_per_shard=size, start_shard=shard) as sink:
            for _ in range(size):
                key = f"{i:06d}"
                mp4 = b"broken" * 10 if key in bad_keys else _clip(i)
                sink.write(key, mp4, f"clip {i}", {"captions": [f"clip {i}", f"another {i}"]})
                i += 1
        paths += sink.paths
    return paths


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> list[str]:
    return write_uneven_shards(tmp_path_factory.mktemp("uneven"))


ALL_KEYS = sorted(f"{i:06d}" for i in range(sum(SIZES)))


def _dataset(shards, **kw):
    return build_dataset(
        shards,
        num_frames=2,
        frame_size=(32, 32),
        batch_size=BATCH,
        text_fn=None,
        shuffle_buffer=4,
        seed=7,
        **kw,
    )


def _real(batches: list[VideoBatch]) -> list[str]:
    return [k for b in batches for k, pad in zip(b.keys, b.is_padding.tolist(), strict=True) if not pad]


def _rank_epochs(shards, rank: int, monkeypatch, epochs: int = 2, workers: int = 2) -> list[list[VideoBatch]]:
    """What rank `rank` of 2 sees: ranks share nothing, so they can run one after the other here."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = build_loader(_dataset(shards), num_workers=workers)
    return [list(loader) for _ in range(epochs)]


def test_two_ranks_two_workers_every_sample_once_per_epoch(uneven, monkeypatch):
    ranks = [_rank_epochs(uneven, r, monkeypatch) for r in range(2)]
    for epoch in range(2):
        per_rank = [_real(ranks[r][epoch]) for r in range(2)]
        assert sorted(per_rank[0] + per_rank[1]) == ALL_KEYS  # exactly once over both ranks
        assert len(ranks[0][epoch]) == len(ranks[1][epoch])  # same number of batches: no hang
    # a new shard order and sample shuffle each epoch
    assert _real(ranks[0][0]) + _real(ranks[1][0]) != _real(ranks[0][1]) + _real(ranks[1][1])
    # the references travel with the batch
    batch = ranks[0][0][0]
    assert batch.references[0] == [batch.captions[0], batch.captions[0].replace("clip", "another")]
    # deterministic: the same seed gives the same stream
    assert [b.keys for b in _rank_epochs(uneven, 0, monkeypatch)[0]] == [b.keys for b in ranks[0][0]]


def test_padding_rule_repeats_batches_on_the_short_rank(uneven, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    lengths, padding = [], []
    for r in range(2):
        monkeypatch.setenv("RANK", str(r))
        loader = build_loader(_dataset(uneven), num_workers=2)
        batches = list(loader)
        lengths.append((len(loader), len(batches)))
        padding.append(sum(int(b.is_padding.all()) for b in batches))
    assert lengths[0] == lengths[1] and lengths[0][0] == lengths[0][1]
    assert min(padding) == 0  # the rank with the most planned batches never pads


def test_resume_continues_the_epoch_without_repeats(uneven, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    full = build_loader(_dataset(uneven), num_workers=2)
    whole_epoch = _real(list(full))
    assert sorted(whole_epoch) == ALL_KEYS

    first = build_loader(_dataset(uneven), num_workers=2)
    it = iter(first)
    seen = [k for _ in range(4) for k in next(it).keys]
    saved = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    assert saved["epoch"] == 0 and saved["batches"] == 4 and saved["samples"] == 8

    resumed = build_loader(_dataset(uneven, start_state=saved), num_workers=2)
    rest = _real(list(resumed))
    assert sorted(seen + rest) == ALL_KEYS
    assert len(resumed) == len(full)  # the resumed epoch ends on the same batch count
    assert resumed.state_dict()["epoch"] == 1 and resumed.state_dict()["samples"] == 20
    # a state saved right at an epoch's end rolls over to the next epoch
    at_end = build_loader(_dataset(uneven), num_workers=2)
    at_end.load_state_dict(StreamState(epoch=0, batches=len(full), ranks=1, workers=2).state_dict())
    assert sorted(_real(list(at_end))) == ALL_KEYS and at_end.state.epoch == 2


def test_resume_with_another_layout_restarts_the_epoch(uneven, monkeypatch, caplog):
    loader = build_loader(_dataset(uneven), num_workers=1)
    loader.load_state_dict(
        StreamState(epoch=3, batches=2, ranks=1, workers=2, positions={0: [4, 2]}).state_dict()
    )
    assert loader.state.epoch == 3 and loader.state.batches == 0 and "restarts" in caplog.text
    assert sorted(_real(list(loader))) == ALL_KEYS


def test_too_few_shards_for_ranks_and_workers(uneven, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="5 shards cannot feed 3 workers x 2 ranks"):
        build_loader(_dataset(uneven), num_workers=3)


def test_remote_shards_without_counts_need_epoch_samples():
    with pytest.raises(ValueError, match="sample count"):
        _dataset(["https://example.invalid/00000.tar"])


# ---------------------------------------------------------------- real DDP: gloo in spawned processes
def _ddp_rank(rank: int, world: int, port: int, shards: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    loader = build_loader(_dataset(shards), num_workers=2)
    epochs = []
    for _ in range(2):
        keys = []
        for batch in loader:
            # a collective per batch, as DDP's gradient all-reduce: uneven batch counts would hang here
            torch.distributed.all_reduce(torch.ones(1))
            keys += [k for k, p in zip(batch.keys, batch.is_padding.tolist(), strict=True) if not p]
        epochs.append(keys)
    torch.distributed.barrier()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(epochs, f)
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(240)
def test_ddp_gloo_uneven_shards_with_bad_samples_finish(tmp_path):
    shards = write_uneven_shards(tmp_path / "shards", sizes=(9, 1, 2, 1, 3), bad_keys={"000000", "000011"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # the ranks inherit the imports (seconds each on a busy machine)
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, port, shards, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(200)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung"
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    good = sorted(f"{i:06d}" for i in range(16) if i not in (0, 11))
    for epoch in range(2):
        assert sorted(ranks[0][epoch] + ranks[1][epoch]) == good


def test_plain_webdataset_sees_the_same_samples(uneven):
    """The shards used above are ordinary webdataset tars."""
    assert sorted(s["__key__"] for s in wds.WebDataset(uneven, shardshuffle=False)) == ALL_KEYS


@pytest.mark.parametrize("resampled", [True, False])
def test_resume_continues_resampled_and_cycled_streams(uneven, resampled):
    def loader(state=None):
        ds = _dataset(uneven, resampled=resampled, epoch_samples=12, start_state=state)
        return build_loader(ds, num_workers=0)

    full = loader()
    epoch = [b.keys for b in full]
    assert len(epoch) == len(full) == 6 and not any(b.is_padding.any() for b in loader())
    first = loader()
    it = iter(first)
    head = [next(it).keys for _ in range(2)]
    rest = [b.keys for b in loader(first.state_dict())]
    assert head + rest == epoch  # one worker: the resumed stream is the same stream
