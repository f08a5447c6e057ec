"""MLflow tracking that stays off the training step's path.

One HTTP round trip per metric costs tens of milliseconds against a remote tracking server,
more than a small training step. So :meth:`Tracker.log` only appends to an in-memory buffer; a
daemon thread uploads the buffer with ``log_batch`` every ``flush_interval_s``. When an upload
fails (server down, network blip) the metrics stay buffered and go out with the next attempt;
if the server is still unreachable when the run closes, the rest is written to
``<output_dir>/mlflow_spool.jsonl`` so nothing is lost.

Only rank 0 talks to MLflow; the other ranks get a :class:`NullTracker` with the same methods.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# MLflow's own limits for one log_batch call.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
# MLflow rejects longer param values; longer ones are stored in the config artifact only.
_MAX_PARAM_CHARS = 6000


class NullTracker:
    """The tracker of ranks other than 0: accepts every call, records nothing."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class Tracker(NullTracker):
    """Buffered, asynchronous MLflow run. Call :meth:`close` at the end (also after a crash)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None,
        spool_path: str | Path,
        flush_interval_s: float = 2.0,
        tags: dict[str, str] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is not None:
            experiment_id = exp.experiment_id
        else:
            if artifact_location is not None:
                artifact_location = Path(artifact_location).resolve().as_uri()
            experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags or {})
        self.run_id: str = run.info.run_id
        self.experiment_id = experiment_id
        self.spool_path = Path(spool_path)
        self.flush_interval_s = flush_interval_s
        self.failed_uploads = 0
        self._pending: list[Metric] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._upload_loop, name="mlflow-uploader", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Buffer ``metrics`` (name → value) at ``step``; returns at once."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with self._lock:
            self._pending.extend(batch)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [
            Param(k, _param_value(v)) for k, v in params.items() if len(_param_value(v)) <= _MAX_PARAM_CHARS
        ]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def flush(self) -> bool:
        """Upload everything buffered now. Returns False (and keeps the metrics) on failure."""
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            while batch:
                self.client.log_batch(self.run_id, metrics=batch[:_MAX_METRICS_PER_BATCH])
                # Drop what is uploaded so a failure mid-way never sends a metric twice.
                batch = batch[_MAX_METRICS_PER_BATCH:]
            return True
        except Exception as err:  # any transport or server error: keep the metrics, retry later
            self.failed_uploads += 1
            log.warning("MLflow upload failed (%s); %d metrics kept for the next attempt", err, len(batch))
            with self._lock:
                self._pending = batch + self._pending
            return False

    def close(self, status: str = "FINISHED") -> None:
        """Stop the uploader, send what is left, end the run; spool to disk if the server is away."""
        self._stop.set()
        self._thread.join()
        if not self.flush():
            self._spool()
            return
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:
            log.warning("could not mark MLflow run %s as %s: %s", self.run_id, status, err)

    def _upload_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            if self._pending:
                self.flush()

    def _spool(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spool_path.open("a") as f:
            for m in pending:
                f.write(
                    json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step})
                    + "\n"
                )
        log.error(
            "MLflow at %s unreachable: %d metrics of run %s saved to %s",
            self.tracking_uri,
            len(pending),
            self.run_id,
            self.spool_path,
        )


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
