"""The facts data/ and models/ share, and that both sides read them from the one place."""

import torch

import batch_contract
from batch_contract import FRAME_SCORE_NAMES, IGNORE_INDEX, MOTION, right_pad


def test_right_pad_pads_ids_ignores_labels_and_masks_padding():
    examples = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([IGNORE_INDEX, 6, 7])},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])},
    ]
    batch = right_pad(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_score_positions_follow_the_names():
    assert FRAME_SCORE_NAMES[MOTION] == "motion"
    assert [FRAME_SCORE_NAMES[i] for i in (batch_contract.ENTROPY, batch_contract.SCENE_CHANGE)] == [
        "entropy",
        "scene_change",
    ]


def test_the_pipeline_and_the_processor_pad_alike():
    """models.processor.pad and data.batch's Collate are the same padder."""
    from data import batch
    from models import processor

    assert batch.right_pad is processor.right_pad is right_pad
