"""ThroughputMeter's arithmetic on a clock the test moves."""

import pytest

from trainer import metrics
from trainer.metrics import ThroughputMeter


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    return now


def test_rates_are_totals_over_time_and_leave_paused_time_out(clock):
    meter = ThroughputMeter()
    meter.restart()  # the window starts on the test's clock
    for seconds, samples in ((1.0, 8), (3.0, 8)):  # a slow step and a fast one
        clock[0] += seconds
        meter.add(samples, samples * 4, samples * 10, data_wait_s=0.5)
        meter.end_step()
    clock[0] += 6.0  # an evaluation
    meter.exclude(6.0)
    rates = meter.read()
    assert rates["throughput/samples_per_s"] == pytest.approx(16 / 4.0)  # not the mean of 8/1 and 8/3
    assert rates["throughput/frames_per_s"] == pytest.approx(64 / 4.0)
    assert rates["time/step_s"] == pytest.approx(2.0)
    assert rates["time/data_wait_fraction"] == pytest.approx(1.0 / 4.0)
    assert rates["throughput/samples_per_s"] * rates["time/step_s"] == pytest.approx(8)
    clock[0] += 2.0
    meter.add(8, 32, 80, 0.0)
    meter.end_step()
    assert meter.read()["time/step_s"] == pytest.approx(2.0)  # a new window after each read
