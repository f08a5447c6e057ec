"""Weight memory of the quantized formats, side by side: bytes per parameter of the quantized linears
(NF4 + double quant, NF4, LLM.int8, bf16) against the 4-bit floor (0.5 B) and QLoRA's 4.127 bits
(0.516 B), and whole-model footprint ratios to bf16 for the tiny and 1b presets.

    python -m benchmarks.quant_memory --device cpu [--quick]

Bytes are read off real bitsandbytes tensors (see `models.footprint`, which the tests check against
an actual quantized `from_pretrained`); nothing is timed, so the figures do not depend on the device.
"""

import torch

from benchmarks.harness import parse_args, write_result
from models.footprint import (
    COMPUTE_DTYPE,
    FORMATS,
    LLAMA_VOCAB_SIZE,
    NF4_FLOOR_BYTES,
    QLORA_DQ_BITS,
    preset_footprint,
)

# LLM vocabulary per preset: tiny's tokenizer is trained to at most 1000 tokens (`create_pretrained`),
# 1b stands for a LLaMA-family model with LLaMA's vocabulary.
VOCAB_SIZES = {"tiny": 1000, "1b": LLAMA_VOCAB_SIZE}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    presets = ("tiny",) if args.quick else ("tiny", "1b")
    figures, ratios = {}, {}
    for preset in presets:
        report = preset_footprint(preset, vocab_size=VOCAB_SIZES[preset])
        per_format = report["formats"]
        bf16_total = per_format["bf16"]["total"]["bytes"]
        figures[preset] = {
            "vocab_size": report["vocab_size"],
            "params": per_format["bf16"]["total"]["params"],
            "total_bytes": {fmt: per_format[fmt]["total"]["bytes"] for fmt in FORMATS},
            "component_bytes": {
                fmt: {c: row["bytes"] for c, row in per_format[fmt]["components"].items()} for fmt in FORMATS
            },
            # bf16 keeps the same linears at the element size of the dtype
            "quantized_linear_bytes_per_param": {
                fmt: per_format[fmt]["quantized_linear_bytes_per_param"] or float(COMPUTE_DTYPE.itemsize)
                for fmt in FORMATS
            },
        }
        for fmt in ("nf4-dq", "nf4", "int8"):
            ratios[f"{preset}/total_bytes_{fmt}_over_bf16"] = per_format[fmt]["total"]["bytes"] / bf16_total
        dq = figures[preset]["quantized_linear_bytes_per_param"]["nf4-dq"]
        ratios[f"{preset}/nf4-dq_linear_bytes_over_4bit_floor"] = dq / NF4_FLOOR_BYTES
        ratios[f"{preset}/nf4-dq_linear_bytes_over_qlora_4.127bit"] = dq / (QLORA_DQ_BITS / 8)
    write_result(
        "quant_memory",
        device,
        config={
            "presets": list(presets),
            "formats": list(FORMATS),
            "compute_dtype": str(COMPUTE_DTYPE),
            "floor_bytes_per_param": NF4_FLOOR_BYTES,
            "qlora_bytes_per_param": QLORA_DQ_BITS / 8,
        },
        figures=figures,
        ratios=ratios,
        out=args.out,
    )


if __name__ == "__main__":
    main()
