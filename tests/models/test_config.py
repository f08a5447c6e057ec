import pytest
from transformers import AutoConfig

from models.configuration_video_llama import VideoLlamaConfig


def test_defaults_are_consistent():
    config = VideoLlamaConfig()
    assert config.video_qformer_config.num_hidden_layers == 2
    assert config.text_config.model_type == "llama"
    assert (config.num_query_tokens, config.num_video_query_tokens, config.max_frames) == (32, 32, 8)


def test_frame_qformer_mismatch_is_named():
    with pytest.raises(
        ValueError, match=r"qformer_config.encoder_hidden_size \(1408\).*vision_config.hidden_size \(64\)"
    ):
        VideoLlamaConfig(vision_config={"hidden_size": 64})


def test_video_qformer_mismatch_is_named():
    with pytest.raises(ValueError, match=r"video_qformer_config.encoder_hidden_size \(32\)"):
        VideoLlamaConfig(video_qformer_config={"num_hidden_layers": 2, "encoder_hidden_size": 32})
    with pytest.raises(ValueError, match=r"video_qformer_config.hidden_size \(64\)"):
        VideoLlamaConfig(video_qformer_config={"hidden_size": 64, "num_attention_heads": 4})


def test_video_token_outside_vocab():
    with pytest.raises(ValueError, match="video_token_index"):
        VideoLlamaConfig(text_config={"model_type": "llama", "vocab_size": 10}, video_token_index=10)


def test_autoconfig_round_trip(tmp_path):
    config = VideoLlamaConfig(
        max_frames=12, video_token_index=4, text_config={"model_type": "llama", "vocab_size": 50}
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VideoLlamaConfig)
    assert loaded.max_frames == 12 and loaded.video_token_id == 4
    assert loaded.text_config.vocab_size == 50
    assert loaded.video_qformer_config.encoder_hidden_size == loaded.qformer_config.hidden_size


def test_clip_and_siglip_vision_configs_are_checked_against_the_qformer():
    for model_type in ("clip_vision_model", "siglip_vision_model"):
        config = VideoLlamaConfig(
            vision_config={"model_type": model_type, "hidden_size": 96, "num_attention_heads": 4},
            qformer_config={"encoder_hidden_size": 96},
        )
        assert config.vision_config.model_type == model_type
        with pytest.raises(
            ValueError, match=r"encoder_hidden_size \(1408\).*vision_config.hidden_size \(96\)"
        ):
            VideoLlamaConfig(
                vision_config={"model_type": model_type, "hidden_size": 96, "num_attention_heads": 4}
            )


def test_unsupported_towers_are_named():
    with pytest.raises(ValueError, match="'vit'.*not supported"):
        VideoLlamaConfig(vision_config={"model_type": "vit", "hidden_size": 1408})
    with pytest.raises(ValueError, match="'t5'.*AutoModelForCausalLM"):
        VideoLlamaConfig(text_config={"model_type": "t5"})


def test_video_qformer_cross_attends_in_every_layer_by_default():
    # as Video-LLaMA's init_video_Qformer (cross_attention_freq = 1): both layers hold cross-attention
    assert VideoLlamaConfig().video_qformer_config.cross_attention_frequency == 1
