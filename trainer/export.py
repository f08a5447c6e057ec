"""Export a trained adapter merged into its base, as one 16-bit model for inference.

``python -m trainer.export --adapter outputs/demo/adapter --out outputs/demo/merged [--dtype bfloat16]``

The adapter was trained against the *dequantized* 4-bit weights, not the original 16-bit ones,
so the merge starts from the quantized base exactly as training saw it: load it quantized,
dequantize every 4-bit/8-bit linear (transformers' ``dequantize``), add the LoRA update
(peft's ``merge_and_unload``), and save the result with ``save_pretrained`` together with the
processor. Merging into a still-quantized model would re-quantize the sum and lose the update's
small values.

Only methods whose declaration (`models.methods`) says `mergeable` merge into plain weights: the
LoRA family and adalora. A method saved as a whole model (`full`) is re-saved in ``--dtype``.
Temporal LoRA (its update depends on each frame), prefix tuning and bottleneck adapters add
computation that no weight matrix holds: they are refused, and load with
``models.adapters.load_adapter``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel

from models.loading import dequantize_model, load_model
from models.method_spec import WHOLE_MODEL_FORMAT
from models.methods import METHODS, adapter_method
from models.modeling_video_llama import VideoLlamaForConditionalGeneration
from models.processor import VideoLlamaProcessor

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def export_merged(adapter_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Merge ``adapter_dir`` (written by the trainer) into its base and save to ``out_dir``."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    run_config = adapter_dir / "run_config.json"
    if not run_config.is_file():
        raise FileNotFoundError(f"{run_config} not found: point --adapter at a trainer's adapter folder")
    run = json.loads(run_config.read_text())
    method, model_cfg = adapter_method(run["adapter"]["method"]), run["model"]
    if method.saved_as == WHOLE_MODEL_FORMAT:
        model = VideoLlamaForConditionalGeneration.from_pretrained(adapter_dir, dtype=dtype)
        model.save_pretrained(out_dir)
        VideoLlamaProcessor.from_pretrained(adapter_dir).save_pretrained(out_dir)
        return out_dir
    if not method.mergeable:
        mergeable = [m.name for m in METHODS.values() if m.mergeable or m.saved_as == WHOLE_MODEL_FORMAT]
        raise ValueError(
            f"{adapter_dir} holds a {method.name!r} adapter, which cannot be merged into the base weights "
            f"(mergeable: {', '.join(mergeable)}); load it with models.adapters.load_adapter"
        )
    base = load_model(
        model_cfg["name_or_path"], quantization=model_cfg["quantization"], compute_dtype=dtype, device="cpu"
    )
    base = dequantize_model(base, model_cfg["quantization"])
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged = merged.to(dtype)
    merged.save_pretrained(out_dir)
    VideoLlamaProcessor.from_pretrained(adapter_dir).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", required=True, help="the run's adapter folder (<output_dir>/adapter)")
    parser.add_argument("--out", required=True, help="folder for the merged model")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    out = export_merged(args.adapter, args.out, DTYPES[args.dtype])
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
