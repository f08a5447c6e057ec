import pytest
import torch

from models.modeling_video_llama import VideoLlamaForConditionalGeneration
from models.presets import build_model


@pytest.fixture
def model(tiny_ckpt):
    return VideoLlamaForConditionalGeneration.from_pretrained(tiny_ckpt)  # fp32, eval mode


def test_forward_shapes_and_loss(model, batch):
    config = model.config
    out = model(**batch)
    b, length = batch["input_ids"].shape
    assert out.logits.shape == (b, length, config.text_config.vocab_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # Random init over V classes: cross-entropy near log(V), plus about var(logits)/2. The tiny preset
    # draws the LLM at std ~1/sqrt(hidden), so logits have std ~1 and the excess varies with the init;
    # 1.4 was measured for one init. A broken loss (wrong shift, labels ignored) is off by far more.
    assert abs(out.loss.item() - torch.log(torch.tensor(float(config.text_config.vocab_size))).item()) < 2.0
    features = model.get_video_features(batch["pixel_values"])
    assert features.shape == (b, config.num_video_query_tokens, config.text_config.hidden_size)
    # the two videos differ, so must their video tokens
    assert not torch.allclose(features[0], features[1])


def test_video_tokens_reach_the_llm(model, batch):
    """Changing the frames changes the caption logits (the merge is not a no-op)."""
    with torch.no_grad():
        a = model(**batch).logits
        batch["pixel_values"] = batch["pixel_values"] + 1.0
        b = model(**batch).logits
    assert not torch.allclose(a[:, -5:], b[:, -5:])


def test_frame_order_comes_from_position_embedding(model, batch):
    """Only the frame position embedding makes the video tokens depend on the order of the frames."""
    frames, flipped = batch["pixel_values"], batch["pixel_values"].flip(1)
    with torch.no_grad():
        model.frame_position_embedding.weight.zero_()
        torch.testing.assert_close(
            model.get_video_features(frames), model.get_video_features(flipped), rtol=1e-5, atol=1e-5
        )
        without_positions = model.get_video_features(frames)
        # (At random init the frame tokens hardly depend on the pixels and the video Q-Former attends
        # almost uniformly, so a flip changes little; what is checked is that positions are added.)
        model.frame_position_embedding.weight.normal_(0.0, 1.0)
        assert (model.get_video_features(frames) - without_positions).abs().max() > 1e-3


def test_too_many_frames_names_both_numbers(model, batch):
    k = model.config.max_frames + 1
    pixel_values = torch.zeros(1, k, 3, 64, 64)
    with pytest.raises(ValueError, match=rf"{k} frames.*max_frames is {model.config.max_frames}"):
        model(pixel_values=pixel_values, input_ids=batch["input_ids"][:1])


def test_placeholder_count_is_checked(model, batch):
    ids = batch["input_ids"].clone()
    ids[0, ids[0] == model.config.video_token_index] = model.config.text_config.pad_token_id
    with pytest.raises(ValueError, match="video placeholder"):
        model(pixel_values=batch["pixel_values"], input_ids=ids)


def test_frame_scores_are_accepted_and_not_kept(model, batch):
    scores = torch.rand(2, 4, 3)
    seen = {}

    def record(*_):  # a pre-hook returning non-None would replace the inputs
        seen.setdefault("scores", model.current_frame_scores)

    hook = model.vision_model.register_forward_pre_hook(record)
    with torch.no_grad():
        with_scores = model(**batch, frame_scores=scores).logits
        without = model(**batch).logits
    hook.remove()
    assert seen["scores"] is scores and model.current_frame_scores is None
    assert torch.equal(with_scores, without)
    with pytest.raises(ValueError, match="frame_scores"):
        model(**batch, frame_scores=torch.rand(2, 5, 3))


def test_save_load_round_trip_identical_logits(processor, batch, tmp_path):
    torch.manual_seed(1)
    model = build_model("tiny", processor.tokenizer).eval()
    model.save_pretrained(tmp_path)
    loaded = VideoLlamaForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_gradient_checkpointing_same_loss_and_grads(model, batch):
    model.train()

    def loss_and_grad():
        model.zero_grad()
        torch.manual_seed(0)  # same dropout masks in both runs
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), model.query_tokens.grad.clone()

    plain_loss, plain_grad = loss_and_grad()
    model.activation_checkpointing_enable()
    assert model.language_model.model.layers[0].gradient_checkpointing
    assert model.vision_model.encoder.layers[0].gradient_checkpointing
    assert model.video_qformer.encoder.layer[0].gradient_checkpointing
    ckpt_loss, ckpt_grad = loss_and_grad()
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=1e-4, atol=1e-6)


