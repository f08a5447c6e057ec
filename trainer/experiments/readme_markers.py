"""The README marker splice: the text between two marker lines replaced, everything else kept.

Generated README sections (the SynthVid results of ``results_readme``, the benchmarks' Performance
section of ``benchmarks.report``) sit between a start and an end marker, so a generator rewrites
its own section and never a word around it.
"""

from __future__ import annotations


def replace_between_markers(text: str, section: str, start: str, end: str, where: str = "README") -> str:
    """``text`` with what lies between ``start`` and ``end`` replaced by ``section`` (stripped), the
    markers kept, each on its own line around it. ``where`` names the text in the error raised when
    it lacks exactly one ``start`` followed by one ``end`` (a ValueError, before anything is written)."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{where}: needs exactly one {start} line followed by one {end} line")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{section.strip()}\n{end}{tail}"
