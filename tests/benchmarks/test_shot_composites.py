import numpy as np
import pytest

from benchmarks.frame_selection import peer_picks
from benchmarks.shot_composites import LONG, MIXES, SHORT, composites, make_composite


def _sources() -> dict[str, np.ndarray]:
    """Three long shots and two short ones, each frame filled with its shot's number and position."""
    lengths = {"a/0": 130, "b/0": 120, "c/0": 40, "c/1": 50, "c/2": 20}
    sources = {}
    for index, (name, length) in enumerate(lengths.items()):
        frames = np.zeros((length, 4, 4, 3), dtype=np.uint8)
        frames[..., 0] = index
        frames[..., 1] = np.arange(length)[:, None, None]
        sources[name] = frames
    return sources


@pytest.mark.parametrize("mix", MIXES)
def test_composites_hold_pieces_of_their_sources_with_cuts_at_the_starts(mix):
    sources = _sources()
    names = sorted(sources)
    for seed in range(6):
        clip = make_composite(sources, mix, seed)
        lengths = np.diff([*clip.starts, len(clip.frames)])
        assert clip.starts[0] == 0 and (lengths > 0).all()
        assert all(a != b for a, b in zip(clip.sources[:-1], clip.sources[1:], strict=True))
        for start, length, source in zip(clip.starts, lengths, clip.sources, strict=True):
            piece = clip.frames[start : start + length]
            assert (piece[..., 0] == names.index(source)).all()  # one source shot per shot
            assert (np.diff(piece[:, 0, 0, 1].astype(int)) == 1).all()  # consecutive frames of it
        short = lengths[(lengths >= SHORT[0]) & (lengths <= SHORT[1])]
        if mix == "short":
            assert len(short) == len(lengths) and 6 <= len(lengths) <= 8
        if mix == "long_short":
            assert ((lengths >= LONG[0]) & (lengths <= LONG[1])).sum() == 1 and len(short) == len(lengths) - 1
        assert clip.shot_of(clip.starts).tolist() == list(range(len(lengths)))
        assert clip.shot_of(clip.starts[1:] - 1).tolist() == list(range(len(lengths) - 1))


def test_composites_are_fixed_by_seed_and_differ_across_seeds():
    sources = _sources()
    first, again = composites(sources, range(3)), composites(sources, range(3))
    assert [c.name for c in first] == [f"{m}/{s}" for m in MIXES for s in range(3)]
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(first, again, strict=True))
    assert len({tuple(c.starts) for c in first}) > 1


def test_bad_mix_or_too_short_sources_are_refused():
    with pytest.raises(ValueError, match="unknown shot-length mix 'long'"):
        make_composite(_sources(), "long", 0)
    with pytest.raises(ValueError, match="long_short/0: no source shot of >= "):
        make_composite({"a/0": np.zeros((20, 4, 4, 3), np.uint8)}, "long_short", 0)


def test_peer_picks_one_candidate_per_detected_shot_then_fills_by_coverage():
    source = np.arange(0, 64, 2)  # 32 candidates over 64 frames
    shots = [(0, 40), (40, 44), (44, 64)]
    assert peer_picks(shots, source, 3).tolist() == [10, 21, 27]  # middles 19.5, 41.5, 53.5
    assert peer_picks(shots, source, 2).tolist() == [10, 27]  # the two longest shots
    five = peer_picks([(0, 64)], source, 5)
    assert len(set(five.tolist())) == 5 and five.tolist() == sorted(five.tolist())
