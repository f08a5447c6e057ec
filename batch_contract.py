"""What the data pipeline hands the model, defined once for both sides.

`data/` and `models/` do not import each other (data streams clips for any model; the model takes
tensors from any loader), yet they must agree on a few facts of the batch: the frame selector's
score order, which the temporal gates and the rank allocators read by position; the label value the
loss ignores; and how token sequences are padded into a batch. Those facts live here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The last dimension of the selector's frame scores float [B, K, 3], in this order.
FRAME_SCORE_NAMES = ("entropy", "scene_change", "motion")
ENTROPY, SCENE_CHANGE, MOTION = (FRAME_SCORE_NAMES.index(n) for n in FRAME_SCORE_NAMES)

# Labels with this value are left out of the loss (the torch / transformers convention).
IGNORE_INDEX = -100


def right_pad(
    examples: Sequence[dict[str, torch.Tensor]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad token sequences into a batch.

    Args:
        examples: per sequence {"input_ids": long [L_i], "labels": long [L_i]}.
        pad_token_id: the id written after each sequence.
    Returns:
        {"input_ids": long [B, L], "labels": long [B, L] (`IGNORE_INDEX` on padding),
        "attention_mask": long [B, L] (1 on tokens, 0 on padding)}, L = max L_i.
    """
    lengths = torch.tensor([int(e["input_ids"].numel()) for e in examples])
    width = int(lengths.max())
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : lengths[row]] = e["input_ids"]
        labels[row, : lengths[row]] = e["labels"]
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
