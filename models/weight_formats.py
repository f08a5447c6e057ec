"""Weight formats, for the whole model or per part: what `model.quantization` names.

`model.quantization` is either one format of `QUANTIZATIONS` for the two big towers (the ViT and the
LLM, as QLoRA stores them), or a mapping {part: format} over `models.towers.QUANTIZABLE` (vision,
fusion, llm) for hybrid bit widths:

    {vision: int8, llm: nf4}    an LLM.int8 ViT beside an NF4 LLM
    {vision: none, llm: nf4}    a 16-bit ViT (in the compute dtype) beside an NF4 LLM
    {fusion: nf4}               the frozen Q-Formers in NF4 too, beside the method's ViT and LLM

A big tower the mapping does not name takes the default it is resolved against: the adapter method's
own weight format, as "auto" does for the whole model (`trainer.compat.resolve_quantization`), so
`{vision: none}` under qlora is {vision: none, llm: nf4}. The fusion layers (both Q-Formers) stay in
the compute dtype unless named ("auto" there also means the method's format): they are 5-10% of the
weights, and the peers keep the glue between the towers 16-bit. A mapping that holds what one format
holds is that format (`canonical`): a run config names one load one way. The projection is never
quantized (`models.loading`).
"""

from __future__ import annotations

from collections.abc import Mapping

from .towers import QUANTIZABLE, QUANTIZED_BY_DEFAULT

QUANTIZATIONS = ("nf4", "nf4-nodq", "int8", "none")
FULL_PRECISION = "none"
AUTO = "auto"
# One format for every quantized tower, or tower → format.
Quantization = str | Mapping[str, str]


def tower_formats(quantization: Quantization, default: str | None = None) -> dict[str, str]:
    """Each quantizable part's format, in `QUANTIZABLE` order (vision, fusion, llm).

    Args:
        quantization: one of `QUANTIZATIONS` (the big towers; fusion stays "none"), or a mapping
            {part: format} whose values may also be "auto" (the default).
        default: the format of a big tower the mapping leaves out, and of any part set to "auto";
            None: every big tower must be named.
    Raises:
        ValueError naming the part or value and what is allowed.
    """
    if isinstance(quantization, str):
        if quantization == AUTO and default is not None:
            quantization = default
        _check_format("quantization", quantization)
        return {
            part: quantization if part in QUANTIZED_BY_DEFAULT else FULL_PRECISION for part in QUANTIZABLE
        }
    if not isinstance(quantization, Mapping) or not quantization:
        raise ValueError(
            f"quantization must be one of {QUANTIZATIONS} or a non-empty mapping over "
            f"{tuple(QUANTIZABLE)}; got {quantization!r}"
        )
    unknown = sorted(set(quantization) - set(QUANTIZABLE))
    if unknown:
        raise ValueError(
            f"quantization names {unknown}: only {tuple(QUANTIZABLE)} can be stored quantized "
            "(fusion: both Q-Formers; the projection stays in the compute dtype)"
        )
    formats = {}
    for name in QUANTIZABLE:
        value = quantization.get(name, AUTO if name in QUANTIZED_BY_DEFAULT else FULL_PRECISION)
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
    """The one format when `formats` holds what it holds (the big towers in it, fusion in the compute
    dtype), else the mapping {part: format}."""
    big = {formats[name] for name in QUANTIZED_BY_DEFAULT}
    rest = {formats.get(name, FULL_PRECISION) for name in QUANTIZABLE if name not in QUANTIZED_BY_DEFAULT}
    if len(big) == 1 and rest <= {FULL_PRECISION}:
        return big.pop()
    return dict(formats)


def held_formats(quantization: Quantization) -> set[str]:
    """The formats the towers of `quantization` (resolved: no "auto") are stored in."""
    return set(tower_formats(quantization).values())


def is_quantized(quantization: Quantization) -> bool:
    """Whether any tower of `quantization` (resolved) is stored in 4 or 8 bit."""
    return held_formats(quantization) != {FULL_PRECISION}


def describe(quantization: Quantization) -> str:
    """`quantization` as text: "nf4", or "vision int8, llm nf4" for a mapping (fusion named when it
    is quantized: "vision nf4, fusion nf4, llm nf4")."""
    formats = tower_formats(quantization)
    same = canonical(formats)
    if isinstance(same, str):
        return same
    shown = [(t, f) for t, f in formats.items() if t in QUANTIZED_BY_DEFAULT or f != FULL_PRECISION]
    return ", ".join(f"{t} {f}" for t, f in shown)
