"""Batched frame selection: score N candidate frames per clip and keep K of them.

Pure torch on whatever device the frames are on (the training GPU when there is one), with no
Python loop over frames or clips (the greedy pickers loop over the K picks, a static count that
`torch.compile` unrolls). The per-frame scores of the chosen frames are returned too: the temporal
LoRA gates read them.

The per-frame scores (entropy, scene change, motion) are `data.frame_scores`'.

Policies (each picks K of N frames with a temporal coverage rule; indices sorted and unique):
    uniform   centres of K equal segments
    random    one random frame in each of K equal segments (TSN-style)
    headtail  Video-LLaMA's training sampling: K/2 random frames from the first half of the clip
              and the rest from the second half
    entropy   the highest-entropy frame of each of K equal segments
    scene     greedy temporal NMS on the scene-change score: frames right after cuts (and the
              first frame, which opens the first shot) first
    motion    greedy temporal NMS on the motion score: frames of moving segments first
    hybrid    greedy temporal NMS on a weighted sum of the three scores, each min-max normalized
              per clip, within the shots `data.shots` detects: the suppression stops at a cut and
              every shot gets a frame before any gets a second (on a clip of one shot: plain NMS)
The NMS pickers add `coverage` x (distance to the nearest frame already picked) / N to the score,
so flat stretches (no cut, no motion, an all-black clip) are filled by farthest-point sampling
rather than clumped at the start. Random policies draw from a seeded generator: in eval mode the
same generator state is used for every call, so they are deterministic.

CLI (the candidate strip, the score curves over the detected shots and the chosen frames, as a
PNG, `data.selection_plot`)::

    python -m data.frame_selector --video X.mp4 --k 8 --n 64 --policy hybrid --out sel.png
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from batch_contract import ENTROPY, FRAME_SCORE_NAMES, MOTION, SCENE_CHANGE
from data.frame_scores import frame_scores, normalize_per_clip
from data.selection_plot import load_candidates, plot_selection
from data.shots import shot_ids

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# hybrid's default weights (entropy, scene_change, motion): change and motion find events, entropy
# breaks the tie between the last frame of an event and the empty frame after it (same motion).
DEFAULT_WEIGHTS = (0.2, 0.4, 0.4)
DEFAULT_COVERAGE = 0.1


@dataclass
class SelectedFrames:
    """K frames chosen out of N per clip.

    Attributes:
        frames: [B, K, 3, H, W] normalized ((x/255 - mean) / std) in the requested dtype.
        indices: long [B, K] positions among the N candidates, sorted in time.
        scores: float32 [B, K, 3] (entropy, scene_change, motion) of the chosen frames, in [0, 1];
            None when the caller did not ask for them (`FrameSelector.__call__(with_scores=False)`).
    """

    frames: torch.Tensor
    indices: torch.Tensor
    scores: torch.Tensor | None


@dataclass(frozen=True)
class PolicyArgs:
    """What a policy needs besides the scores.

    Attributes:
        k: frames to pick, 1 <= k < N.
        weights: hybrid's (entropy, scene_change, motion) weights.
        coverage: weight of the distance-to-picked-frames bonus of the NMS pickers.
    """

    k: int
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS
    coverage: float = DEFAULT_COVERAGE


def shot_value(scores: torch.Tensor) -> torch.Tensor:
    """float [B, N, 3] → float [B, N]: normalized scene change, with the first frame counted as a cut.

    The clip's first frame opens a shot just as the frame after a cut does; its scene-change score
    is 0 only because nothing precedes it, and without this the first shot would never be chosen
    for its own sake.
    """
    value = normalize_per_clip(scores[..., SCENE_CHANGE])
    return torch.cat([torch.ones_like(value[:, :1]), value[:, 1:]], dim=1)


def hybrid_value(scores: torch.Tensor, weights: tuple[float, float, float] = DEFAULT_WEIGHTS) -> torch.Tensor:
    """float [B, N, 3] scores → float [B, N] in [0, 1]: the weighted mean of the normalized
    entropy, `shot_value` and motion."""
    w = torch.tensor(weights, device=scores.device, dtype=scores.dtype)
    normalized = torch.stack(
        [
            normalize_per_clip(scores[..., ENTROPY]),
            shot_value(scores),
            normalize_per_clip(scores[..., MOTION]),
        ],
        dim=-1,
    )
    return (normalized * w).sum(-1) / w.sum()


def uniform_positions(n: int, k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Centres of k equal segments of [0, n): long [k], sorted."""
    return ((torch.arange(k, device=device) + 0.5) * (n / k)).long().clamp_(max=n - 1)


