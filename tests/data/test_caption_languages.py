"""Several languages' references: VATEX's enCap and chCap through make_shards, picked by the pipeline."""

import glob
import json
import os

import numpy as np
import pytest
import webdataset as wds

from data.languages import check_language_code, references_in
from data.make_shards import make_shards
from data.pipeline import build_dataset
from data.samples import BadSampleCounter, DecodeSample
from data.sources.common import Clip
from data.video_io import encode_mp4

EN = {"Ab_c-1_000000_000001": ["a man rides a bike", "someone cycles"], "Zz9_000000_000001": ["a dog runs"]}
ZH = {"Ab_c-1_000000_000001": ["一个男人在骑自行车", "有人骑车"], "Zz9_000000_000001": []}


def _mp4(path, seed: int) -> None:
    base = np.random.default_rng(seed).integers(30, 200, size=3)
    frames = np.broadcast_to(base[None, None, None, :], (8, 32, 32, 3)).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_mp4(frames, fps=8))


def make_vatex_shards(root) -> str:
    """Shards of two VATEX clips: one with English and Chinese references, one whose chCap is empty."""
    for seed, key in enumerate(EN):
        _mp4(root / "videos" / f"{key}.mp4", seed)
    entries = [{"videoID": k, "enCap": EN[k], "chCap": ZH[k]} for k in EN]
    (root / "vatex_training_v1.0.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    out = root / "shards"
    make_shards(
        "vatex", str(root / "vatex_training_v1.0.json"), str(root / "videos"), str(out), progress=False
    )
    return str(out)


@pytest.fixture(scope="module")
def vatex_shards(tmp_path_factory):
    return make_vatex_shards(tmp_path_factory.mktemp("vatex"))


def _jsons(out) -> dict[str, dict]:
    urls = sorted(glob.glob(os.path.join(out, "*.tar")))
    return {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)}


def test_both_languages_survive_sharding(vatex_shards):
    metas = _jsons(vatex_shards)
    both = metas["Ab_c-1_000000_000001"]
    assert both["captions_by_language"] == {
        "en": EN["Ab_c-1_000000_000001"],
        "zh": ZH["Ab_c-1_000000_000001"],
    }
    assert both["captions"] == EN["Ab_c-1_000000_000001"]  # the default references stay English
    # A language without captions is left out, not stored empty.
    assert metas["Zz9_000000_000001"]["captions_by_language"] == {"en": ["a dog runs"]}


def _batches(shards, language):
    ds = build_dataset(
        str(shards), num_frames=2, frame_size=(16, 16), batch_size=2, text_fn=None, caption_language=language
    )
    return list(ds)


def test_caption_language_picks_the_references_and_skips_samples_without_them(vatex_shards):
    (zh,) = _batches(vatex_shards, "zh")
    assert zh.keys == ["Ab_c-1_000000_000001"]
    assert zh.captions == ["一个男人在骑自行车"] and zh.references == [ZH["Ab_c-1_000000_000001"]]
    assert zh.bad_samples == {"missing_language": 1}  # Zz9: counted, not given its English ones

    (default,) = _batches(vatex_shards, None)
    assert sorted(default.keys) == sorted(EN) and default.bad_samples == {}
    assert {k: r for k, r in zip(default.keys, default.references, strict=True)} == EN

    (en,) = _batches(vatex_shards, "en")
    assert {k: r for k, r in zip(en.keys, en.references, strict=True)} == EN


def test_language_codes_are_checked():
    with pytest.raises(ValueError, match="caption_language: 'zh-CN' is not an ISO 639-1"):
        build_dataset(
            [], num_frames=1, frame_size=(8, 8), batch_size=1, text_fn=None, caption_language="zh-CN"
        )
    with pytest.raises(ValueError, match="clip 'k': 'chinese' is not an ISO 639-1"):
        Clip("k", None, ["a"], "k", translations={"chinese": ["一"]})
    assert check_language_code("zh", "x") == "zh"
    assert references_in({"captions_by_language": {"zh": [" ", 3]}}, "zh") is None
    assert references_in({"captions_by_language": ["zh"]}, "zh") is None


@pytest.mark.parametrize(
    "json_bytes",
    [
        None,  # no json at all
        b"\xff not utf-8",
        b"{broken",
        b'["not", "a", "mapping"]',
        json.dumps({"captions": ["a man"], "captions_by_language": {"zh": "一个男人"}}).encode(),
        json.dumps({"captions_by_language": {"zh": ["", "  "], "en": ["a man"]}}).encode(),
    ],
)
def test_a_sample_without_usable_references_in_the_language_is_counted_not_decoded(json_bytes):
    bad = BadSampleCounter()
    decode = DecodeSample(2, (16, 16), None, bad, caption_language="zh")
    sample = {"__key__": "k", "__url__": "u.tar", "mp4": b"not a video", "txt": b"a man"}
    if json_bytes is not None:
        sample["json"] = json_bytes
    assert decode(sample) is None
    assert bad.drain() == {"missing_language": 1}  # the mp4 was never decoded (it would be decode_error)
