"""Build one Video-LLaMA from released parts and save it as one transformers model.

    python -m models.assemble --blip2 DIR --llm DIR --out DIR [--dtype bfloat16]

Parts:
- a BLIP-2 checkpoint in transformers' `Blip2ForConditionalGeneration` layout (e.g. a
  `Salesforce/blip2-*` snapshot): its `vision_model.*`, `qformer.*` and `query_tokens` are this
  model's vision tower, frame Q-Former and frame queries under the same names (its own language
  model and `language_projection` are not read);
- any transformers causal-LM directory (weights + tokenizer): it becomes `language_model`.

The parts Video-LLaMA adds (video Q-Former, video queries, frame position embedding, projection)
start from random init; `models.convert_video_llama` fills them from a released Video-LLaMA
checkpoint. The tokenizer gains the `<video>` placeholder (and the embeddings a row, if the
vocabulary has no spare one); the result loads with `from_pretrained` / `load_model` and
`VideoLlamaProcessor.from_pretrained`.
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, Blip2Config, PreTrainedTokenizerBase

from .configuration_video_llama import VideoLlamaConfig
from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .processor import VideoLlamaProcessor
from .tokenizer import VIDEO_TOKEN
from .towers import BLIP2_TOWERS, VIDEO_BRANCH, prefixes_of

# Parameters read from a BLIP-2 checkpoint: its vision tower and frame Q-Former (`models.towers`).
BLIP2_PREFIXES = prefixes_of(BLIP2_TOWERS)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_safetensors(directory: str | Path, keep: Callable[[str], bool] = lambda _: True) -> dict:
    """Tensors of a `save_pretrained` directory (one file or sharded with an index) whose name passes
    `keep`; other tensors are never read from disk."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {directory}")
    tensors = {}
    for name in files:
        with safe_open(directory / name, framework="pt") as f:
            for key in f.keys():
                if keep(key):
                    tensors[key] = f.get_tensor(key)
    return tensors


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, video_token: str = VIDEO_TOKEN) -> None:
    """Add the video placeholder and fill the special tokens the processor needs, in place.

    A missing pad token becomes eos (as Video-LLaMA does: padding is masked out of attention and
    loss anyway); a missing bos (Qwen2-style tokenizers) also becomes eos, the document separator
    such tokenizers were trained with.
    """
    tokenizer.add_special_tokens({"additional_special_tokens": [video_token]})
    if tokenizer.eos_token is None:
        raise ValueError("the LLM tokenizer has no eos token; captions could not end")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token


def assembled_config(
    blip2: Blip2Config,
    text_config: AutoConfig,
    *,
    num_video_query_tokens: int = 32,
    max_frames: int = 32,
    video_qformer_layers: int = 2,
) -> VideoLlamaConfig:
    """VideoLlamaConfig from a BLIP-2 config and an LLM config.

    The video Q-Former copies the frame Q-Former's width (Video-LLaMA builds both from
    bert-base), with `video_qformer_layers` layers that all cross-attend to the frame tokens.
    max_frames defaults to Video-LLaMA's `max_frame_pos` (32), so its frame position embedding converts.
    """
    if blip2.model_type != "blip-2":
        raise ValueError(f"--blip2 must hold a BLIP-2 config (model_type 'blip-2'), got {blip2.model_type!r}")
    qformer = blip2.qformer_config.to_dict()
    video_qformer = {
        **qformer,
        "num_hidden_layers": video_qformer_layers,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": qformer["hidden_size"],
    }
    return VideoLlamaConfig(
        vision_config=blip2.vision_config.to_dict(),
        qformer_config=qformer,
        video_qformer_config=video_qformer,
        text_config=text_config.to_dict(),
        num_query_tokens=blip2.num_query_tokens,
        num_video_query_tokens=num_video_query_tokens,
        max_frames=max_frames,
        initializer_range=blip2.initializer_range,
    )


def assemble(
    blip2_dir: str | Path,
    llm_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    num_video_query_tokens: int = 32,
    max_frames: int = 32,
    prompt: str = "describe the video.",
) -> Path:
    """Write the assembled model, tokenizer and processor settings to `out_dir`; returns it.

    Raises if a BLIP-2 tensor is missing or the towers do not fit together (e.g. the Q-Former's
    `encoder_hidden_size` differs from the ViT width; the error names both numbers).
    """
    blip2 = AutoConfig.from_pretrained(blip2_dir)
    text_config = AutoConfig.from_pretrained(llm_dir)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    config = assembled_config(
        blip2, text_config, num_video_query_tokens=num_video_query_tokens, max_frames=max_frames
    )

    state_dict = read_safetensors(blip2_dir, keep=lambda key: key.startswith(BLIP2_PREFIXES))
    state_dict.update(
        {f"language_model.{k}": v for k, v in read_safetensors(llm_dir).items()},
    )
    # from_pretrained with a state dict: names are checked against the model, shapes too, and
    # what no part provides (the video branch) is initialised by `_init_weights`.
    model, info = VideoLlamaForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=state_dict, dtype=dtype, output_loading_info=True
    )
    _check_loading_info(info)

    prepare_tokenizer(tokenizer, config.video_token)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.video_token_index = tokenizer.convert_tokens_to_ids(config.video_token)
    for gen_config in (model.generation_config, model.language_model.generation_config):
        gen_config.pad_token_id = tokenizer.pad_token_id
        gen_config.bos_token_id = tokenizer.bos_token_id
        gen_config.eos_token_id = tokenizer.eos_token_id

    processor = VideoLlamaProcessor(
        tokenizer, num_video_tokens=num_video_query_tokens, prompt=prompt, video_token=config.video_token
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# Parameters no part provides: the video branch Video-LLaMA adds on top of BLIP-2.
_NEW_PREFIXES = prefixes_of(VIDEO_BRANCH)


def _check_loading_info(info: dict) -> None:
    """Fail on any gap that is not the (expected) video branch, naming the keys."""
    missing = [k for k in info["missing_keys"] if not k.startswith(_NEW_PREFIXES)]
    problems = {
        "missing from the parts": missing,
        "unexpected in the parts": list(info["unexpected_keys"]),
        "wrong shape": [str(m) for m in info.get("mismatched_keys", [])],
    }
    problems = {what: keys for what, keys in problems.items() if keys}
    if problems:
        raise ValueError(f"the BLIP-2 and LLM checkpoints do not fit this model: {problems}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blip2", required=True, type=Path, help="Blip2ForConditionalGeneration directory")
    parser.add_argument("--llm", required=True, type=Path, help="causal-LM directory with tokenizer")
    parser.add_argument("--out", required=True, type=Path, help="where the assembled model is saved")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--num-video-query-tokens", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=32)
    parser.add_argument("--prompt", default="describe the video.")
    args = parser.parse_args(argv)
    out = assemble(
        args.blip2,
        args.llm,
        args.out,
        dtype=DTYPES[args.dtype],
        num_video_query_tokens=args.num_video_query_tokens,
        max_frames=args.max_frames,
        prompt=args.prompt,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
