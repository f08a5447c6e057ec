"""Video-LLaMA (vision-language branch) as a transformers `PreTrainedModel`.

Architecture (Zhang et al., 2023, "Video-LLaMA"), built from transformers blocks only:

    pixel_values [B, K, 3, H, W]
      │ flatten frames                              [B*K, 3, H, W]
      ▼ vision tower (ViT)                          [B*K, T, Dv]        T = P (+1 class token)
        BLIP-2 EVA ViT, CLIP or SigLIP vision model   P = (H/patch)*(W/patch)
      ▼ frame Q-Former: query_tokens [1, Q, Dq] cross-attend to the patches
                                                    [B*K, Q, Dq]
      ▼ + frame_position_embedding[k] per frame     [B, K, Q, Dq] → [B, K*Q, Dq]
      ▼ video Q-Former: video_query_tokens [1, Qv, Dq] cross-attend to all frame queries
                                                    [B, Qv, Dq]
      ▼ video_projection Linear(Dq, D)              [B, Qv, D]          D = LLM hidden size
      ▼ masked_scatter into the LLM input embeddings at the Qv `<video>` placeholders of input_ids
      ▼ causal LLM (any AutoModelForCausalLM)       logits [B, L, V]
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    Blip2QFormerModel,
    Blip2VisionModel,
    CLIPVisionModel,
    GenerationMixin,
    PreTrainedModel,
    SiglipVisionModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_video_llama import VideoLlamaConfig
from .retrieval_head import RetrievalHead, info_nce


@dataclass
class VideoLlamaOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the retrieval head's auxiliary loss (None without text ids)."""

    contrastive_loss: torch.FloatTensor | None = None


# One class per supported `vision_config.model_type`. Their `last_hidden_state` differs slightly:
# BLIP-2 and SigLIP apply the final LayerNorm to it (BLIP-2's `ln_vision`), CLIP leaves it before
# `post_layernorm` (as LLaVA reads CLIP patches); the Q-Former's own LayerNorms take either.
# SigLIP's pooling head (`vision_use_head`) is never called: set it False in the config unless the
# head's weights must load without being reported as unused.
VISION_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "blip_2_vision_model": Blip2VisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}


@contextlib.contextmanager
def _eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Run ``model`` (and only it) with eager attention inside the block, then restore its own.

    Eager is the implementation that returns attention probabilities; the others (sdpa, flash)
    fuse them away. The switch is transformers' `set_attn_implementation` on that sub-model's config.
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


