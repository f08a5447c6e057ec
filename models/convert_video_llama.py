"""Convert an original Video-LLaMA vision-language branch checkpoint into this model.

    python -m models.convert_video_llama --checkpoint checkpoint_9.pth --base DIR --out DIR

The original (DAMO-NLP-SG/Video-LLaMA) saves a `checkpoint_*.pth` whose `model` dict holds the
trained video branch: `video_Qformer.*` (a BERT `BertLMHeadModel`-style Q-Former whose text parts
— word/position embeddings, text FFN, LM head — are removed, so only the query path remains),
`video_query_tokens`, `video_frame_position_embedding.weight` and `llama_proj.*`, plus buffers.
Those map one to one onto this model's transformers `Blip2QFormerModel` and friends; only the names
differ. A frame Q-Former (`Qformer.*`, `query_tokens`) and BLIP-2's `ln_vision` are mapped too
when a checkpoint carries them. Everything else is reported by name and not loaded.

`--base` is a `save_pretrained` directory of this model (e.g. from `models.assemble`): the vision
tower and LLM come from it, the converted tensors replace its video branch, and the result (with
the base's processor files) is saved to `--out`.
"""

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .processor import CONFIG_NAME as PROCESSOR_CONFIG_NAME
from .processor import VideoLlamaProcessor
from .towers import VIDEO_BRANCH, prefixes_of

# Original name → this model's name, applied in order (first the module, then the inner renames).
_RENAMES = (
    (r"^video_Qformer\.bert\.", "video_qformer."),
    (r"^Qformer\.bert\.", "qformer."),
    (r"^video_frame_position_embedding\.", "frame_position_embedding."),
    (r"^llama_proj\.", "video_projection."),
    (r"^ln_vision\.", "vision_model.post_layernorm."),
    # BERT embeddings of a query-only Q-Former are just the LayerNorm over the queries.
    (r"\.embeddings\.LayerNorm\.", ".layernorm."),
    # BertAttention.self (query/key/value) is Blip2QFormerAttention.attention.
    (r"\.(attention|crossattention)\.self\.", r".\1.attention."),
)
# Tensors of the original that hold no weights: BERT's absolute position index (queries take no
# positions) and rotary frequency tables (recomputed from the config).
_IGNORED = re.compile(r"(^|\.)(position_ids|inv_freq)$")
# This model's parameters a Video-LLaMA branch checkpoint is expected to provide.
VIDEO_BRANCH_PREFIXES = prefixes_of(VIDEO_BRANCH)
# Which config field decides a tensor's shape, to say what to change when shapes differ.
_SHAPE_HINTS = {
    "video_query_tokens": "num_video_query_tokens / video_qformer_config.hidden_size",
    "query_tokens": "num_query_tokens / qformer_config.hidden_size",
    "frame_position_embedding.weight": "max_frames",
    "video_projection.weight": "text_config.hidden_size",
}


@dataclass
class Conversion:
    """Result of `convert_state_dict`: tensors under this model's names and what did not map."""

    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # video-branch parameters the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # original keys with no place in this model
    ignored: list[str] = field(default_factory=list)  # original buffers without weights

    def report(self) -> dict:
        return {
            "converted": len(self.state_dict),
            "missing": self.missing,
            "unexpected": self.unexpected,
            "ignored": self.ignored,
        }


def rename(original_key: str) -> str:
    """This model's name for an original Video-LLaMA key (unchanged if no rule applies)."""
    key = original_key
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def load_original(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an original checkpoint (`{"model": {...}, ...}` or a bare state dict).

    `weights_only=True`: the pickle may hold tensors and plain containers only, no code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (expected a dict with a 'model' entry)")
    return state


def convert_state_dict(original: dict[str, torch.Tensor], model: nn.Module) -> Conversion:
    """Map `original` onto `model`'s names, cast to the target dtypes, and check every shape.

    Raises:
        ValueError naming every original key whose tensor shape differs from its target's, with both
        shapes and the config field that sets it.
    """
    targets = model.state_dict()
    result = Conversion()
    mismatches = []
    for key, tensor in original.items():
        if _IGNORED.search(key):
            result.ignored.append(key)
            continue
        name = rename(key)
        if name not in targets or not isinstance(tensor, torch.Tensor):
            result.unexpected.append(key)
            continue
        target = targets[name]
        if tensor.shape != target.shape:
            hint = f" (set by config {_SHAPE_HINTS[name]})" if name in _SHAPE_HINTS else ""
            mismatches.append(
                f"{key} -> {name}: checkpoint {list(tensor.shape)} vs model {list(target.shape)}{hint}"
            )
            continue
        result.state_dict[name] = tensor.to(target.dtype)
    if mismatches:
        raise ValueError("checkpoint shapes do not match the model:\n  " + "\n  ".join(mismatches))
    result.missing = [
        k for k in targets if k.startswith(VIDEO_BRANCH_PREFIXES) and k not in result.state_dict
    ]
    return result


def convert_checkpoint(
    checkpoint: str | Path, base: str | Path, out: str | Path, *, dtype: torch.dtype | None = None
) -> Conversion:
    """Load `base`, put the converted checkpoint into it, save to `out` (+ processor); returns the
    conversion (its `report()` is what the CLI prints)."""
    model = VideoLlamaForConditionalGeneration.from_pretrained(base, dtype=dtype)
    conversion = convert_state_dict(load_original(checkpoint), model)
    result = model.load_state_dict(conversion.state_dict, strict=False)
    assert not result.unexpected_keys  # every converted name was checked against the model above
    out = Path(out)
    model.save_pretrained(out)
    if (Path(base) / PROCESSOR_CONFIG_NAME).is_file():
        VideoLlamaProcessor.from_pretrained(base).save_pretrained(out)
    return conversion


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="original checkpoint_*.pth")
    parser.add_argument("--base", required=True, type=Path, help="this model, saved (e.g. models.assemble)")
    parser.add_argument("--out", required=True, type=Path, help="where the converted model is saved")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    conversion = convert_checkpoint(args.checkpoint, args.base, args.out, dtype=dtype)
    print(json.dumps(conversion.report(), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
