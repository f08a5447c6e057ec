"""The qualitative evaluation report: one self-contained HTML page (images inlined as base64 PNG).

Per clip: the candidate frame strip with the frames the selector kept outlined, the temporal
gates as a heatmap (temporal adapters only; kept frames inside a SynthVid event outlined) next to
the video Q-Former's attention over the kept frames, the generated caption against the references,
and the top-5 videos its first reference retrieves (when the model has a retrieval head).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainer.evaluation.clip_results import ClipResult
from trainer.evaluation.gate_metrics import event_frame_labels

_KEPT = (255, 140, 0)  # outline of the kept frames
_BORDER = 3


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def frame_strip(frames: np.ndarray, selected: Sequence[int], height: int = 64) -> Image.Image:
    """Candidate frames uint8 [N, 3, H, W] side by side; kept ones outlined, the others dimmed."""
    tiles = []
    kept = set(int(i) for i in selected)
    for index, frame in enumerate(frames):
        tile = Image.fromarray(np.ascontiguousarray(frame.transpose(1, 2, 0)))
        tile = tile.resize((max(1, round(tile.width * height / tile.height)), height))
        if index not in kept:
            tile = Image.blend(tile, Image.new("RGB", tile.size), 0.55)
        framed = Image.new("RGB", (tile.width + 2 * _BORDER, height + 2 * _BORDER), (255, 255, 255))
        framed.paste(tile, (_BORDER, _BORDER))
        if index in kept:
            ImageDraw.Draw(framed).rectangle(
                [0, 0, framed.width - 1, framed.height - 1], outline=_KEPT, width=_BORDER
            )
        tiles.append(framed)
    strip = Image.new("RGB", (sum(t.width for t in tiles), height + 2 * _BORDER), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width
    return strip


# Outline of the kept frames that show an event (SynthVid ground truth) on the gate heatmap.
EVENT_COLOUR = "#ff2020"


def gate_heatmap(gates: Mapping[str, Sequence[float]], events: Sequence[bool] | None = None) -> Image.Image:
    """Gates (layer → K values in [0, 1]) as a layers × kept-frames heatmap.

    Args:
        gates: gated layer name → the clip's K gates.
        events: bool [K], whether each kept frame shows an event (`gate_metrics.event_frame_labels`):
            those columns are outlined in `EVENT_COLOUR` and their ticks read "k*", so a gate that
            finds the events is bright inside the outlines. None: no ground truth, nothing drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    names = list(gates)
    grid = np.array([gates[n] for n in names], dtype=np.float32)  # [layers, K]
    marked = np.zeros(grid.shape[1], dtype=bool) if events is None else np.asarray(events, dtype=bool)
    if marked.shape != (grid.shape[1],):
        raise ValueError(f"events must be {grid.shape[1]} booleans, one per kept frame; got {marked.shape}")
    fig = Figure(figsize=(1.2 + 0.5 * grid.shape[1], 0.8 + 0.22 * len(names)))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_yticks(
        range(len(names)), [n.replace("vision_model.encoder.layers.", "vit.") for n in names], fontsize=6
    )
    ax.set_xticks(range(grid.shape[1]), [f"{k}*" if m else str(k) for k, m in enumerate(marked)], fontsize=6)
    for k in np.flatnonzero(marked):
        ax.add_patch(
            Rectangle((k - 0.5, -0.5), 1, len(names), fill=False, edgecolor=EVENT_COLOUR, linewidth=2)
        )
    ax.set_xlabel("kept frame (* event)" if marked.any() else "kept frame", fontsize=7)
    fig.colorbar(image, ax=ax, label="gate")
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])


