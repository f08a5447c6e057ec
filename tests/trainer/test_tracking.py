import math
from pathlib import Path

import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from trainer.tracking import Tracker


def test_every_metric_reaches_a_real_server(mlflow_server, tmp_path):
    tracker = Tracker(
        mlflow_server.uri, "tracking-test", "run-a", tmp_path / "spool.jsonl", flush_interval_s=0.2
    )
    tracker.log_params({"train.lr": 0.1, "adapter.target_modules": ["q", "v"], "huge": "x" * 10_000})
    for step in range(1, 1201):  # more than one log_batch call can carry
        tracker.log({"train/loss": 1.0 / step, "throughput/samples_per_s": float(step)}, step=step)
    tracker.log_dict({"a": 1}, "config/run_config.json")
    tracker.close()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.1"
    assert run.data.params["adapter.target_modules"] == '["q", "v"]'
    assert "huge" not in run.data.params  # over MLflow's param length limit: artifact only
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 1201))
    assert {m.key for m in client.get_metric_history(tracker.run_id, "throughput/samples_per_s")} == {
        "throughput/samples_per_s"
    }
    assert not (tmp_path / "spool.jsonl").exists()
    artifacts = [a.path for a in client.list_artifacts(tracker.run_id, "config")]
    assert artifacts == ["config/run_config.json"]


def test_log_only_buffers(mlflow_server, tmp_path):
    tracker = Tracker(
        mlflow_server.uri, "tracking-test", "run-b", tmp_path / "spool.jsonl", flush_interval_s=60
    )
    tracker.log({"train/loss": 1.0}, step=1)
    # Nothing is sent until the uploader's interval or close(): the step path made no HTTP call.
    assert MlflowClient(mlflow_server.uri).get_metric_history(tracker.run_id, "train/loss") == []
    tracker.close()
    assert len(MlflowClient(mlflow_server.uri).get_metric_history(tracker.run_id, "train/loss")) == 1


def test_failed_upload_keeps_metrics_and_spools(mlflow_server, tmp_path, monkeypatch):
    tracker = Tracker(
        mlflow_server.uri, "tracking-test", "run-c", tmp_path / "spool.jsonl", flush_interval_s=60
    )
    tracker.log({"train/loss": 2.0}, step=1)

    def broken(*args, **kwargs):
        raise requests.ConnectionError("server down")

    # The network fails under mlflow's own HTTP helper, whichever upload path the tracker takes.
    monkeypatch.setattr(requests.Session, "request", broken)
    assert tracker.flush() is False
    assert tracker.failed_uploads == 1
    tracker.log({"train/loss": 1.0}, step=2)
    tracker.close()  # still down: spooled to disk, not lost
    lines = (tmp_path / "spool.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"step": 1' in lines[0]


def test_server_restarted_mid_run_loses_nothing(tmp_path):
    from tests.mlflow_server import MlflowServer

    (tmp_path / "srv").mkdir()
    server = MlflowServer(tmp_path / "srv").start()
    tracker = Tracker(server.uri, "restart-test", "run-d", tmp_path / "spool.jsonl", flush_interval_s=0.2)
    for step in range(1, 11):
        tracker.log({"train/loss": float(step)}, step=step)
    assert tracker.flush()
    server.stop()
    for step in range(11, 21):  # logged while the server is down
        tracker.log({"train/loss": float(step)}, step=step)
    tracker.log_dict({"while": "down"}, "during_outage.json")
    assert tracker.flush() is False
    server.start()  # same port, same store
    tracker.close()
    client = MlflowClient(server.uri)
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "train/loss")) == list(
        range(1, 21)
    )
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["during_outage.json"]
    assert not (tmp_path / "spool.jsonl").exists()
    server.stop()


