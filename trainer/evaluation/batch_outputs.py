"""What evaluation computes for one batch of clips: captions, embeddings, choice likelihoods, gates.

Per batch of B clips with K kept frames each (``selected.frames`` [B, K, 3, H, W]):

- "caption": a greedy / beam generation from the ordered frames;
- "retrieval": the video embedding of every frame view (`frame_views`: ordered and the controls)
  and one text embedding per reference;
- forced choice (clips with SynthVid ground truth): log p(caption | frames) of each candidate of
  the clip's closed choice set (`data.synthvid_choices.choice_set`), for every frame view, and
  under the blank video (`frame_views.BLANK`: the captions' prior, which forced choice subtracts);
- the temporal gates of the ordered forward (temporal adapters);
- when asked (the clips the report draws), the video Q-Former's cross-attention over the ordered
  frames (`VideoLlamaForConditionalGeneration.video_frame_attention`), one more video encoding.

The views are computed here, while the batch's frames are on the device, so nothing K x 3 x H x W
per clip has to be kept for later.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data.batch import VideoBatch
from data.frame_selector import SelectedFrames
from data.synthvid_choices import choice_set
from models.retrieval_head import caption_tokens
from trainer.config import RunConfig
from trainer.evaluation.forced_choice import choice_log_likelihoods
from trainer.evaluation.frame_views import BLANK, ORDERED, frame_view
from trainer.evaluation.rerank import caption_log_likelihood
from trainer.evaluation.structured_metrics import has_ground_truth


@dataclass
class BatchOutputs:
    """Per clip of the batch (lists of length B).

    Attributes:
        predictions: generated captions ("" without "caption").
        embeddings: view → per clip float32 [E] video embedding (empty without "retrieval").
        texts: per clip float32 [R, E] reference embeddings, or None without "retrieval".
        choices: per clip the candidate captions (true one first), [] without ground truth or with
            forced choice off.
        choice_scores: view → per clip float64 [M] log-likelihoods, None without ground truth.
        choice_priors: per clip float64 [M] log p(candidate | blank video), None without ground truth.
        gates: per clip, gated layer name → its K gates ({} without temporal layers).
        attention: per clip float32 [Lc, Qv, K] video-query attention over the kept frames, per
            cross-attention layer of the video Q-Former; None unless asked for.
    """

    predictions: list[str]
    embeddings: dict[str, list[np.ndarray]] = field(default_factory=dict)
    texts: list[np.ndarray | None] = field(default_factory=list)
    choices: list[list[str]] = field(default_factory=list)
    choice_scores: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    choice_priors: list[np.ndarray | None] = field(default_factory=list)
    gates: list[dict[str, list[float]]] = field(default_factory=list)
    attention: list[np.ndarray | None] = field(default_factory=list)


def base_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def batch_outputs(
    model: Any,
    processor: Any,
    batch: VideoBatch,
    selected: SelectedFrames,
    cfg: RunConfig,
    tasks: tuple[str, ...],
    synced_ranks: bool,
    device: torch.device,
    attention: bool = False,
) -> BatchOutputs:
    """Everything evaluation keeps of one batch (see the module docstring); ``attention``: also
    the video Q-Former's attention maps (for the report)."""
    n = batch.batch_size
    views = (ORDERED, *cfg.eval.controls)
    out = BatchOutputs(
        predictions=[""] * n, texts=[None] * n, choices=[[] for _ in range(n)], attention=[None] * n
    )
    if "caption" in tasks:
        generated = generate_caption_ids(
            model, processor, selected, cfg.eval.max_new_tokens, cfg.eval.num_beams, synced_ranks, device
        )
        out.predictions = processor.decode(generated)
    if cfg.eval.forced_choice:
        out.choices = [choice_set(meta) if has_ground_truth(meta) else [] for meta in batch_metas(batch)]
    rows = [i for i, c in enumerate(out.choices) if c]  # the clips with a choice set
    for view in views:
        frames, scores = frame_view(view, selected.frames, selected.scores, batch.keys)
        if "retrieval" in tasks:
            out.embeddings[view] = list(model.embed_video(frames, scores).float().cpu().numpy())
        if view == ORDERED:
            # The gates of the latest forward over the B ordered clips, before the choice scoring's
            # forwards over (clip, candidate) pairs replace them.
            out.gates = _gates(model, n)
            if attention:
                maps = base_model(model).video_frame_attention(frames, scores)  # [B, Lc, Qv, K]
                out.attention = list(maps.cpu().numpy())
        if rows:
            features = _encode_rows(model, frames, scores, rows)
            out.choice_scores[view] = _choice_scores(model, processor, features, out.choices, rows, cfg)
    if rows:
        # The blank video is the same for every clip: encoded once. Its (clip, candidate) pairs are
        # still scored per clip, so that every rank runs the same number of forwards (ZeRO-3
        # gathers parameters in each).
        frames, scores = frame_view(BLANK, selected.frames, selected.scores, batch.keys)
        features = _encode_rows(model, frames, scores, [0]).expand(len(rows), -1, -1)
        out.choice_priors = _choice_scores(model, processor, features, out.choices, rows, cfg)
    if "retrieval" in tasks:
        out.texts = _embed_references(model, processor, batch.references, device)
    return out


