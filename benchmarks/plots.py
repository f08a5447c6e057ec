"""Plots of benchmark results, drawn from their JSON alone (`benchmarks.report` calls them).

`PLOTTERS` maps a benchmark name to a function ``(result, png_path) -> bool``: whether it drew one
(a result without the figures a plot needs, from an older version say, gets none). Times are drawn
relative to a reference variant of the same run, never in seconds, for the same reason the tables
show ratios: on a shared CPU an absolute time says more about the machine's load than the code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 2**20
# scaling's variants: "<policy>/<checkpointing>", drawn as colour (policy) x line style (checkpointing)
_COLOURS = {"selection": "tab:blue", "uniform": "tab:orange"}
_LINES = {"plain": "-", "checkpointing": "--"}
_REFERENCE = "uniform/plain"


def plot_scaling(result: dict[str, Any], png: Path) -> bool:
    """2 x 2 panels: step time and step peak memory against frames K (fixed B) and batch size B
    (fixed K), one line per variant. Time is relative to the reference variant's step at the
    sweep's smallest point; memory is the step's peak above its start, in MiB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    config, figures = result["config"], result["figures"]
    if not figures.get("by_frames") or not figures.get("by_batch"):
        return False
    sweeps = {
        "frames": (figures["by_frames"], f"frames K (B={config['frames_sweep']['batch_size']})"),
        "batch": (figures["by_batch"], f"batch size B (K={config['batch_sweep']['k']})"),
    }
    fig = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for col, (sweep, xlabel) in enumerate(sweeps.values()):
        xs = sorted(sweep, key=int)
        reference = sweep[xs[0]][_REFERENCE]["step_s"]
        for variant in sweep[xs[0]]:
            policy, checkpointing = variant.split("/")
            style = {"color": _COLOURS.get(policy), "linestyle": _LINES.get(checkpointing), "marker": "o"}
            points = [int(x) for x in xs]
            axes[0, col].plot(
                points, [sweep[x][variant]["step_s"] / reference for x in xs], label=variant, **style
            )
            axes[1, col].plot(points, [sweep[x][variant]["peak_bytes"] / MIB for x in xs], **style)
        axes[1, col].set_xlabel(xlabel)
        for row in (0, 1):
            axes[row, col].set_xscale("log", base=2)
            axes[row, col].set_xticks([int(x) for x in xs], [str(x) for x in xs])
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"step time / {_REFERENCE} at smallest point")
    axes[1, 0].set_ylabel("step peak above start (MiB)")
    axes[0, 0].legend(fontsize=8)
    machine = result["machine"]
    quick = ", --quick sizes" if config.get("quick") else ""
    fig.suptitle(
        f"scaling on {machine.get('device')} ({machine.get('device_name')}{quick}), {config.get('method')}"
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80, metadata={"Software": None})
    return True


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], bool]] = {"scaling": plot_scaling}
