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


def test_failed_upload_keeps_metrics_and_spools(mlflow_server, tmp_path):
    tracker = Tracker(
        mlflow_server.uri, "tracking-test", "run-c", tmp_path / "spool.jsonl", flush_interval_s=60
    )
    tracker.log({"train/loss": 2.0}, step=1)

    def broken(*args, **kwargs):
        raise ConnectionError("server down")

    tracker.client.log_batch = broken
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
