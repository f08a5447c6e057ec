"""Weight memory of a Video-LLaMA per component and weight format, measured on real bitsandbytes tensors.

    python -m models.footprint --preset 1b [--vocab-size 32000] [--json]

How it is measured without holding the model in memory:

1. the preset is built on the meta device (shapes only, no storage);
2. its linears are swapped for bitsandbytes layers by transformers' own `replace_with_bnb_linear`
   with the `BitsAndBytesConfig` that `models.loading` passes to `from_pretrained`, so exactly the
   linears a quantized load would quantize are counted as quantized (same skip list);
3. for every distinct (shape, settings) of a quantized weight, one random bf16 tensor of that
   shape is quantized by bitsandbytes (`Params4bit` / `Int8Params`, the objects a quantized load
   holds), and its bytes are read off the result: packed storage + every tensor of its quantization
   state. The byte count depends on the shape and the settings only, never on the values.

A format is one of `FORMATS` for the whole model, or a format per part ({"vision": "int8", "llm":
"nf4"}, `model.quantization`'s mapping, in `models.loading` names): each tower's linears are then
swapped for the layers of its own format, as `models.loading.load_model` leaves them.

Everything not quantized is counted at 2 bytes (bf16, the compute dtype). Only parameters count:
buffers (rotary tables, position ids) are neither trained nor quantized and are left out.
`model_weight_bytes` applies the same accounting to a model that was really loaded, which is how
the tests check this estimate against `from_pretrained(..., quantization_config=...)`.
"""

import argparse
import json
from collections.abc import Iterable, Mapping
from typing import Any

import bitsandbytes as bnb
import torch
from torch import nn
from transformers.integrations.bitsandbytes import replace_with_bnb_linear

from .configuration_video_llama import VideoLlamaConfig
from .loading import DEFAULT_SKIP_MODULES, quantization_config, skip_other_formats
from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .parameters import logical_numel
from .presets import preset_fields
from .towers import TOWER_NAMES, tower_of
from .weight_formats import FULL_PRECISION, Quantization, describe, tower_formats

# The report's components are the towers of `models.towers`; the frame Q-Former's column keeps the
# name "qformer" that the reports and the benchmark results written with them have always used.
_REPORT_NAMES = {"frame_qformer": "qformer"}
COMPONENTS = tuple(_REPORT_NAMES.get(name, name) for name in TOWER_NAMES)
# Footprint format name -> `models.loading` quantization name.
FORMATS = {"bf16": "none", "int8": "int8", "nf4": "nf4-nodq", "nf4-dq": "nf4"}
# A footprint format name, or {tower: `models.loading` quantization} (hybrid bit widths).
Format = str | Mapping[str, str]
COMPUTE_DTYPE = torch.bfloat16
NF4_FLOOR_BYTES = 0.5  # 4 bits per weight, nothing else
QLORA_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # QLoRA's figure for NF4 + double quant: 4.127 bits
LLAMA_VOCAB_SIZE = 32000


def component_of(param_name: str) -> str:
    """The component (one of `COMPONENTS`) a parameter name belongs to."""
    name = tower_of(param_name)
    if name is None:
        raise ValueError(f"parameter {param_name!r} belongs to no component of {COMPONENTS}")
    return _REPORT_NAMES.get(name, name)


def _quant_state_tensors(param: nn.Parameter) -> list[torch.Tensor]:
    """Every tensor a quantized weight keeps besides its storage.

    NF4: per-block absmax (fp32, or uint8 + nested fp32 absmax / offset with double quant) and the
    lookup tables (each layer holds its own copy, as a load shows). LLM.int8: per-row scales (SCB).
    """
    tensors = []
    state = getattr(param, "quant_state", None)
    if state is not None:
        tensors += [state.absmax, state.code]
        if state.nested:
            tensors += [state.offset, state.state2.absmax, state.state2.code]
    scb = getattr(param, "SCB", None)
    if scb is not None:
        tensors.append(scb)
    return [t for t in tensors if t is not None]


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def is_quantized(param: nn.Parameter) -> bool:
    return isinstance(param, (bnb.nn.Params4bit, bnb.nn.Int8Params))


def _empty_table() -> dict[str, dict[str, int]]:
    return {c: {"params": 0, "bytes": 0, "quantized_params": 0, "quantized_bytes": 0} for c in COMPONENTS}


