"""data.caption_language: the whole-run checks, and a few QLoRA steps on VATEX's Chinese references."""

import pytest
import torch
from huggingface_hub import ModelCard

from data.frame_selector import FrameSelector
from data.pipeline import build_dataset
from models.adapters import apply_adapter
from models.loading import load_model
from models.presets import create_pretrained
from models.processor import VideoLlamaProcessor
from models.tokenizer import build_tokenizer
from tests.data.test_caption_languages import EN, ZH, make_vatex_shards
from trainer.caption_language import check_caption_language, check_language_key, unknown_share
from trainer.config import ConfigError, load_config
from trainer.model_card import write_model_card

ZH_CAPTION = ZH["Ab_c-1_000000_000001"][0]
ENGLISH_ONLY = [c for refs in EN.values() for c in refs]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_vatex_shards(tmp_path_factory.mktemp("vatex"))


def _cfg(shards, language):
    return load_config(
        None, [f"data.train_shards={shards}", "eval.num_samples=0", f"data.caption_language={language}"]
    )


def test_the_key_takes_a_language_code(shards):
    check_language_key(_cfg(shards, "zh"))
    check_language_key(load_config(None, []))  # null: the default references
    with pytest.raises(ConfigError, match="data.caption_language: 'zh-CN' is not an ISO 639-1"):
        check_language_key(_cfg(shards, "zh-CN"))


def test_a_language_the_shards_lack_stops_the_run(shards):
    tokenizer = build_tokenizer(ENGLISH_ONLY)
    with pytest.raises(ConfigError, match=r"none of the first 2 samples .* \{'en': 2, 'zh': 1\}"):
        check_caption_language(_cfg(shards, "fr"), tokenizer)
    check_caption_language(_cfg(shards, "en"), tokenizer)
    # The evaluation CLI checks only the split it scores.
    cfg = load_config(None, [f"data.test_shards={shards}", "data.caption_language=fr"])
    with pytest.raises(ConfigError, match=r"\(data.test_shards\) has 'fr' references"):
        check_caption_language(cfg, tokenizer, splits=("test",))


def test_a_tokenizer_without_the_language_stops_the_run(shards):
    english = build_tokenizer(ENGLISH_ONLY)
    assert unknown_share(english, [ZH_CAPTION]) == 1.0
    with pytest.raises(
        ConfigError, match=r"writes 100% of the 'zh' references' tokens as <unk> \(e.g. '.*骑"
    ):
        check_caption_language(_cfg(shards, "zh"), english)
    chinese = build_tokenizer(ENGLISH_ONLY + ZH["Ab_c-1_000000_000001"])
    check_caption_language(_cfg(shards, "zh"), chinese)


def test_qlora_trains_on_the_chinese_references(shards, tmp_path):
    """The zh caption reaches the labels intact and a few NF4 QLoRA steps lower its loss."""
    corpus = ENGLISH_ONLY + ZH["Ab_c-1_000000_000001"]
    base = create_pretrained("tiny", tmp_path / "base", corpus, seed=0)
    processor = VideoLlamaProcessor.from_pretrained(base)
    check_caption_language(_cfg(shards, "zh"), processor.tokenizer)
    (batch,) = build_dataset(
        shards,
        num_frames=4,
        frame_size=(64, 64),
        batch_size=2,
        text_fn=processor.training_example,
        pad_token_id=processor.tokenizer.pad_token_id,
        caption_language="zh",
    )
    assert batch.captions == [ZH_CAPTION] and batch.bad_samples == {"missing_language": 1}
    target = batch.labels[0][batch.labels[0] != -100]
    assert processor.tokenizer.decode(target, skip_special_tokens=True) == ZH_CAPTION
    assert processor.tokenizer.unk_token_id not in target.tolist()

    model = load_model(base, quantization="nf4", compute_dtype=torch.float32, device="cpu")
    model = apply_adapter(model, "qlora", r=8, alpha=16)
    model.train()
    selected = FrameSelector(4, "uniform")(batch.frames)
    inputs = {
        "pixel_values": selected.frames,
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "labels": batch.labels,
    }
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


def test_the_model_card_names_the_caption_language(tmp_path):
    def card(*overrides):
        cfg = load_config("configs/demo.yaml", ["model.quantization=nf4", *overrides]).to_dict()
        path = write_model_card(
            tmp_path,
            cfg,
            {},
            eval_scores={},
            eval_chance={},
            eval_step=None,
            trainable_params=1,
            total_params=2,
        )
        return ModelCard.load(path)

    chinese = card("data.caption_language=zh")
    assert chinese.data.language == "zh" and "| caption language | `zh`" in chinese.text
    assert card().data.language is None