class VideoLlamaPreTrainedModel(PreTrainedModel):
    config: VideoLlamaConfig
    config_class = VideoLlamaConfig
    # No sub-module of that name exists, so `model.base_model` is the model itself (as for BLIP-2);
    # the prefix only matters for checkpoints of a headless variant, which this project does not have.
    base_model_prefix = "video_llama"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # Blocks that must not be cut across devices by `device_map="auto"` (residual connections inside).
    # `post_init` adds the sub-models' own lists (CLIPEncoderLayer, SiglipEncoderLayer,
    # LlamaDecoderLayer, Qwen2DecoderLayer, ...), so any selectable tower is covered.
    _no_split_modules = [
        "Blip2EncoderLayer",
        "Blip2QFormerLayer",
        "Blip2VisionEmbeddings",
    ]
    _skip_keys_device_placement = ["past_key_values"]
    # Deliberately no `_keep_in_fp32_modules` (BLIP-2 keeps its frozen Q-Former in fp32): here the
    # Q-Formers and projection are trained and must live in the compute dtype like the adapters, so that
    # the quantized load promise "non-quantized modules are in compute_dtype" holds and DeepSpeed ZeRO
    # flattens one dtype. The Q-Former upcasts nothing it needs: LayerNorm eps 1e-12 is representable in bf16.
    # None of the selectable sub-models (BLIP-2 ViT / Q-Former, CLIP, SigLIP, Llama, Qwen2, OPT) declares
    # one either, so `post_init` collects nothing (tested).
    _keep_in_fp32_modules: list[str] = []

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Random init for training from scratch: linears/embeddings N(0, initializer_range), norms 1/0.

        Sub-models (ViT, Q-Formers, LLM) are initialised by their own `_init_weights` with their own
        config (transformers dispatches per sub-model). The learned queries are drawn N(0, 0.02) as in
        BLIP-2's `init_Qformer`, not zeros (HF's BLIP-2 zero-inits because it always loads weights):
        identical queries would stay identical through the symmetric Q-Former.
        """
        super()._init_weights(module)
        if isinstance(module, RetrievalHead):
            module.reset_parameters()
        if isinstance(module, VideoLlamaForConditionalGeneration):
            std = self.config.initializer_range
            init.normal_(module.query_tokens, mean=0.0, std=std)
            init.normal_(module.video_query_tokens, mean=0.0, std=std)


class VideoLlamaForConditionalGeneration(VideoLlamaPreTrainedModel, GenerationMixin):
    """Video-LLaMA: ViT → frame Q-Former → frame positions → video Q-Former → projection → LLM."""

    def __init__(self, config: VideoLlamaConfig):
        super().__init__(config)
        dq = config.qformer_config.hidden_size
        self.vision_model = VISION_MODEL_CLASSES[config.vision_config.model_type]._from_config(
            config.vision_config
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, dq))
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)
        self.frame_position_embedding = nn.Embedding(config.max_frames, dq)
        self.video_query_tokens = nn.Parameter(torch.zeros(1, config.num_video_query_tokens, dq))
        self.video_qformer = Blip2QFormerModel._from_config(config.video_qformer_config)
        self.video_projection = nn.Linear(dq, config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        # Per-frame scores of the current forward ([B, K, S]); read by temporal LoRA gates (a later
        # issue). Set only for the duration of one forward so no batch tensor outlives its step.
        self.current_frame_scores: torch.Tensor | None = None
        # The contrastive retrieval head when the config asks for one. A base checkpoint saved
        # without it loads with `retrieval_dim` set (`models.loading.load_model`): the head is then
        # initialised fresh, trained, and saved with the adapter.
        self.retrieval_head = (
            RetrievalHead(config.text_config.hidden_size, config.retrieval_dim)
            if config.retrieval_dim
            else None
        )
        self.post_init()

    # --- embeddings: the LLM owns them --------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    # --- video branch -----------------------------------------------------------------------------
    def _vision_dtype(self) -> torch.dtype:
        """Dtype the frames are cast to: that of the patch-embedding convolution, which bitsandbytes
        never quantizes (it replaces `nn.Linear` only), so it is the compute dtype in every load mode."""
        conv = next(m for m in self.vision_model.modules() if isinstance(m, nn.Conv2d))
        return conv.weight.dtype

    def _check_frames(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be [B, K, 3, H, W], got shape {tuple(pixel_values.shape)}")
        size = self.config.vision_config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"frames are {tuple(pixel_values.shape[-2:])} pixels but vision_config.image_size is {size}"
            )
        num_frames = pixel_values.shape[1]
        if num_frames > self.config.max_frames:
            raise ValueError(
                f"got {num_frames} frames per video but max_frames is {self.config.max_frames} "
                "(size of the frame position embedding)"
            )

    def _frame_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The video Q-Former's encoder input: every frame's query tokens plus its position embedding.

        Args:
            pixel_values: float [B, K, 3, H, W], normalised frames, K <= max_frames.
        Returns:
            float [B, K*Q, Dq], frame-major: position k*Q + j is frame query j of frame k.
        """
        self._check_frames(pixel_values)
        b, k = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1).to(self._vision_dtype())

        patches = self.vision_model(pixel_values=frames).last_hidden_state  # [B*K, T, Dv]
        queries = self.query_tokens.expand(b * k, -1, -1)  # [B*K, Q, Dq]
        # No encoder mask: every patch of every frame is real (all frames have the model's size).
        frame_tokens = self.qformer(query_embeds=queries, encoder_hidden_states=patches).last_hidden_state

        q, dq = frame_tokens.shape[1:]
        frame_tokens = frame_tokens.view(b, k, q, dq)
        positions = torch.arange(k, device=frame_tokens.device)
        frame_pos = self.frame_position_embedding(positions)  # [K, Dq]
        # Temporal order enters only here: the ViT and frame Q-Former see frames independently.
        frame_tokens = frame_tokens + frame_pos[None, :, None, :].to(frame_tokens.dtype)
        return frame_tokens.reshape(b, k * q, dq)  # [B, K*Q, Dq]

    def get_video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode videos into LLM-space video tokens.

        Args:
            pixel_values: float [B, K, 3, H, W], normalised frames, K <= max_frames.
        Returns:
            float [B, Qv, D] in the dtype of `video_projection` (D = LLM hidden size).
        """
        frame_tokens = self._frame_tokens(pixel_values)  # [B, K*Q, Dq]
        video_queries = self.video_query_tokens.expand(frame_tokens.shape[0], -1, -1)  # [B, Qv, Dq]
        video_tokens = self.video_qformer(
            query_embeds=video_queries, encoder_hidden_states=frame_tokens
        ).last_hidden_state  # [B, Qv, Dq]
        return self.video_projection(video_tokens.to(self.video_projection.weight.dtype))  # [B, Qv, D]

    @torch.no_grad()
    def video_frame_attention(
        self, pixel_values: torch.Tensor, frame_scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Which frames each video query reads: the video Q-Former's cross-attention, per frame.

        An inspection of the video branch (the evaluation report), not part of any forward: it runs
        the branch once more, with the video Q-Former's attention set to eager for this call only,
        because sdpa computes no attention probabilities to return. Each encoder position of the
        video Q-Former is one (frame k, frame query j) token, so a video query's attention on frame k
        is the sum of its probabilities over that frame's Q tokens; heads are averaged. Call it in
        eval mode: in training mode the probabilities carry attention dropout.

        Args:
            pixel_values: float [B, K, 3, H, W].
            frame_scores: float [B, K, S] or None, visible to temporal adapters as in `encode_video`.
        Returns:
            float32 [B, Lc, Qv, K], Lc = the video Q-Former's cross-attention layers; each row
            (b, layer, query) is a distribution over the K frames (its sum is 1 to the rounding of
            the compute dtype: BLIP-2's eager softmax runs in it, 3e-4 off in bf16 at K = 8, measured).
        """
        with self._frame_scores_visible(pixel_values, frame_scores):
            frame_tokens = self._frame_tokens(pixel_values)  # [B, K*Q, Dq]
            b, k = pixel_values.shape[:2]
            video_queries = self.video_query_tokens.expand(b, -1, -1)  # [B, Qv, Dq]
            with _eager_attention(self.video_qformer):
                out = self.video_qformer(
                    query_embeds=video_queries, encoder_hidden_states=frame_tokens, output_attentions=True
                )
        probs = torch.stack(out.cross_attentions, dim=1).float()  # [B, Lc, H, Qv, K*Q]
        per_frame = probs.unflatten(-1, (k, -1)).sum(dim=-1)  # [B, Lc, H, Qv, K]
        return per_frame.mean(dim=2)  # [B, Lc, Qv, K]

    def _merge_video_tokens(self, input_ids: torch.Tensor, video_features: torch.Tensor) -> torch.Tensor:
        """Embed `input_ids` [B, L] and write the video tokens [B, Qv, D] over the `<video>` slots.

        Returns inputs_embeds [B, L, D]. The prompt must hold exactly Qv placeholders per sample,
        so `masked_scatter` fills them in order, sample by sample.
        """
        if self.config.video_token_index is None:
            raise ValueError(
                "config.video_token_index is not set (build the model with build_model/tokenizer)"
            )
        inputs_embeds = self.get_input_embeddings()(input_ids)
        is_video = input_ids == self.config.video_token_index  # [B, L]
        per_sample = is_video.sum(dim=1)
        expected = video_features.shape[1]
        if not bool((per_sample == expected).all()):
            raise ValueError(
                f"each sample needs exactly {expected} video placeholder tokens "
                f"(id {self.config.video_token_index}), got {per_sample.tolist()}"
            )
        video_features = video_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(is_video.unsqueeze(-1), video_features)

    def encode_video(
        self, pixel_values: torch.Tensor, frame_scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`get_video_features` with the frame scores visible to temporal adapters while it runs.

        What `forward` takes as ``video_features``: a caller that scores several captions of one
        video (forced choice) encodes it once.

        Args:
            pixel_values: float [B, K, 3, H, W].
            frame_scores: float [B, K, S] or None.
        Returns:
            float [B, Qv, D_llm].
        """
        with self._frame_scores_visible(pixel_values, frame_scores):
            return self.get_video_features(pixel_values)

    @contextlib.contextmanager
    def _frame_scores_visible(
        self, pixel_values: torch.Tensor, frame_scores: torch.Tensor | None
    ) -> Iterator[None]:
        """`current_frame_scores` = frame_scores [B, K, S] (checked against pixel_values) while inside."""
        if frame_scores is not None and tuple(frame_scores.shape[:2]) != tuple(pixel_values.shape[:2]):
            raise ValueError(
                f"frame_scores shape {tuple(frame_scores.shape)} does not match pixel_values [B, K] "
                f"{tuple(pixel_values.shape[:2])}"
            )
        self.current_frame_scores = frame_scores
        try:
            yield
        finally:
            self.current_frame_scores = None

    # --- training / scoring -------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        frame_scores: torch.Tensor | None = None,
        text_input_ids: torch.LongTensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> VideoLlamaOutput:
        """Caption loss / logits for a batch of videos.

        Args:
            pixel_values: float [B, K, 3, H, W], or None with ``video_features``.
            input_ids: long [B, L] holding Qv `<video>` placeholders per sample.
            attention_mask: [B, L] (1 = real token) or None (all real).
            labels: long [B, L], -100 where no loss (prompt, video, padding); shifted inside.
            frame_scores: float [B, K, S] per-frame selector scores; kept in
                `self.current_frame_scores` during this forward for temporal adapters, unused otherwise.
            text_input_ids: long [B, Lc] each sample's caption alone (`retrieval_head.caption_tokens`);
                with a retrieval head, `contrastive_loss` is the symmetric InfoNCE of the batch.
            text_attention_mask: [B, Lc], 1 on caption tokens.
            video_features: float [B, Qv, D] from `encode_video`, instead of ``pixel_values``.
            **kwargs: passed to the LLM (e.g. `use_cache`, `output_hidden_states`) and to the loss
                (`num_items_in_batch`).
        Returns:
            `VideoLlamaOutput` with `loss` (scalar, if labels), `logits` float [B, L, V] and
            `contrastive_loss` (scalar, if text_input_ids and a retrieval head).
        """
        if video_features is None:
            if pixel_values is None:
                raise ValueError("forward needs pixel_values or video_features")
            video_features = self.encode_video(pixel_values, frame_scores)
        inputs_embeds = self._merge_video_tokens(input_ids, video_features)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        # forward is for training / scoring; a KV cache is only built when asked (generation goes
        # through `generate`, which drives the LLM directly).
        kwargs.setdefault("use_cache", False)
        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        logits = outputs.logits

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits,
                labels=labels.to(logits.device),
                vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=num_items_in_batch,
            )
        contrastive_loss = None
        if text_input_ids is not None and self.retrieval_head is not None:
            video, _, scale = self.retrieval_head(video_tokens=video_features)
            text = self.embed_text(text_input_ids, text_attention_mask)
            contrastive_loss = info_nce(video, text, scale)
        return VideoLlamaOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            contrastive_loss=contrastive_loss,
        )

    # --- retrieval ----------------------------------------------------------------------------------
    def _head(self) -> nn.Module:
        if self.retrieval_head is None:
            raise ValueError("this model has no retrieval head (its config sets no retrieval_dim)")
        return self.retrieval_head

    def embed_video(
        self, pixel_values: torch.Tensor, frame_scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-norm video embeddings float32 [B, E] of pixel_values [B, K, 3, H, W]."""
        head = self._head()
        return head(video_tokens=self.encode_video(pixel_values, frame_scores))[0]

    def embed_text(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-norm text embeddings float32 [B, E] of captions alone, input_ids [B, Lc] (no video tokens)."""
        head = self._head()
        states = self.language_model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)
        return head(text_states=states.last_hidden_state, text_mask=attention_mask)[1]

    # --- captioning ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        frame_scores: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.LongTensor:
        """Caption videos: encode them once, then let the LLM decode from `inputs_embeds`.

        Args:
            pixel_values: float [B, K, 3, H, W].
            input_ids: long [B, Lp] prompt (up to "assistant:") with Qv placeholders per sample,
                left-padded if lengths differ.
            attention_mask: [B, Lp] or None.
            frame_scores: float [B, K, S] per-frame selector scores, as in `forward`.
            **generate_kwargs: e.g. `max_new_tokens`, `do_sample=False`, `eos_token_id`, `pad_token_id`.
        Returns:
            long [B, T] only the new tokens (T <= max_new_tokens; padded with pad_token_id after eos).
        """
        video_features = self.encode_video(pixel_values, frame_scores)
        inputs_embeds = self._merge_video_tokens(input_ids, video_features)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Only inputs_embeds goes in (no input_ids): decoder-only generate then returns just the new
        # tokens, and the placeholder ids never get embedded as text.
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs
        )


# Registering lets `AutoModelForImageTextToText.from_pretrained(dir)` rebuild this class from config.json.
AutoModelForImageTextToText.register(VideoLlamaConfig, VideoLlamaForConditionalGeneration, exist_ok=True)
