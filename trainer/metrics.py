"""Throughput, phase times and memory of the training loop, named with their units for MLflow.

`TrainingMetrics` is the one object the loop reports to: it counts each micro-batch, times the
step's phases, and turns them into a logged step's metrics (per logging window) and the whole
training's rates.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from trainer.distributed import all_reduce_sum


@dataclass
class ThroughputMeter:
    """Counts work between two :meth:`read` calls and turns it into rates.

    The loop calls :meth:`add` once per micro-batch with what it consumed and :meth:`end_step`
    once per optimizer step; before :meth:`read` the counts are replaced by their sums over all
    ranks, so the rates are global. :meth:`read` returns the rates since the previous read and
    starts a new window, so a logging interval of N steps reports the mean over those N steps.
    """

    samples: int = 0
    frames: int = 0
    tokens: int = 0
    data_wait_s: float = 0.0
    steps: int = 0
    _window_start: float = field(default_factory=time.perf_counter)

    def add(self, samples: int, frames: int, tokens: int, data_wait_s: float) -> None:
        self.samples += samples
        self.frames += frames
        self.tokens += tokens
        self.data_wait_s += data_wait_s

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` that were no training (an evaluation pause) out of the window's time."""
        self._window_start += seconds

    def restart(self) -> None:
        """Start a new window now, dropping what was counted."""
        self.samples = self.frames = self.tokens = self.steps = 0
        self.data_wait_s = 0.0
        self._window_start = time.perf_counter()

    def end_step(self) -> None:
        self.steps += 1

    def read(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        rates = {
            "throughput/samples_per_s": self.samples / elapsed,
            "throughput/frames_per_s": self.frames / elapsed,
            "throughput/tokens_per_s": self.tokens / elapsed,
            "time/data_wait_fraction": self.data_wait_s / elapsed,
            "time/step_s": elapsed / max(self.steps, 1),
        }
        self.restart()
        return rates


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far, in GiB.

    On CUDA: the caching allocator's peak allocated and reserved bytes. Elsewhere: the process's
    peak resident set size, which also counts the Python runtime and libraries, so compare CPU
    figures only between runs of the same code (see shared/PLATFORM.md on RSS as a measure).
    """
    gib = 1024**3
    if device.type == "cuda":
        return {
            "memory/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / gib,
            "memory/peak_reserved_gib": torch.cuda.max_memory_reserved(device) / gib,
        }
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return {"memory/peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / gib}


class PhaseTimer:
    """Wall time of the step's phases (forward, backward, optimizer) without stalling the device.

    On CUDA each phase boundary records an event; the elapsed times are read only in
    :meth:`read`, at logging time, when the events have long completed, so the step path never
    waits for the GPU. Elsewhere the work is synchronous and ``perf_counter`` is exact.
    """

    def __init__(self, device: torch.device) -> None:
        self.use_events = device.type == "cuda"
        self._marks: list[tuple[str, object, object]] = []
        self.totals: dict[str, float] = {}

    def _now(self) -> object:
        if self.use_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> object:
        return self._now()

    def stop(self, phase: str, start: object) -> None:
        self._marks.append((phase, start, self._now()))

    def read(self) -> dict[str, float]:
        """Seconds per phase since the previous read, as ``time/<phase>_s`` (summed over steps)."""
        totals: dict[str, float] = {}
        for phase, start, end in self._marks:
            seconds = start.elapsed_time(end) / 1000 if self.use_events else end - start
            totals[phase] = totals.get(phase, 0.0) + seconds
        self._marks.clear()
        return {f"time/{phase}_s": s for phase, s in totals.items()}


class TrainingMetrics:
    """Counts of this rank's work, per logging window and over the whole training, and the phase timer.

    Args:
        device: the training device (CUDA events time the phases there).
        frames_per_sample: K, the frames the selector keeps per clip.
    """

    def __init__(self, device: torch.device, frames_per_sample: int) -> None:
        self.device = device
        self.frames_per_sample = frames_per_sample
        self.window_meter = ThroughputMeter()
        self.run_meter = ThroughputMeter()  # evaluation pauses left out
        self.phases = PhaseTimer(device)
        self.contrastive_losses: list[float] = []  # this rank's InfoNCE values since the last window

    def start_training(self) -> None:
        self.run_meter.restart()

    def count(self, batch_size: int, tokens: int, data_wait_s: float) -> None:
        """One micro-batch of ``batch_size`` clips and ``tokens`` attended tokens, after
        ``data_wait_s`` seconds waiting for it."""
        for meter in (self.window_meter, self.run_meter):
            meter.add(batch_size, batch_size * self.frames_per_sample, tokens, data_wait_s)

    def end_step(self) -> None:
        for meter in (self.window_meter, self.run_meter):
            meter.end_step()

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` that were no training (an evaluation) out of both clocks."""
        for meter in (self.window_meter, self.run_meter):
            meter.exclude(seconds)

    def window(self, local_loss: float | None) -> tuple[float | None, dict[str, float]]:
        """The window's mean loss over the ranks that had a finite one (None if none had) and its
        metrics: rates of every rank's work over this rank's wall time, phase times, peak memory,
        the mean InfoNCE loss. One all-reduce for the loss and the counts together."""
        meter = self.window_meter
        loss_sum, n_finite = _sum_counts_over_ranks(meter, [local_loss or 0.0, float(local_loss is not None)])
        metrics = {**meter.read(), **self.phases.read(), **peak_memory(self.device)}
        if self.contrastive_losses:
            metrics["train/contrastive_loss"] = sum(self.contrastive_losses) / len(self.contrastive_losses)
            self.contrastive_losses = []
        return (loss_sum / n_finite if n_finite else None), metrics

    def whole_training(self) -> dict[str, float]:
        """Rates over this process's whole training (every rank's work over this rank's training
        time) plus ``time/train_s``; {} before any step.

        A mean of the per-window rates would weigh a short slow window like a long fast one (the
        demo's read 51 samples/s next to 0.45 s per step of 8); totals over time cannot.
        """
        meter, steps = self.run_meter, self.run_meter.steps
        if steps == 0:
            return {}
        _sum_counts_over_ranks(meter)
        rates = meter.read()
        return {**rates, "time/train_s": rates["time/step_s"] * steps}


def _sum_counts_over_ranks(meter: ThroughputMeter, extra: Sequence[float] = ()) -> list[float]:
    """Replace ``meter``'s counts by their sums over all ranks, summing ``extra`` scalars in the same
    all-reduce; returns the summed ``extra``."""
    *summed, samples, frames, tokens = all_reduce_sum([*extra, meter.samples, meter.frames, meter.tokens])
    meter.samples, meter.frames, meter.tokens = int(samples), int(frames), int(tokens)
    return summed