def _best_per_segment(value: torch.Tensor, k: int) -> torch.Tensor:
    """float [B, N] → long [B, K]: in each of K equal segments, the frame with the highest value.

    Frame i belongs to segment floor(i * K / N), so with K <= N every segment is non-empty. A
    [B, K, N] masked matrix replaces a loop over segments; argmax returns the first maximum, so
    ties go to the earliest frame.
    """
    b, n = value.shape
    segment = torch.arange(n, device=value.device) * k // n  # [N]
    member = segment[None, :] == torch.arange(k, device=value.device)[:, None]  # [K, N]
    masked = value[:, None, :].masked_fill(~member[None], float("-inf"))  # [B, K, N]
    return masked.argmax(-1)


def temporal_nms(
    value: torch.Tensor, k: int, coverage: float = DEFAULT_COVERAGE, shots: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy non-maximum suppression in time: float [B, N] → long [B, K] sorted, unique.

    Each of the K rounds picks the best frame still available, ranked by
    value + coverage * (distance to the nearest picked frame) / N, and makes the frames closer than
    r = max(1, N // (2K)) to it unavailable. A pick removes at most 2r - 1 <= N/K - 1 frames, so
    K picks never run out of frames (K (N/K - 1) < N), and the picked frame itself is always
    removed, so the K picks are distinct.

    With `shots` (long [B, N], the shot of each frame, `data.shots.shot_ids`) the suppression stops
    at the shot's bounds, so a short shot next to a picked cut stays available, and every frame of
    a shot without a pick yet ranks 1 + coverage higher, more than value (in [0, 1]) and the
    coverage bonus can add: as long as K allows, each shot gets a frame before any gets a second,
    the shots in the order of their best frames. A clip of one shot is picked exactly as without
    `shots` (the first round adds the same to every frame).
    """
    b, n = value.shape
    radius = max(1, n // (2 * k))
    position = torch.arange(n, device=value.device)
    available = torch.ones(b, n, dtype=torch.bool, device=value.device)
    distance = torch.full((b, n), float(n), device=value.device)  # to the nearest pick so far
    # 1 + coverage where the frame's shot has no pick yet, 0 once it has one
    uncovered = torch.full((b, n), 1.0 + coverage, dtype=value.dtype, device=value.device)
    picks = []
    for _ in range(k):  # K rounds, a static count: unrolled by torch.compile, no loop over frames
        priority = value + coverage * distance / n
        if shots is not None:
            priority = priority + uncovered
        pick = priority.masked_fill(~available, float("-inf")).argmax(1)  # [B], first maximum: deterministic
        picks.append(pick)
        gap = (position[None, :] - pick[:, None]).abs().float()  # [B, N]
        if shots is None:
            available &= gap >= radius
        else:
            same_shot = shots == shots.gather(1, pick[:, None])  # [B, N]
            available &= (gap >= radius) | ~same_shot
            uncovered = uncovered.masked_fill(same_shot, 0.0)
        distance = torch.minimum(distance, gap)
    return torch.stack(picks, dim=1).sort(dim=1).values


# Policies: (scores float [B, N, 3], noise float [B, N] in [0, 1) or None, args) → long [B, K]
# sorted, unique indices. Only `random` and `headtail` read the noise.
Policy = Callable[[torch.Tensor, torch.Tensor | None, PolicyArgs], torch.Tensor]


def _uniform(scores: torch.Tensor, noise: torch.Tensor | None, args: PolicyArgs) -> torch.Tensor:
    return uniform_positions(scores.shape[1], args.k, scores.device).expand(scores.shape[0], args.k)


def _random(scores: torch.Tensor, noise: torch.Tensor | None, args: PolicyArgs) -> torch.Tensor:
    return _best_per_segment(noise, args.k)


def _headtail(scores: torch.Tensor, noise: torch.Tensor | None, args: PolicyArgs) -> torch.Tensor:
    # Video-LLaMA samples K/2 distinct frames uniformly at random from each half of the clip; for
    # an odd K the tail gets the extra one (K - K//2 <= N//2 <= N - N//2 whenever K < N).
    n, k = noise.shape[1], args.k
    k_head = k // 2
    in_head = torch.arange(n, device=noise.device) < n // 2
    head = noise.masked_fill(~in_head, -1.0).topk(k_head, dim=1).indices
    tail = noise.masked_fill(in_head, -1.0).topk(k - k_head, dim=1).indices
    return torch.cat([head, tail], dim=1).sort(dim=1).values


def _entropy(scores: torch.Tensor, noise: torch.Tensor | None, args: PolicyArgs) -> torch.Tensor:
    return _best_per_segment(scores[..., ENTROPY], args.k)


def _scene(scores: torch.Tensor, noise: torch.Tensor | None, args: PolicyArgs) -> torch.Tensor:
    return temporal_nms(shot_value(scores), args.k, args.coverage)


def _motion(scores: torch.Tensor, noise: torch.Tensor | None, args: PolicyArgs) -> torch.Tensor:
    return temporal_nms(normalize_per_clip(scores[..., MOTION]), args.k, args.coverage)


def _hybrid(scores: torch.Tensor, noise: torch.Tensor | None, args: PolicyArgs) -> torch.Tensor:
    return temporal_nms(hybrid_value(scores, args.weights), args.k, args.coverage, shots=shot_ids(scores))


POLICIES: dict[str, Policy] = {
    "uniform": _uniform,
    "random": _random,
    "headtail": _headtail,
    "entropy": _entropy,
    "scene": _scene,
    "motion": _motion,
    "hybrid": _hybrid,
}
RANDOM_POLICIES = frozenset({"random", "headtail"})
# Policies that never read the scores (only their shape): with_scores=False skips computing them.
SCORE_FREE_POLICIES = frozenset({"uniform", "random", "headtail"})


class FrameSelector:
    """Pick K of N frames per clip by a named policy and normalize them for the vision tower.

    Args:
        k: frames to keep; clips with N <= k keep all N frames.
        policy: one of `POLICIES` (see the module docstring).
        bits: luma quantization of the histogram scores.
        mean, std: per-channel normalization (CLIP's by default).
        weights: hybrid's (entropy, scene_change, motion) weights, non-negative, not all zero.
        coverage: weight of the temporal-coverage bonus of scene / motion / hybrid (>= 0).
        seed: seed of the random policies' generator.

    Like an `nn.Module` the selector has a training flag: while training, `random` and `headtail`
    draw new frames on every call from a generator seeded once (its state is in `state_dict()` so a
    resumed run continues it); after `eval()` every call restarts from `seed`, so the same clip
    always gets the same frames. The other policies are deterministic in both modes.
    """

    def __init__(
        self,
        k: int,
        policy: str = "uniform",
        bits: int = 4,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
        coverage: float = DEFAULT_COVERAGE,
        seed: int = 0,
    ):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if policy not in POLICIES:
            raise ValueError(f"unknown frame selection policy {policy!r}; valid: {sorted(POLICIES)}")
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        weights = tuple(float(w) for w in weights)
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"weights must be 3 non-negative numbers {FRAME_SCORE_NAMES} with a positive sum, got {weights}"
            )
        if coverage < 0:
            raise ValueError(f"coverage must be >= 0, got {coverage}")
        self.k, self.policy, self.bits = k, policy, bits
        self.mean, self.std = tuple(mean), tuple(std)
        self.args = PolicyArgs(k=k, weights=weights, coverage=float(coverage))
        self.seed = seed
        self.training = True
        # A CPU generator: the draws are the same whatever device the frames are on.
        self._generator = torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> FrameSelector:
        self.training = mode
        return self

    def eval(self) -> FrameSelector:
        return self.train(False)

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._generator.set_state(state["generator"])

    def _noise(self, b: int, n: int, device: torch.device) -> torch.Tensor | None:
        """float [B, N] uniform in [0, 1) for the random policies, None for the others."""
        if self.policy not in RANDOM_POLICIES:
            return None
        generator = self._generator if self.training else torch.Generator().manual_seed(self.seed)
        return torch.rand(b, n, generator=generator).to(device)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """scores float [B, N, 3] → long [B, min(k, N)] indices, sorted in time and unique."""
        b, n = scores.shape[:2]
        if self.k >= n:
            return torch.arange(n, device=scores.device).expand(b, n)
        return POLICIES[self.policy](scores, self._noise(b, n, scores.device), self.args)

    def __call__(
        self, frames: torch.Tensor, dtype: torch.dtype = torch.float32, with_scores: bool = True
    ) -> SelectedFrames:
        """frames uint8 [B, N, 3, H, W] → `SelectedFrames` with K = min(k, N), on frames.device.

        with_scores: also return the chosen frames' scores (temporal adapters and reports read
        them). Without, the score-free policies cost one gather: the step of a plain LoRA run
        with uniform frames pays nothing for the selector.
        """
        if frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        if with_scores or self.policy not in SCORE_FREE_POLICIES:
            scores = frame_scores(frames, self.bits)  # [B, N, 3]
        else:
            scores = frames.new_empty(*frames.shape[:2], 0, dtype=torch.float32)  # [B, N, 0]: shape only
        indices = self.select(scores)
        rows = torch.arange(frames.shape[0], device=frames.device)[:, None]
        chosen = frames[rows, indices]  # [B, K, 3, H, W] uint8: gather before converting, K <= N
        mean = torch.tensor(self.mean, device=frames.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(self.std, device=frames.device).view(1, 1, 3, 1, 1)
        # (x/255 - mean) / std as one multiply-add, in float32, cast once at the end: bf16 would
        # round before the shift
        normalized = torch.addcmul(-mean / std, chosen.float(), 1.0 / (255.0 * std)).to(dtype)
        chosen_scores = scores[rows, indices] if with_scores else None
        return SelectedFrames(frames=normalized, indices=indices.contiguous(), scores=chosen_scores)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Select K of N frames of a video and draw the candidates, scores and picks as a PNG."
    )
    parser.add_argument("--video", required=True, help="a video file (anything decord reads)")
    parser.add_argument("--k", type=int, default=8, help="frames to keep")
    parser.add_argument("--n", type=int, default=64, help="candidate frames, uniform over the clip")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="hybrid")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument(
        "--weights", type=float, nargs=3, default=DEFAULT_WEIGHTS, metavar=("ENTROPY", "SCENE", "MOTION")
    )
    parser.add_argument("--height", type=int, default=112, help="decode height (width keeps the aspect)")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)

    frames = load_candidates(args.video, args.n, args.height)  # uint8 [N, 3, H, W]
    selector = FrameSelector(args.k, args.policy, args.bits, weights=args.weights).eval()
    scores = frame_scores(frames[None], args.bits)
    indices = selector.select(scores)[0]
    shots = shot_ids(scores)[0]
    plot_selection(frames, scores[0], indices, hybrid_value(scores, selector.args.weights)[0], shots, args)
    print(
        f"{args.policy}: frames {indices.tolist()} of {len(frames)}, {int(shots[-1]) + 1} shots → {args.out}"
    )


if __name__ == "__main__":
    main()