def model_weight_bytes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-component parameter counts and bytes of a loaded model (quantized or not).

    Returns:
        {component: {"params", "bytes", "quantized_params", "quantized_bytes"}}; bytes of a quantized
        weight include its quantization state; the `quantized_*` entries cover quantized weights only.
    """
    return _weight_table(model.named_parameters(), {})


def _weight_table(named_parameters: Iterable[tuple[str, nn.Parameter]], cache: dict[tuple, int]) -> dict:
    table = _empty_table()
    for name, param in named_parameters:
        row = table[component_of(name)]
        n, size = logical_numel(param), stored_bytes(param, cache)
        row["params"] += n
        row["bytes"] += size
        if is_quantized(param):
            row["quantized_params"] += n
            row["quantized_bytes"] += size
    return table


def bytes_once_quantized(param: nn.Parameter, cache: dict[tuple, int]) -> int:
    """Bytes of `param` (a not-yet-quantized bnb parameter on meta) once bitsandbytes quantizes it.

    `cache` maps (kind, shape, settings) to bytes, so each distinct layer shape is quantized once.
    """
    shape = tuple(param.shape)
    if isinstance(param, bnb.nn.Params4bit):
        key = (
            "4bit",
            shape,
            param.blocksize,
            param.compress_statistics,
            param.quant_type,
            param.quant_storage,
        )
    else:
        key = ("int8", shape)
    if key not in cache:
        # Any values give the same byte count; a generator of its own leaves the caller's random
        # state alone (a run counts its memory between restoring its RNG and its first step).
        data = torch.randn(shape, dtype=COMPUTE_DTYPE, generator=torch.Generator().manual_seed(0))
        if key[0] == "4bit":
            real = bnb.nn.Params4bit(
                data,
                requires_grad=False,
                blocksize=param.blocksize,
                compress_statistics=param.compress_statistics,
                quant_type=param.quant_type,
                quant_storage=param.quant_storage,
            ).to("cpu")
        else:
            real = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False).to("cpu")
        cache[key] = _nbytes(real) + sum(map(_nbytes, _quant_state_tensors(real)))
    return cache[key]


def stored_bytes(param: nn.Parameter, cache: dict[tuple, int]) -> int:
    """Bytes `param` holds: its storage and quantization state; one still on the meta device (a
    model built for counting) as a load would store it: quantized by bitsandbytes, else in bf16."""
    if param.device.type != "meta":
        return _nbytes(param) + sum(map(_nbytes, _quant_state_tensors(param)))
    if is_quantized(param):
        return bytes_once_quantized(param, cache)
    return param.numel() * COMPUTE_DTYPE.itemsize


def quantization_of(fmt: Format) -> Quantization:
    """The `models.loading` quantization (one, or one per tower) of footprint format `fmt`."""
    if isinstance(fmt, str):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {tuple(FORMATS)} or a mapping over towers, got {fmt!r}")
        return FORMATS[fmt]
    tower_formats(fmt)  # every tower named, each in a known format
    return dict(fmt)


def format_name(fmt: Format) -> str:
    """How a report names `fmt`: the footprint name, or "vision int8, llm nf4" for a mapping."""
    return fmt if isinstance(fmt, str) else describe(fmt)


def meta_model(config: VideoLlamaConfig, fmt: Format) -> nn.Module:
    """`config`'s model on the meta device (shapes only) holding the layers a load in `fmt` holds:
    bitsandbytes linears where a quantized load has them (each tower in its own format), and the
    ``is_loaded_in_4bit/8bit`` flags, so that adapters can be applied to it as to the loaded model."""
    with torch.device("meta"):
        model = VideoLlamaForConditionalGeneration(config)
    formats = tower_formats(quantization_of(fmt))
    for quantization in sorted(set(formats.values()) - {FULL_PRECISION}):
        # Towers of other formats are left alone by this format's swap, as a load's skip list does.
        others = skip_other_formats(formats, quantization)
        qconfig = quantization_config(quantization, COMPUTE_DTYPE, [*DEFAULT_SKIP_MODULES, *others])
        replace_with_bnb_linear(
            model, modules_to_not_convert=qconfig.llm_int8_skip_modules, quantization_config=qconfig
        )
        if qconfig.load_in_4bit:
            model.is_loaded_in_4bit = True
        else:
            model.is_loaded_in_8bit = True
    return model


def preset_config(preset: str, vocab_size: int = LLAMA_VOCAB_SIZE) -> VideoLlamaConfig:
    """The config of a preset with an LLM vocabulary of `vocab_size` (presets take theirs from a
    tokenizer; LLaMA's 32000 by default)."""
    fields = preset_fields(preset, text_config={"vocab_size": vocab_size})
    return VideoLlamaConfig(**fields, video_token_index=vocab_size - 1)


def estimate_weight_bytes(
    config: VideoLlamaConfig, fmt: Format, cache: dict[tuple, int] | None = None
) -> dict[str, dict[str, int]]:
    """`model_weight_bytes` of `config` loaded in `fmt` (a key of `FORMATS`, or a mapping
    {tower: `models.loading` quantization}), without building it."""
    return _weight_table(meta_model(config, fmt).named_parameters(), {} if cache is None else cache)


def summarize(table: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Totals and the bytes per parameter of the quantized linears (None when nothing is quantized)."""
    total = {key: sum(row[key] for row in table.values()) for key in next(iter(table.values()))}
    q_params = total["quantized_params"]
    return {
        "components": table,
        "total": total,
        "quantized_linear_bytes_per_param": total["quantized_bytes"] / q_params if q_params else None,
    }


def preset_footprint(
    preset: str, vocab_size: int = LLAMA_VOCAB_SIZE, formats: Iterable[Format] = tuple(FORMATS)
) -> dict[str, Any]:
    """Footprint of a preset in each format (the LLM vocabulary is a free choice: presets take
    theirs from a tokenizer; LLaMA's 32000 by default). Each format's entry (named by `format_name`)
    also says the format every quantized tower is stored in (`tower_formats`, `models.loading` names)."""
    config = preset_config(preset, vocab_size)
    cache: dict[tuple, int] = {}
    return {
        "preset": preset,
        "vocab_size": vocab_size,
        "compute_dtype": str(COMPUTE_DTYPE).removeprefix("torch."),
        "formats": {
            format_name(fmt): {
                **summarize(estimate_weight_bytes(config, fmt, cache)),
                "tower_formats": tower_formats(quantization_of(fmt)),
            }
            for fmt in formats
        },
    }


def format_table(report: dict[str, Any]) -> str:
    """Human-readable table: parameters per component, MiB per format, measured bytes/param."""
    formats = report["formats"]
    first = next(iter(formats.values()))
    # Each column as wide as its format's name ("vision none, llm nf4" for a per-tower format).
    widths = {fmt: max(14, len(fmt) + 6) for fmt in formats}
    label = max(8, *(len(fmt) + 2 for fmt in formats))
    lines = [
        f"preset {report['preset']} (vocab {report['vocab_size']}, unquantized weights in "
        f"{report['compute_dtype']})",
        f"{'component':<14}{'params':>14}" + "".join(f"{fmt + ' MiB':>{widths[fmt]}}" for fmt in formats),
    ]
    for component in [*COMPONENTS, "total"]:
        row = first["total"] if component == "total" else first["components"][component]
        cells = []
        for fmt, summary in formats.items():
            src = summary["total"] if component == "total" else summary["components"][component]
            cells.append(f"{src['bytes'] / 2**20:>{widths[fmt]}.2f}")
        lines.append(f"{component:<14}{row['params']:>14,}" + "".join(cells))
    lines.append("bytes/param of the quantized linears (measured on bitsandbytes tensors):")
    for fmt, summary in formats.items():
        value = summary["quantized_linear_bytes_per_param"]
        if value is not None:
            lines.append(f"  {fmt:<{label}}{value:.4f} B  ({8 * value:.3f} bits)")
    lines.append(
        f"  {'floor':<{label}}{NF4_FLOOR_BYTES:.4f} B (4 bits); QLoRA NF4+DQ {QLORA_DQ_BITS / 8:.4f} B"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, help="a key of models.presets.PRESETS")
    parser.add_argument("--vocab-size", type=int, default=LLAMA_VOCAB_SIZE, help="LLM vocabulary size")
    parser.add_argument(
        "--mixed",
        action="append",
        default=[],
        type=json.loads,
        help='a format per tower to add, as JSON: \'{"vision": "int8", "llm": "nf4"}\' (repeatable)',
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = preset_footprint(args.preset, vocab_size=args.vocab_size, formats=[*FORMATS, *args.mixed])
    print(json.dumps(report, indent=2) if args.json else format_table(report))


if __name__ == "__main__":
    main()
