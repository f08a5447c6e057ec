"""The converter on a checkpoint written in the original Video-LLaMA key layout.

The original names are spelled out here as the original code defines them (BertLMHeadModel-style
video Q-Former under `video_Qformer.bert`), independently of the converter's rename rules."""

import json

import pytest
import torch

from models.convert_video_llama import convert_checkpoint, main
from models.modeling_video_llama import VideoLlamaForConditionalGeneration
from models.processor import VideoLlamaProcessor


def original_layout(config, num_layers=2, generator=None):
    """(checkpoint dict, {original key: our key}) of a video branch at the tiny preset's sizes."""
    d, ffn = config.video_qformer_config.hidden_size, config.video_qformer_config.intermediate_size
    llm = config.text_config.hidden_size
    g = generator or torch.Generator().manual_seed(0)
    pairs = {
        "video_Qformer.bert.embeddings.LayerNorm.weight": ("video_qformer.layernorm.weight", (d,)),
        "video_Qformer.bert.embeddings.LayerNorm.bias": ("video_qformer.layernorm.bias", (d,)),
        "video_query_tokens": ("video_query_tokens", (1, config.num_video_query_tokens, d)),
        "video_frame_position_embedding.weight": ("frame_position_embedding.weight", (config.max_frames, d)),
        "llama_proj.weight": ("video_projection.weight", (llm, d)),
        "llama_proj.bias": ("video_projection.bias", (llm,)),
    }
    for i in range(num_layers):
        src, dst = f"video_Qformer.bert.encoder.layer.{i}.", f"video_qformer.encoder.layer.{i}."
        for block in ("attention", "crossattention"):
            for proj in ("query", "key", "value"):
                for p, shape in (("weight", (d, d)), ("bias", (d,))):
                    pairs[f"{src}{block}.self.{proj}.{p}"] = (f"{dst}{block}.attention.{proj}.{p}", shape)
            for sub, shape in (
                ("dense.weight", (d, d)),
                ("dense.bias", (d,)),
                ("LayerNorm.weight", (d,)),
                ("LayerNorm.bias", (d,)),
            ):
                pairs[f"{src}{block}.output.{sub}"] = (f"{dst}{block}.output.{sub}", shape)
        pairs[f"{src}intermediate_query.dense.weight"] = (f"{dst}intermediate_query.dense.weight", (ffn, d))
        pairs[f"{src}intermediate_query.dense.bias"] = (f"{dst}intermediate_query.dense.bias", (ffn,))
        for sub, shape in (
            ("dense.weight", (d, ffn)),
            ("dense.bias", (d,)),
            ("LayerNorm.weight", (d,)),
            ("LayerNorm.bias", (d,)),
        ):
            pairs[f"{src}output_query.{sub}"] = (f"{dst}output_query.{sub}", shape)
    state = {key: torch.randn(shape, generator=g) for key, (_, shape) in pairs.items()}
    return state, {key: ours for key, (ours, _) in pairs.items()}


@pytest.fixture
def base(tiny_ckpt):
    return VideoLlamaForConditionalGeneration.from_pretrained(tiny_ckpt)


def test_original_checkpoint_converts_every_tensor(tiny_ckpt, base, tmp_path):
    state, names = original_layout(base.config)
    # what a LAVIS-style save also holds: buffers, and parameters of branches this model has not
    state["video_Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    state["audio_Qformer.bert.embeddings.LayerNorm.weight"] = torch.ones(64)
    state["audio_llama_proj.weight"] = torch.ones(128, 64)
    torch.save({"model": state, "epoch": 9}, tmp_path / "checkpoint_9.pth")

    conversion = convert_checkpoint(tmp_path / "checkpoint_9.pth", tiny_ckpt, tmp_path / "out")
    assert conversion.missing == []
    assert sorted(conversion.unexpected) == [
        "audio_Qformer.bert.embeddings.LayerNorm.weight",
        "audio_llama_proj.weight",
    ]
    assert conversion.ignored == ["video_Qformer.bert.embeddings.position_ids"]

    converted = VideoLlamaForConditionalGeneration.from_pretrained(tmp_path / "out")
    params = dict(converted.named_parameters())
    for original, ours in names.items():
        assert torch.equal(params[ours], state[original]), original
    # every video-branch parameter came from the checkpoint; the rest is the base's
    branch = [
        n for n in params if n.startswith(("video_qformer", "video_query", "frame_position", "video_proj"))
    ]
    assert sorted(branch) == sorted(names.values())
    torch.testing.assert_close(params["language_model.lm_head.weight"], base.language_model.lm_head.weight)
    assert (
        VideoLlamaProcessor.from_pretrained(tmp_path / "out").num_video_tokens
        == base.config.num_video_query_tokens
    )


def test_missing_keys_are_named_and_cli_reports(tiny_ckpt, base, tmp_path, capsys):
    state, _ = original_layout(base.config)
    del state["llama_proj.bias"]
    torch.save({"model": state}, tmp_path / "checkpoint_1.pth")
    main(
        [
            "--checkpoint",
            str(tmp_path / "checkpoint_1.pth"),
            "--base",
            str(tiny_ckpt),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    out = capsys.readouterr().out
    report = json.loads(out[: out.rindex("}") + 1])
    assert report["missing"] == ["video_projection.bias"] and report["unexpected"] == []


def test_wrong_shapes_name_key_and_both_shapes(tiny_ckpt, base, tmp_path):
    state, _ = original_layout(base.config)
    state["video_frame_position_embedding.weight"] = torch.zeros(32, 64)  # Video-LLaMA's max_frame_pos
    state["llama_proj.weight"] = torch.zeros(4096, 64)  # a 7B LLM's width
    torch.save({"model": state}, tmp_path / "checkpoint_2.pth")
    with pytest.raises(ValueError) as error:
        convert_checkpoint(tmp_path / "checkpoint_2.pth", tiny_ckpt, tmp_path / "o")
    message = str(error.value)
    assert "video_frame_position_embedding.weight -> frame_position_embedding.weight" in message
    assert "[32, 64] vs model [16, 64]" in message and "max_frames" in message
    assert "llama_proj.weight -> video_projection.weight: checkpoint [4096, 64] vs model [128, 64]" in message
    assert not (tmp_path / "o").exists()


def test_pickled_code_is_refused(tmp_path, tiny_ckpt):
    # weights_only=True: an object that would run code on load is rejected
    torch.save({"model": {"x": torch.zeros(1)}, "obj": torch.nn.Linear(1, 1)}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        convert_checkpoint(tmp_path / "evil.pth", tiny_ckpt, tmp_path / "o")