def generate_caption_ids(
    model: Any,
    processor: Any,
    selected: SelectedFrames,
    max_new_tokens: int,
    num_beams: int,
    synced_ranks: bool,
    device: torch.device,
    min_new_tokens: int | None = None,
) -> torch.LongTensor:
    """Caption token ids long [B, T] (T <= max_new_tokens, pad after eos) of B clips' selected frames
    (``selected.frames`` [B, K, 3, H, W], ``selected.scores`` [B, K, S]), greedy or beam search from
    the processor's prompt. ``min_new_tokens``: eos is held back until that many tokens are out (a
    benchmark sets it to ``max_new_tokens``, so every run generates the same number of tokens)."""
    prompt = {k: v.to(device) for k, v in processor.generation_inputs(selected.frames.shape[0]).items()}
    return model.generate(
        pixel_values=selected.frames,
        frame_scores=selected.scores,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        do_sample=False,
        synced_gpus=synced_ranks,
        **prompt,
    )


def batch_metas(batch: VideoBatch) -> list[dict[str, Any]]:
    """The B samples' json metadata ({} each for a batch built without any)."""
    return batch.metas or [{} for _ in range(batch.batch_size)]


def _encode_rows(
    model: Any, frames: torch.Tensor, scores: torch.Tensor | None, rows: list[int]
) -> torch.Tensor:
    """Video tokens float [R, Qv, D] of the clips ``rows`` of frames [B, K, 3, H, W] (`encode_video`)."""
    index = torch.tensor(rows, device=frames.device)
    picked = None if scores is None else scores[index.to(scores.device)]
    return base_model(model).encode_video(frames[index], picked)


def _choice_scores(
    model: Any,
    processor: Any,
    features: torch.Tensor,
    choices: list[list[str]],
    rows: list[int],
    cfg: RunConfig,
) -> list[np.ndarray | None]:
    """Per clip float64 [M] log p(candidate | video), None for clips without a choice set.

    ``features`` [R, Qv, D] are the video tokens of the clips ``rows`` (those with a choice set):
    each clip is encoded once and its M candidates are scored on those tokens, since the encoder
    is most of a forward at SynthVid's sizes.
    """

    def score(pairs: list[tuple[int, str]]) -> np.ndarray:
        clips = torch.tensor([clip for clip, _ in pairs], device=features.device)
        texts = [text for _, text in pairs]
        return caption_log_likelihood(model, processor, texts, None, None, video_features=features[clips])

    table = choice_log_likelihoods(score, [choices[i] for i in rows], batch_size=cfg.eval.batch_size)
    out: list[np.ndarray | None] = [None] * len(choices)
    for row, i in enumerate(rows):
        out[i] = table[row]
    return out


def _embed_references(model: Any, processor: Any, references: list[list[str]], device: torch.device) -> list:
    """Text embeddings float32 [R_i, E] of each clip's references, tokenized as in training."""
    flat = [ref for refs in references for ref in refs]
    tokens = processor.pad([processor.training_example(ref) for ref in flat])
    ids, mask = caption_tokens(tokens["input_ids"], tokens["labels"], processor.tokenizer.pad_token_id)
    embeddings = model.embed_text(ids.to(device), mask.to(device)).float().cpu().numpy()
    bounds = np.cumsum([0] + [len(refs) for refs in references])
    return [embeddings[a:b] for a, b in itertools.pairwise(bounds.tolist())]


def _gates(model: Any, batch_size: int) -> list[dict[str, list[float]]]:
    """Per clip, the gates of the latest forward (empty dicts without temporal layers)."""
    if getattr(base_model(model), "frame_gate_context", None) is None:
        return [{} for _ in range(batch_size)]
    from models.temporal_lora import gate_statistics

    stats = gate_statistics(model)
    return [{name: gates[i].tolist() for name, gates in stats.items()} for i in range(batch_size)]
