"""Configuration of the Video-LLaMA video-language model (vision-language branch).

A composite transformers config in the style of `InstructBlipVideoConfig`: four sub-configs
(ViT, frame Q-Former, video Q-Former, causal LLM) plus the few numbers that glue them together.
It follows transformers 5's dataclass configs (`@strict` fields, `sub_configs_defaults`), so it
saves to / loads from `config.json` with `save_pretrained` / `from_pretrained` like any model.
"""

from transformers import AutoConfig, Blip2QFormerConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

# Vision towers the model can build, by `vision_config.model_type`. All three map a frame batch
# [N, 3, H, W] to patch tokens [N, T, Dv] in `last_hidden_state`, which is all the Q-Former needs.
VISION_MODEL_TYPES = ("blip_2_vision_model", "clip_vision_model", "siglip_vision_model")


class VideoLlamaConfig(PreTrainedConfig):
    r"""Config of [`VideoLlamaForConditionalGeneration`].

    Args:
        vision_config: config (or dict with `model_type`) of the per-frame ViT: `Blip2VisionConfig`
            (BLIP-2's EVA ViT, the default), `CLIPVisionConfig` or `SiglipVisionConfig`
            (see `VISION_MODEL_TYPES`).
        qformer_config: `Blip2QFormerConfig` (or dict) of the frame Q-Former; its
            `encoder_hidden_size` must equal the ViT `hidden_size` (it cross-attends to ViT patches).
        video_qformer_config: `Blip2QFormerConfig` (or dict) of the video Q-Former (2 layers by
            default, cross-attention in every layer, as in Video-LLaMA); its `hidden_size` and
            `encoder_hidden_size` must equal the
            frame Q-Former `hidden_size` (its queries live in that space and it cross-attends to the
            frame Q-Former outputs).
        text_config: any causal-LM config (dict with `model_type`, resolved through `CONFIG_MAPPING`;
            llama by default).
        num_query_tokens: Q, learned queries of the frame Q-Former (per frame).
        num_video_query_tokens: Qv, learned queries of the video Q-Former = number of video tokens
            placed into the LLM input (the prompt holds exactly Qv `<video>` placeholders).
        max_frames: K_max, size of the frame position embedding; more frames raise an error.
        video_token_index: vocabulary id of the `<video>` placeholder token.
        video_token: the placeholder string (kept for processors and for readable configs).
        retrieval_dim: E, the shared video-text space of the contrastive retrieval head
            (`models.retrieval_head`); None: the model has no such head.
    """

    model_type = "video_llama"
    attribute_map = {"video_token_id": "video_token_index"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="blip_2_vision_model"),
        "qformer_config": Blip2QFormerConfig,
        # Video-LLaMA's video Q-Former is a 2-layer BERT whose every layer cross-attends
        # (`cross_attention_freq = 1` in its `init_video_Qformer`), at the frame Q-Former width
        # (768 in BLIP-2). With the BLIP-2 default of 2, layer 1 would lack the cross-attention
        # weights that released Video-LLaMA checkpoints hold.
        "video_qformer_config": SubConfigSpec(
            config_class=Blip2QFormerConfig,
            init_kwargs={"num_hidden_layers": 2, "encoder_hidden_size": 768, "cross_attention_frequency": 1},
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    video_qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    num_video_query_tokens: int = 32
    max_frames: int = 8
    video_token_index: int | None = None
    video_token: str = "<video>"
    initializer_range: float = 0.02
    retrieval_dim: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_consistency()

    def _check_consistency(self) -> None:
        """Raise a ValueError naming the first mismatch between the towers' dimensions.

        Done in `__post_init__` (not in a `validate_*` hook) so the error surfaces as a plain
        ValueError with our message instead of huggingface_hub's wrapper exception.
        """
        vision, frame_qf, video_qf = self.vision_config, self.qformer_config, self.video_qformer_config
        if vision.model_type not in VISION_MODEL_TYPES:
            raise ValueError(
                f"vision_config.model_type {vision.model_type!r} is not supported; use one of {VISION_MODEL_TYPES}"
            )
        if frame_qf.encoder_hidden_size != vision.hidden_size:
            raise ValueError(
                f"qformer_config.encoder_hidden_size ({frame_qf.encoder_hidden_size}) must equal "
                f"vision_config.hidden_size ({vision.hidden_size}): the frame Q-Former cross-attends to ViT patches"
            )
        if video_qf.hidden_size != frame_qf.hidden_size:
            raise ValueError(
                f"video_qformer_config.hidden_size ({video_qf.hidden_size}) must equal "
                f"qformer_config.hidden_size ({frame_qf.hidden_size}): the video Q-Former reads frame query outputs"
            )
        if video_qf.encoder_hidden_size != frame_qf.hidden_size:
            raise ValueError(
                f"video_qformer_config.encoder_hidden_size ({video_qf.encoder_hidden_size}) must equal "
                f"qformer_config.hidden_size ({frame_qf.hidden_size}): it cross-attends to frame Q-Former outputs"
            )
        if self.text_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(
                f"text_config.model_type {self.text_config.model_type!r} has no AutoModelForCausalLM class"
            )
        for name in ("num_query_tokens", "num_video_query_tokens", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        vocab = getattr(self.text_config, "vocab_size", None)
        if (
            self.video_token_index is not None
            and vocab is not None
            and not 0 <= self.video_token_index < vocab
        ):
            raise ValueError(
                f"video_token_index ({self.video_token_index}) is outside text_config.vocab_size ({vocab})"
            )


# Registering makes AutoConfig.from_pretrained(dir) resolve "video_llama"; exist_ok keeps re-imports safe.
AutoConfig.register(VideoLlamaConfig.model_type, VideoLlamaConfig, exist_ok=True)
