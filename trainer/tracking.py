"""MLflow tracking that stays off the training step's path and survives the server going away.

One HTTP round trip per metric costs tens of milliseconds against a remote tracking server,
more than a small training step. So :meth:`Tracker.log` only appends ``(key, value, timestamp,
step)`` tuples to an in-memory buffer; a daemon thread uploads the buffer in batches every
``flush_interval_s``. Against a tracking server (an http(s) URI) it posts the documented
``runs/log-batch`` REST body itself, built with plain ``json.dumps``, through mlflow's own HTTP
helper: ``MlflowClient.log_batch`` spends ~25 µs of CPU per metric building entities and protobufs
and pretty-printing them with the pure-Python JSON encoder, which at one log call per step was
the tracker's whole cost on the training machine. Other stores (sqlite, file) get ``log_batch``.

When the server does not answer (down at start, restarted mid-run, a network blip), nothing is
lost and training does not wait: metrics stay buffered, params/tags/artifacts are queued, and
the uploader retries on its next tick, creating the run first if it could not be created yet.
If the server is still unreachable when the run closes, the buffered metrics are written to
``<output_dir>/mlflow_spool.jsonl``.

Only rank 0 talks to MLflow; the other ranks get a :class:`NullTracker` with the same methods.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import LogBatch
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.tracking.fluent import get_active_model_id
from mlflow.utils.rest_utils import call_endpoint

from trainer.config import param_text

log = logging.getLogger(__name__)

# MLflow retries each HTTP call itself with exponential backoff (minutes in all by default). The
# uploader retries on every tick anyway, so a call may give up quickly; the user's env still wins.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

# A buffered metric: (key, value, timestamp in ms, step). A tuple costs the step path a fraction
# of an mlflow Metric entity, which only the non-REST stores need (built at upload time).
Row = tuple[str, float, int, int]

# The documented REST endpoint behind log_batch: https://mlflow.org/docs/latest/rest-api.html#log-batch
_LOG_BATCH_ENDPOINT = "/api/2.0/mlflow/runs/log-batch"

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
        resume_run_id: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.client = tracking_client(tracking_uri)
        self.spool_path = Path(spool_path)
        self.flush_interval_s = flush_interval_s
        self.failed_uploads = 0
        # CPU seconds the uploads took in this process (serializing, sending, waiting excluded):
        # the tracker's share of the training machine, reported by benchmarks/step_overhead.py.
        self.upload_cpu_s = 0.0
        self._experiment = experiment
        self._run_name = run_name
        self._tags = tags or {}
        self._artifact_location = Path(artifact_location).resolve().as_uri() if artifact_location else None
        self._resume_run_id = resume_run_id
        # Params a resumed run already holds: MLflow refuses to change a logged param's value.
        self._logged_params: dict[str, str] = {}
        self._pending: list[Row] = []
        self._queued_calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()  # guards the buffers
        self._io = threading.Lock()  # one uploader at a time: no call or metric is sent twice
        self._stop = threading.Event()
        self.run_id: str | None = None
        try:
            self._open_run()
        except Exception as err:  # server down at start: train anyway, create the run later
            log.warning(
                "MLflow at %s unreachable (%s): metrics are buffered until it answers", tracking_uri, err
            )
        self._thread = threading.Thread(target=self._upload_loop, name="mlflow-uploader", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the step path: buffer only
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Buffer ``metrics`` (name → value) at ``step``; returns at once."""
        now, step = int(time.time() * 1000), int(step)
        rows = [(k, float(v), now, step) for k, v in metrics.items()]
        with self._lock:
            self._pending.extend(rows)

    # ------------------------------------------------------------------ rarer calls: now, or queued
    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; on a resumed run, values that changed since are recorded as tags instead."""
        self._call_or_queue(lambda: self._log_params(params))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call_or_queue(
            lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        )

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self._call_or_queue(lambda: self.client.log_dict(self.run_id, data, artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call_or_queue(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    # ------------------------------------------------------------------ uploading
    def flush(self) -> bool:
        """Send everything buffered and queued now. Returns False (keeping it all) on failure."""
        with self._io:
            start = time.thread_time()
            try:
                return self._flush()
            finally:
                self.upload_cpu_s += time.thread_time() - start

    def _flush(self) -> bool:
        try:
            if self.run_id is None:
                self._open_run()
            self._run_queued_calls()
        except Exception as err:
            return self._failed(err)
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            while batch:
                self._send_metrics(batch[:_MAX_METRICS_PER_BATCH])
                # Drop what is uploaded so a failure mid-way never sends a metric twice.
                batch = batch[_MAX_METRICS_PER_BATCH:]
            return True
        except Exception as err:  # any transport or server error: keep the metrics, retry later
            with self._lock:
                self._pending = batch + self._pending
            return self._failed(err)

    def _send_metrics(self, rows: list[Row]) -> None:
        """Upload ``rows`` (at most one batch) to the run; raises whatever the store raises."""
        store = self.client._tracking_client.store  # cached per URI by mlflow: no new connection
        # Only the plain tracking-server store: others (Databricks' subclass) route calls their own way.
        if type(store) is RestStore:
            _post_log_batch(store, self.run_id, rows)
        else:
            self.client.log_batch(self.run_id, metrics=[Metric(*row) for row in rows])

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
            if self._pending or self._queued_calls or self.run_id is None:
                self.flush()

    def _failed(self, err: Exception) -> bool:
        self.failed_uploads += 1
        log.warning(
            "MLflow upload failed (%s); %d metrics kept for the next attempt", err, len(self._pending)
        )
        return False

    def _open_run(self) -> None:
        """Reopen the run being resumed, or create a new one in the experiment."""
        if self._resume_run_id is not None and self._reopen(self._resume_run_id):
            return
        experiment_id = experiment_id_for(self.client, self._experiment, self._artifact_location)
        self.run_id = self.client.create_run(
            experiment_id, run_name=self._run_name, tags=self._tags
        ).info.run_id

    def _reopen(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except Exception as err:  # deleted, or a different tracking store than the run was logged to
            log.warning("cannot continue MLflow run %s (%s); starting a new run", run_id, err)
            self._resume_run_id = None
            return False
        self.client.update_run(run_id, status="RUNNING")
        self._logged_params = dict(run.data.params)
        self.run_id = run_id
        return True

    def _call_or_queue(self, call: Callable[[], None]) -> None:
        with self._lock:
            self._queued_calls.append(call)
        if self.run_id is not None:
            with self._io:
                try:
                    self._run_queued_calls()
                except Exception as err:
                    self._failed(err)

    def _run_queued_calls(self) -> None:
        """Run queued calls in order; one that fails stays first in the queue."""
        while True:
            with self._lock:
                if not self._queued_calls:
                    return
                call = self._queued_calls[0]
            call()
            with self._lock:
                self._queued_calls.pop(0)

    def _log_params(self, params: dict[str, Any]) -> None:
        values = {k: param_text(v) for k, v in params.items()}
        changed = {
            k: v for k, v in values.items() if k in self._logged_params and self._logged_params[k] != v
        }
        if changed:
            tags = [RunTag(f"resume.changed.{k}", v[:_MAX_PARAM_CHARS]) for k, v in changed.items()]
            self.client.log_batch(self.run_id, tags=tags)
        new = [
            Param(k, v)
            for k, v in values.items()
            if len(v) <= _MAX_PARAM_CHARS and k not in self._logged_params
        ]
        for i in range(0, len(new), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + _MAX_PARAMS_PER_BATCH])
        self._logged_params.update({p.key: p.value for p in new})

    def _spool(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spool_path.open("a") as f:
            for key, value, timestamp, step in pending:
                f.write(json.dumps({"key": key, "value": value, "timestamp": timestamp, "step": step}) + "\n")
        log.error(
            "MLflow at %s unreachable: %d metrics of run %s saved to %s",
            self.tracking_uri,
            len(pending),
            self.run_id,
            self.spool_path,
        )


def _post_log_batch(store: RestStore, run_id: str, rows: list[Row]) -> None:
    """Send ``rows`` as ``RestStore.log_batch`` would, without its per-metric protobuf round trip.

    The body is the REST API's ``LogBatch`` message as mlflow writes it (snake_case fields, int64
    as JSON numbers, a metric's ``model_id`` from the active model as ``MlflowClient.log_batch``
    fills it in); host credentials, headers, TLS, retries, timeouts and the mapping of error
    responses to exceptions are mlflow's ``call_endpoint``, so the server sees the same request.
    """
    metrics = [
        {"key": key, "value": _json_double(value), "timestamp": timestamp, "step": step}
        for key, value, timestamp, step in rows
    ]
    model_id = get_active_model_id()
    if model_id:
        for metric in metrics:
            metric["model_id"] = model_id
    body = json.dumps({"run_id": run_id, "metrics": metrics})
    call_endpoint(store.get_host_creds(), _LOG_BATCH_ENDPOINT, "POST", body, LogBatch.Response())


def _json_double(value: float) -> float | str:
    """``value`` as proto3 JSON writes a double: NaN and infinities as strings, since a bare ``NaN``
    is not JSON (requests refuses to send it) and MLflow stores non-finite metric values."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` tracking URI (relative, or absolute with four
    slashes), None for any other store (and for an in-memory sqlite)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An `MlflowClient` for `tracking_uri`. A sqlite store is opened under an exclusive lock on
    ``<db>.lock``: opening creates and migrates its schema, and MLflow's migrations race when several
    processes open a new store at once (two ``train.py`` started together against a fresh store: one
    dies with "table _alembic_tmp_experiments already exists")."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return MlflowClient(tracking_uri=tracking_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return MlflowClient(tracking_uri=tracking_uri)


def experiment_id_for(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if it does not exist yet; safe when several processes
    (SLURM array tasks, sweep runs) ask at once."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as err:
        # Another process created it since the lookup.
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def start_run(
    cfg: Any,
    *,
    spool_path: Path,
    resume_run_id: str | None,
    derived_params: dict[str, Any],
    tags: dict[str, str],
    artifacts: dict[str, Any],
) -> Tracker:
    """Open (or, with ``resume_run_id``, reopen) a training run's MLflow run and record what it is:
    every setting of ``cfg`` (a `trainer.config.RunConfig`) and the ``derived_params`` as params,
    the method and weight format and ``tags`` as tags, and ``artifacts`` ({path: JSON-able}) as files."""
    tracker = Tracker(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        cfg.tracking.run_name,
        spool_path=spool_path,
        flush_interval_s=cfg.tracking.flush_interval_s,
        tags={"adapter.method": cfg.adapter.method, "model.quantization": param_text(cfg.model.quantization)},
        artifact_location=cfg.tracking.artifact_location,
        resume_run_id=resume_run_id,
    )
    tracker.log_params({**cfg.flat(), **derived_params})
    tracker.set_tags(tags)
    for path, content in artifacts.items():
        tracker.log_dict(content, path)
    return tracker
