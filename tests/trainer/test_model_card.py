"""The adapter folder's model card: Hub metadata that huggingface_hub parses back, and the text a
reader needs (method settings, data, training, scores beside their chance levels, how to load)."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from trainer.config import load_config
from trainer.model_card import write_model_card

RUN_INFO = {"mlflow_run_id": "0123abcd", "tracking_uri": "sqlite:///x.db", "step": 200}


def run_config(*overrides: str) -> dict:
    # model.quantization as a run resolves it (auto → the method's format)
    cfg = load_config("configs/synthvid/finetune.yaml", ["model.quantization=nf4", *overrides]).to_dict()
    cfg["data"]["train_shards"] = f"{cfg['assets_dir']}/synthvid/order-train-0123456789ab"
    return cfg


def test_card_metadata_and_text_parse_back(tmp_path):
    (tmp_path / "README.md").write_text("# Model Card for Model ID\n[More Information Needed]\n")  # peft's
    path = write_model_card(
        tmp_path,
        run_config("adapter.method=temporal_qlora"),
        RUN_INFO,
        eval_scores={"eval/choice_acc_pct": 31.25, "eval/cider": 4.5},
        eval_chance={"eval/choice_acc_pct": 25.0},
        eval_step=200,
        trainable_params=103_048,
        total_params=700_000,
    )
    card = ModelCard.load(path)
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "video-text-to-text"
    assert card.data.base_model == "outputs/synthvid/pretrain/adapter"
    assert {"temporal_qlora", "video-llama"} <= set(card.data.tags)
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["choice_acc_pct"].metric_value == 31.25 and results["cider"].metric_value == 4.5
    assert results["choice_acc_pct"].dataset_name == "synthvid-order"
    text = card.text
    assert "[More Information Needed]" not in text
    assert "| `choice_acc_pct` | 31.25 | 25 |" in text and "| `cider` | 4.5 | – |" in text  # beside chance
    assert "| `adapter.r` | `16` |" in text  # the method's own settings; a section one row each
    assert "| `adapter.gate.mode` | `scale` |" in text and "| `adapter.gate.init` | `0.9` |" in text
    assert "`adapter.gate.init_std`" not in text and "{'" not in text  # null left out; no raw dict
    assert "`adapter.budget`" not in text  # null: left at its default
    assert 'quantization="nf4"' in text
    assert "103,048 of 700,000 (14.72%)" in text and "200 of 200" in text and "0123abcd" in text
    assert "LLM 0.003, ViT 0.0003, aligner 0.0003" in text
    assert "load_adapter" in text and "PeftModel.from_pretrained" not in text  # gates: not plain peft
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize(
    ("method", "library", "loads"),
    [
        ("qlora", "peft", "PeftModel.from_pretrained"),
        ("full", "transformers", "VideoLlamaForConditionalGeneration"),
    ],
)
def test_card_names_the_library_and_loader_of_the_saved_format(tmp_path, method, library, loads):
    overrides = [f"adapter.method={method}"] + (["model.quantization=none"] if method == "full" else [])
    card = ModelCard.load(write_model_card(tmp_path, run_config(*overrides), RUN_INFO))
    assert card.data.library_name == library and loads in card.text
    assert card.data.eval_results is None and "Not evaluated" in card.text


def test_named_shards_are_the_dataset_and_a_retrieval_head_is_loaded(tmp_path):
    cfg = run_config("train.contrastive_weight=1.0")
    cfg["data"]["train_shards"] = "/data/msrvtt/train"
    card = ModelCard.load(write_model_card(tmp_path, cfg, RUN_INFO, eval_scores={"eval/cider": 1.0}))
    assert card.data.eval_results[0].dataset_name == "train"
    assert "retrieval_dim=128" in card.text


def test_card_names_the_format_of_each_tower(tmp_path):
    cfg = run_config("adapter.method=qlora")
    cfg["model"]["quantization"] = {"vision": "int8", "llm": "nf4"}  # as a run resolves the mapping
    text = ModelCard.load(write_model_card(tmp_path, cfg, RUN_INFO)).text
    assert "(vision int8, llm nf4 weights)" in text
    assert "| weights: `vision` | `int8` |" in text and "| weights: `llm` | `nf4` |" in text
    assert "| weights: projection | compute dtype" in text
    assert "| weights: `fusion (Q-Formers)` | compute dtype" in text
    assert 'quantization={"vision": "int8", "llm": "nf4"}' in text  # the loading code, as Python


def test_adalora_settings_are_rows_of_their_own(tmp_path):
    cfg = run_config("adapter.method=adalora", "adapter.adalora.target_r=4")
    text = ModelCard.load(write_model_card(tmp_path, cfg, RUN_INFO)).text
    assert "| `adapter.adalora.target_r` | `4` |" in text and "{'" not in text