def test_generate_and_decode(model, processor, batch):
    prompt = processor.generation_inputs(2)
    ids = model.generate(batch["pixel_values"], **prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert ids.shape == (2, 6) and ids.dtype == torch.long
    # greedy decoding is deterministic
    again = model.generate(
        batch["pixel_values"], **prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6
    )
    assert torch.equal(ids, again)
    captions = processor.decode(ids)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    short = model.generate(batch["pixel_values"], **prompt, max_new_tokens=3, do_sample=False)
    assert short.shape[0] == 2 and 1 <= short.shape[1] <= 3


TOWERS = {
    "clip": {"model_type": "clip_vision_model"},
    "siglip": {"model_type": "siglip_vision_model", "vision_use_head": False},
}
TEXT = {
    "qwen2": {"model_type": "qwen2", "num_key_value_heads": 2, "tie_word_embeddings": True},
    "opt": {"model_type": "opt", "ffn_dim": 256, "word_embed_proj_dim": 128},
}


def _variant(processor, vision: str | None, text: str | None):
    from models.presets import PRESETS, preset_config

    overrides = {}
    if vision is not None:
        overrides["vision_config"] = {
            **{k: v for k, v in PRESETS["tiny"]["vision_config"].items() if k != "model_type"},
            **TOWERS[vision],
        }
    if text is not None:
        base = {
            k: PRESETS["tiny"]["text_config"][k]
            for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")
        }
        overrides["text_config"] = {
            "intermediate_size": 256,
            "max_position_embeddings": 512,
            "vocab_size": len(processor.tokenizer),
            **base,
            **TEXT[text],
        }
    torch.manual_seed(0)
    # the sub-config dicts replace (not merge with) the preset's: a model_type change brings new fields
    config = preset_config("tiny", processor.tokenizer)
    fields = config.to_dict()
    fields.update(overrides)
    for drop in ("model_type", "transformers_version", "architectures"):
        fields.pop(drop, None)
    return VideoLlamaForConditionalGeneration(type(config)(**fields))


@pytest.mark.parametrize(("vision", "text"), [("clip", "qwen2"), ("siglip", "opt")])
def test_other_towers_train_checkpoint_and_round_trip(processor, batch, tmp_path, vision, text):
    model = _variant(processor, vision, text)
    assert type(model.vision_model).__name__.lower().startswith(vision)
    assert model.language_model.config.model_type == text
    # every selectable tower's own unsplittable blocks are collected; none asks for fp32
    layer = {"clip": "CLIPEncoderLayer", "siglip": "SiglipEncoderLayer"}[vision]
    decoder = {"qwen2": "Qwen2DecoderLayer", "opt": "OPTDecoderLayer"}[text]
    assert {layer, decoder, "Blip2QFormerLayer"} <= set(model._no_split_modules)
    assert not model._keep_in_fp32_modules

    model.train()

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(0)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), model.query_tokens.grad.clone()

    plain = loss_and_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    vision_layers = model.vision_model.encoder.layers
    assert vision_layers[0].gradient_checkpointing and model.qformer.encoder.layer[0].gradient_checkpointing
    ckpt = loss_and_grads()
    torch.testing.assert_close(ckpt[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ckpt[1], plain[1], rtol=1e-4, atol=1e-6)

    model.eval()
    model.save_pretrained(tmp_path)
    loaded = VideoLlamaForConditionalGeneration.from_pretrained(tmp_path)
    assert type(loaded.vision_model) is type(model.vision_model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_save_load_round_trip_identical_logits_bf16(tiny_ckpt, batch, tmp_path):
    # Loaded in bf16 rather than `.to(bfloat16)`: `.to` would also round the rotary frequency buffer,
    # which from_pretrained keeps in fp32 (recomputed, never saved), and the logits would differ.
    model = VideoLlamaForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = VideoLlamaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        a, b = model(**batch).logits, loaded(**batch).logits
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_wrong_frame_size_names_both_sizes(model, batch):
    with pytest.raises(ValueError, match=r"\(32, 32\) pixels but vision_config.image_size is 64"):
        model(pixel_values=torch.zeros(2, 4, 3, 32, 32), input_ids=batch["input_ids"])
