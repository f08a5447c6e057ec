"""The HTML report's attention maps: collected by the evaluation pass for the report's clips only,
drawn per clip next to the temporal gates, on real SynthVid shards and a tiny temporal-LoRA model;
the gates' AUROC for event frames and spread among the evaluation's scores."""

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from data.synthvid import write_synthvid
from data.synthvid_grammar import caption_corpus
from models.adapters import apply_adapter
from models.loading import load_model
from models.modeling_video_llama import VideoLlamaForConditionalGeneration
from models.presets import create_pretrained
from models.processor import VideoLlamaProcessor
from trainer.config import load_config
from trainer.distributed import DistInfo
from trainer.evaluation.eval_pass import evaluate
from trainer.evaluation.gate_metrics import event_frame_labels
from trainer.evaluation.html_report import EVENT_COLOUR, attention_heatmap, gate_heatmap, render_report
from trainer.run_setup import build_selector

K = 4
NUM_CLIPS = 5
REPORT_CLIPS = 3  # with batches of 2: the first two batches hold them, the third none


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    base = create_pretrained("tiny", root / "base", caption_corpus(), seed=0)
    shards = root / "shards"
    write_synthvid(str(shards), task="order", num=NUM_CLIPS, seed=0, size=64, num_frames=16)
    cfg = load_config(
        None,
        [
            f"model.name_or_path={base}",
            f"data.eval_shards={shards}",
            "data.num_candidate_frames=8",
            "data.frame_size=64",
            f"selector.k={K}",
            f"eval.num_samples={NUM_CLIPS}",
            "eval.batch_size=2",
            "eval.max_new_tokens=3",
            "eval.forced_choice=false",
            "eval.meteor=false",
        ],
    )
    cfg.eval.controls = []
    model = load_model(base, quantization="none", compute_dtype=torch.float32)
    model = apply_adapter(model, "temporal_lora", r=4)
    return model, VideoLlamaProcessor.from_pretrained(base), cfg


def _evaluate(tiny_eval, monkeypatch, keep_frames):
    """`evaluate` with ``keep_frames``; returns (result, number of video_frame_attention calls)."""
    model, processor, cfg = tiny_eval
    calls = []
    original = VideoLlamaForConditionalGeneration.video_frame_attention

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VideoLlamaForConditionalGeneration, "video_frame_attention", counted)
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    result = evaluate(
        model, processor, build_selector(cfg), cfg, dist, torch.float32, keep_frames=keep_frames
    )
    return result, calls


def _images(html: str, alt: str) -> list[Image.Image]:
    found = re.findall(rf"<img alt='{alt}' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", html)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_report_clips_get_attention_maps_drawn_next_to_their_gates(tiny_eval, monkeypatch):
    result, calls = _evaluate(tiny_eval, monkeypatch, REPORT_CLIPS)
    assert calls == [2, 2]  # the two batches that hold report clips, each encoded once more
    in_report = [c for c in result.clips.values() if c.frames is not None]
    assert len(in_report) == REPORT_CLIPS
    assert all(c.attention is None for c in result.clips.values() if c.frames is None)
    for clip in in_report:
        layers, queries, frames = clip.attention.shape
        assert (layers, queries, frames) == (2, 8, K) == (2, 8, len(clip.selected))
        assert clip.attention.dtype == np.float32 and (clip.attention >= 0).all()
        np.testing.assert_allclose(clip.attention.sum(-1), 1.0, atol=1e-5)
    first, second = in_report[:2]
    assert not np.allclose(first.attention, second.attention, atol=1e-4)  # other frames, other map

    html = render_report(result.clips, result.scores, result.rankings, title="t", max_clips=REPORT_CLIPS)
    assert html.count("<div class='clip'>") == REPORT_CLIPS
    assert html.count("<div class='maps'><p>temporal gates") == REPORT_CLIPS  # gates, then attention
    # order clips: each report clip whose kept frames show an event has them outlined on its gates
    shown = [event_frame_labels(c.meta, c.selected, len(c.frames)) for c in in_report]
    with_events = sum(bool(labels is not None and labels.any()) for labels in shown)
    assert with_events >= 1 and html.count("(outlined: kept frames inside an event)") == with_events
    assert html.count(f"video Q-Former attention over the kept frames (uniform: 1/{K})") == REPORT_CLIPS
    attention_images = _images(html, "attention")
    assert len(attention_images) == REPORT_CLIPS and len(_images(html, "gates")) == REPORT_CLIPS
    assert all(image.width > 100 and image.height > 50 for image in attention_images)


def test_no_report_no_attention_forward(tiny_eval, monkeypatch):
    result, calls = _evaluate(tiny_eval, monkeypatch, 0)
    assert calls == []
    assert all(c.attention is None and c.frames is None for c in result.clips.values())
    # Temporal adapter on order clips (events in the ground truth): the gates are scored.
    layers = next(iter(result.clips.values())).gates
    assert 0.0 <= result.scores["gate_auroc"] <= 1.0 and result.chance["gate_auroc"] == 0.5
    assert {f"gate_auroc/{name}" for name in layers} <= set(result.scores)
    assert result.scores["gate_spread"] > 0.0


def test_heatmap_refuses_a_map_that_does_not_match_the_kept_frames():
    attention = np.full((2, 8, 4), 0.25, dtype=np.float32)
    assert attention_heatmap(attention, [0, 3, 5, 7]).width > 0
    with pytest.raises(ValueError, match=r"\[layers, queries, 3 kept frames\], got shape \(2, 8, 4\)"):
        attention_heatmap(attention, [0, 3, 5])


def test_gate_heatmap_outlines_the_event_frames():
    """The kept frames inside an event get an outline of `EVENT_COLOUR`; without ground truth none."""
    gates = {"vision_model.encoder.layers.0.mlp.fc1": [0.2, 0.9, 0.8, 0.1], "llm.x": [0.5] * 4}
    red = tuple(int(EVENT_COLOUR[i : i + 2], 16) for i in (1, 3, 5))

    def outline_pixels(image):
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        return int((np.abs(pixels - red).sum(axis=1) < 40).sum())

    assert outline_pixels(gate_heatmap(gates)) == 0
    one, two = (
        gate_heatmap(gates, [False, True, False, False]),
        gate_heatmap(gates, [False, True, True, False]),
    )
    assert 0 < outline_pixels(one) < outline_pixels(two)
    with pytest.raises(ValueError, match=r"events must be 4 booleans"):
        gate_heatmap(gates, [True, False])
