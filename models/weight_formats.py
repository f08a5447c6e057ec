"""Weight formats, for the whole model or per tower: what `model.quantization` names.

`model.quantization` is either one format of `QUANTIZATIONS` for every quantized tower (the ViT and
the LLM, as QLoRA stores them), or a mapping {tower: format} over `models.towers.QUANTIZED_TOWERS`
for hybrid bit widths:

    {vision: int8, llm: nf4}    an LLM.int8 ViT beside an NF4 LLM
    {vision: none, llm: nf4}    a 16-bit ViT (in the compute dtype) beside an NF4 LLM

A tower the mapping does not name takes the default it is resolved against: the adapter method's
own weight format, as "auto" does for the whole model (`trainer.compat.resolve_quantization`), so
`{vision: none}` under qlora is {vision: none, llm: nf4}. A mapping whose towers all hold one format
is that format (`canonical`): a run config names one load one way. The aligner (both Q-Formers, the
projection) is never quantized (`models.loading`), so a mapping cannot name it.
"""

from __future__ import annotations

from collections.abc import Mapping

from .towers import QUANTIZED_TOWERS

QUANTIZATIONS = ("nf4", "nf4-nodq", "int8", "none")
FULL_PRECISION = "none"
AUTO = "auto"
# One format for every quantized tower, or tower → format.
Quantization = str | Mapping[str, str]


def tower_formats(quantization: Quantization, default: str | None = None) -> dict[str, str]:
    """Each quantized tower's format, in `QUANTIZED_TOWERS` order.

    Args:
        quantization: one of `QUANTIZATIONS` (every tower), or a mapping {tower: format} whose
            values may also be "auto" (the default).
        default: the format of a tower the mapping leaves out or sets to "auto"; None: every tower
            must be named.
    Raises:
        ValueError naming the tower or value and what is allowed.
    """
    if isinstance(quantization, str):
        if quantization == AUTO and default is not None:
            quantization = default
        _check_format("quantization", quantization)
        return dict.fromkeys(QUANTIZED_TOWERS, quantization)
    if not isinstance(quantization, Mapping) or not quantization:
        raise ValueError(
            f"quantization must be one of {QUANTIZATIONS} or a non-empty mapping over the towers "
            f"{QUANTIZED_TOWERS}; got {quantization!r}"
        )
    unknown = sorted(set(quantization) - set(QUANTIZED_TOWERS))
    if unknown:
        raise ValueError(
            f"quantization names {unknown}: only the towers {QUANTIZED_TOWERS} are stored quantized "
            "(the Q-Formers and the projection stay in the compute dtype)"
        )
    formats = {}
    for name in QUANTIZED_TOWERS:
        value = quantization.get(name, AUTO)
        if value == AUTO:
            if default is None:
                raise ValueError(f"quantization.{name} is not set and there is no default format to take")
            value = default
        _check_format(f"quantization.{name}", value)
        formats[name] = value
    return formats


def _check_format(key: str, value: object) -> None:
    if value not in QUANTIZATIONS:
        raise ValueError(f"{key} must be one of {QUANTIZATIONS}, got {value!r}")


def canonical(formats: Mapping[str, str]) -> Quantization:
    """The one format every tower holds, or the mapping {tower: format} when they differ."""
    held = set(formats.values())
    return held.pop() if len(held) == 1 else dict(formats)


def held_formats(quantization: Quantization) -> set[str]:
    """The formats the towers of `quantization` (resolved: no "auto") are stored in."""
    return set(tower_formats(quantization).values())


def is_quantized(quantization: Quantization) -> bool:
    """Whether any tower of `quantization` (resolved) is stored in 4 or 8 bit."""
    return held_formats(quantization) != {FULL_PRECISION}


def describe(quantization: Quantization) -> str:
    """`quantization` as text: "nf4", or "vision int8, llm nf4" for a mapping."""
    formats = tower_formats(quantization)
    same = canonical(formats)
    return same if isinstance(same, str) else ", ".join(f"{t} {f}" for t, f in formats.items())
