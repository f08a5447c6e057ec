"""The frame selection CLI's picture: the candidate strip with the picks framed, the score curves,
and the chosen frames (`python -m data.frame_selector … --out sel.png`)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from batch_contract import FRAME_SCORE_NAMES


def load_candidates(path: str, n: int, height: int) -> torch.Tensor:
    """Decode n frames spread uniformly over the video at `path`: uint8 [n, 3, height, W].

    W keeps the video's aspect ratio (rounded to an even number of pixels).
    """
    import av

    from data.video_io import VideoDecodeError, decode_frames

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            width = max(2, round(height * stream.width / stream.height / 2) * 2)
    except (OSError, IndexError, av.FFmpegError) as exc:
        raise VideoDecodeError(f"cannot read a video stream from {path}: {exc}") from exc
    with open(path, "rb") as f:
        return decode_frames(f.read(), n, (height, width))


def _strip(frames: torch.Tensor, chosen: torch.Tensor, columns: int, thumb_height: int = 40):
    """uint8 [N, 3, H, W] → one uint8 [rows*h, columns*w, 3] numpy montage; picks framed in red."""
    n, _, h, w = frames.shape
    thumb_width = max(1, round(thumb_height * w / h))
    thumbs = F.interpolate(frames.float(), size=(thumb_height, thumb_width), mode="area").round().byte()
    border = 3
    tiles = torch.full((n, 3, thumb_height + 2 * border, thumb_width + 2 * border), 60, dtype=torch.uint8)
    tiles[chosen] = torch.tensor([230, 30, 30], dtype=torch.uint8).view(3, 1, 1)
    tiles[:, :, border:-border, border:-border] = thumbs
    rows = -(-n // columns)
    padded = torch.full((rows * columns, *tiles.shape[1:]), 255, dtype=torch.uint8)
    padded[:n] = tiles
    grid = padded.view(rows, columns, 3, *tiles.shape[2:]).permute(0, 3, 1, 4, 2)  # rows, th, cols, tw, 3
    return grid.reshape(rows * tiles.shape[2], columns * tiles.shape[3], 3).numpy()


def plot_selection(
    frames: torch.Tensor,
    scores: torch.Tensor,
    indices: torch.Tensor,
    hybrid: torch.Tensor,
    shots: torch.Tensor,
    args,
) -> None:
    """Write the CLI's PNG: candidate strip (picks in red), score curves over the detected shots
    (alternately shaded, cuts dotted), the K chosen frames.

    Args:
        frames: uint8 [N, 3, H, W]; scores: float [N, 3]; indices: long [K]; hybrid: float [N];
        shots: long [N] the detected shot of each candidate (`data.shots.shot_ids`).
        args: the CLI namespace (video, policy, k, out).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    n = len(frames)
    columns = min(n, 16)
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[indices] = True
    strip = _strip(frames, chosen, columns)
    k = len(indices)
    fig = plt.figure(figsize=(14, 4.2 + 6.5 * strip.shape[0] / strip.shape[1] * 1.2), layout="constrained")
    grid = fig.add_gridspec(3, k, height_ratios=[strip.shape[0] / strip.shape[1] * 14, 2.6, 1.6])

    top = fig.add_subplot(grid[0, :])
    top.imshow(strip)
    top.set_title(
        f"{os.path.basename(args.video)}: {n} candidates, the {k} chosen by '{args.policy}' framed in red",
        fontsize=10,
    )
    top.axis("off")

    curves = fig.add_subplot(grid[1, :])
    cuts = [i for i in range(1, n) if shots[i] != shots[i - 1]]
    for shot, (start, end) in enumerate(zip([0, *cuts], [*cuts, n], strict=True)):
        curves.axvspan(start - 0.5, end - 0.5, color="0.85" if shot % 2 else "0.95", lw=0)
        curves.text((start + end - 1) / 2, 0.97, str(shot), ha="center", va="top", fontsize=7)
    for i in cuts:
        curves.axvline(i - 0.5, color="0.3", ls=":", lw=1)
    curves.set_title(f"{len(cuts) + 1} shots detected (cuts dotted)", fontsize=9, loc="right")
    position = range(n)
    for channel, (name, colour) in enumerate(
        zip(FRAME_SCORE_NAMES, ("tab:blue", "tab:orange", "tab:green"), strict=True)
    ):
        curves.plot(position, scores[:, channel].numpy(), color=colour, lw=1.2, label=name)
    curves.plot(position, hybrid.numpy(), color="black", lw=1.6, ls="--", label="hybrid (normalized)")
    for i in indices.tolist():
        curves.axvline(i, color="tab:red", alpha=0.35, lw=3)
    curves.set_xlim(-0.5, n - 0.5)
    curves.set_ylim(0, 1.02)
    curves.set_xlabel("candidate frame")
    curves.set_ylabel("score")
    curves.legend(loc="lower left", bbox_to_anchor=(0, 1), fontsize=8, ncol=4, frameon=False)

    for slot, i in enumerate(indices.tolist()):
        ax = fig.add_subplot(grid[2, slot])
        ax.imshow(frames[i].permute(1, 2, 0).numpy())
        ax.set_title(f"#{i}", fontsize=9)
        ax.axis("off")
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