def test_server_down_at_start_run_created_when_it_answers(tmp_path):
    from tests.mlflow_server import MlflowServer

    (tmp_path / "srv").mkdir()
    server = MlflowServer(tmp_path / "srv")  # not started yet
    tracker = Tracker(server.uri, "late-server", "run-e", tmp_path / "spool.jsonl", flush_interval_s=0.2)
    assert tracker.run_id is None
    tracker.log_params({"train.lr": 0.5})
    tracker.log({"train/loss": 3.0}, step=1)
    server.start()
    tracker.close()
    client = MlflowClient(server.uri)
    run = client.get_run(tracker.run_id)
    assert run.data.params["train.lr"] == "0.5"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "train/loss")] == [3.0]
    server.stop()


def _history(client, run_id, key):
    """(key, value, step, timestamp) of every stored point, in a canonical order (repr: NaN == NaN)."""
    return sorted((m.key, repr(m.value), m.step, m.timestamp) for m in client.get_metric_history(run_id, key))


def test_rest_fast_path_stores_what_log_batch_stores(mlflow_server, tmp_path, monkeypatch):
    tracker = Tracker(mlflow_server.uri, "fast-path", "run-f", tmp_path / "spool.jsonl", flush_interval_s=60)
    values = [1.5, -0.0, 1e-300, 123456789.123456, 7, math.nan, math.inf, -math.inf, 2.0**60]
    for step, value in enumerate(values):
        tracker.log({"train/loss": value, "data/bad_samples_decode": step}, step=step * 1000)
    tracker.log({"train/loss": 0.25}, step=3000)  # a second point at the same step
    with tracker._lock:
        rows = list(tracker._pending)

    def not_this_way(*args, **kwargs):
        raise AssertionError("an http(s) tracking URI must not go through MlflowClient.log_batch")

    monkeypatch.setattr(tracker.client, "log_batch", not_this_way)
    assert tracker.flush()
    monkeypatch.undo()

    # The same rows through mlflow's own client into a second run of the same server.
    client = MlflowClient(mlflow_server.uri)
    reference = client.create_run(client.get_run(tracker.run_id).info.experiment_id).info.run_id
    client.log_batch(reference, metrics=[Metric(*row) for row in rows])
    for key in ("train/loss", "data/bad_samples_decode"):
        fast = _history(client, tracker.run_id, key)
        assert fast == _history(client, reference, key)
        assert len(fast) == sum(row[0] == key for row in rows)
    assert {v for _, v, *_ in _history(client, tracker.run_id, "train/loss")} >= {"nan", "1.5"}
    tracker.close()


def test_sqlite_store_uploads_through_log_batch(tmp_path):
    tracker = Tracker(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "sqlite-store",
        "run-s",
        tmp_path / "spool.jsonl",
        flush_interval_s=60,
        artifact_location=str(tmp_path / "artifacts"),
    )
    for step in range(1, 4):
        tracker.log({"train/loss": 1.0 / step}, step=step)
    tracker.close()
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(
        tracker.run_id, "train/loss"
    )
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]


def _open_and_create(uri: str, name: str, barrier) -> None:
    from trainer.tracking import experiment_id_for, tracking_client

    barrier.wait()  # every process opens the new store at the same moment
    client = tracking_client(uri)
    experiment_id_for(client, name)


def test_processes_opening_a_new_sqlite_store_at_once_all_get_it(tmp_path):
    """Two training runs started together against a fresh sqlite store: MLflow creates and migrates
    its schema on opening, which races without the lock (one process died with "table
    _alembic_tmp_experiments already exists"). Each of four processes opens it and creates an
    experiment of its own; all succeed and the store holds the four."""
    import multiprocessing

    from trainer.tracking import sqlite_path

    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    assert sqlite_path(uri) == tmp_path / "new/mlflow.db"
    assert sqlite_path("sqlite:///outputs/mlflow.db") == Path("outputs/mlflow.db")
    assert sqlite_path("http://127.0.0.1:5000") is None and sqlite_path("sqlite://") is None
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    procs = [context.Process(target=_open_and_create, args=(uri, f"e{i}", barrier)) for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    names = {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}
    assert {"e0", "e1", "e2", "e3"} <= names