def attention_heatmap(attention: np.ndarray, kept: Sequence[int]) -> Image.Image:
    """Video-query attention float [Lc, Qv, K] as one queries × kept-frames panel per cross-attention layer.

    Columns are labelled with the candidate indices of the kept frames (``kept``, K of them). One
    panel per layer rather than their mean: Video-LLaMA's video Q-Former cross-attends in each of
    its (two) layers, the first from the learned queries, the next after they have read the frames
    once, and a mean would blur a layer that picks frames into one that spreads evenly. All panels
    share one colour scale from 0 to the largest share, so the layers compare at a glance.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.asarray(attention, dtype=np.float32)
    if grid.ndim != 3 or grid.shape[-1] != len(kept):
        raise ValueError(
            f"attention must be [layers, queries, {len(kept)} kept frames], got shape {grid.shape}"
        )
    layers, queries, k = grid.shape
    fig = Figure(figsize=(1.0 + layers * (0.4 + 0.25 * k), 0.9 + 0.08 * queries), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, layers, squeeze=False)[0]
    top = float(grid.max())
    for layer, ax in enumerate(axes):
        image = ax.imshow(grid[layer], vmin=0.0, vmax=top, cmap="magma", aspect="auto")
        ax.set_title(f"layer {layer}", fontsize=7)
        ax.set_xticks(range(k), [str(int(i)) for i in kept], fontsize=6)
        ax.set_xlabel("kept frame (candidate index)", fontsize=6)
        ax.set_yticks([])
    axes[0].set_ylabel(f"{queries} video queries", fontsize=7)
    fig.colorbar(image, ax=list(axes)).set_label("attention", fontsize=7)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.clip { border-top: 1px solid #ccc; padding: 0.8em 0; }
.scores td, .scores th { padding: 0.1em 0.8em; text-align: right; }
.pred { font-weight: bold; } .ok { color: #1a7f37; } .miss { color: #b42318; }
img { image-rendering: pixelated; }
.maps { display: flex; gap: 1.5em; align-items: flex-start; }
"""


def render_report(
    clips: Mapping[str, ClipResult],
    scores: Mapping[str, float],
    rankings: Mapping[str, Sequence[tuple[str, float]]],
    title: str,
    max_clips: int = 8,
) -> str:
    """The report's HTML: the scores table, then up to ``max_clips`` clips that kept their frames."""
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v:.4f}</td></tr>" for k, v in scores.items())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>",
        f"<table class='scores'>{rows}</table>",
    ]
    shown = [k for k, c in clips.items() if c.frames is not None][:max_clips]
    for key in shown:
        clip = clips[key]
        parts.append(f"<div class='clip'><h3>{esc(key)}</h3>")
        strip = _png(frame_strip(clip.frames, clip.selected))
        parts.append(
            f"<p>candidate frames (kept: {clip.selected})<br><img alt='frames' src='data:image/png;base64,{strip}'></p>"
        )
        maps = []
        if clip.gates:
            events = event_frame_labels(clip.meta, clip.selected, len(clip.frames))
            heat = _png(gate_heatmap(clip.gates, events))
            where = " (outlined: kept frames inside an event)" if events is not None and events.any() else ""
            maps.append(
                f"<p>temporal gates{where}<br><img alt='gates' src='data:image/png;base64,{heat}'></p>"
            )
        if clip.attention is not None:
            heat = _png(attention_heatmap(clip.attention, clip.selected))
            maps.append(
                f"<p>video Q-Former attention over the kept frames (uniform: 1/{len(clip.selected)})<br>"
                f"<img alt='attention' src='data:image/png;base64,{heat}'></p>"
            )
        if maps:
            parts.append(f"<div class='maps'>{''.join(maps)}</div>")
        prediction = esc(clip.prediction) if clip.prediction else "<i>(empty)</i>"
        refs = "".join(f"<li>{esc(r)}</li>" for r in clip.references)
        parts.append(
            f"<p>generated: <span class='pred'>{prediction}</span></p><p>references:</p><ul>{refs}</ul>"
        )
        if key in rankings:
            items = "".join(
                f"<li class='{'ok' if other == key else 'miss'}'>{esc(other)} ({sim:.3f}): "
                f"{esc(clips[other].references[0])}</li>"
                for other, sim in rankings[key]
            )
            parts.append(f"<p>retrieval top-5 for its first reference:</p><ol>{items}</ol>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, *args, **kwargs) -> Path:
    """`render_report(*args, **kwargs)` written to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(*args, **kwargs), encoding="utf-8")
    return path
