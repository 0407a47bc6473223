"""MLflow (log.mlflow=true): the run's resolved config as params, every logged row as metrics
under the keys of metrics.csv, the summary's numbers as metrics and its words as tags, and the
run directory's files as artifacts; a sweep is a parent run with one child run per job.

MLflow is an optional extra and slow to import, so it is imported only once log.mlflow is on.
Rows wait in memory and go out with `MlflowClient.log_batch` when the runner flushes its sinks
(within log.flush_secs of their step) and when the run ends, however it ends: the training
loop never waits on the tracking server per step.

A sweep's parent run is started in the sweep's own process before any job runs
(runner.callbacks.MlflowSweep) and named to the jobs by the environment variable PARENT_RUN_ENV,
which worker processes (joblib's) inherit; its id is kept in the sweep directory as RUN_ID_FILE
so that a resumed sweep goes on in the same parent. Each run keeps its own run's id in its
directory the same way: a resumed run continues its MLflow run.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import ConfigError
from runner.metrics import Layout
from runner.sinks import summary as summary_file

# The parent run of the sweep this process runs a job of (set by runner.callbacks.MlflowSweep).
PARENT_RUN_ENV = "RUNNER_MLFLOW_PARENT_RUN"
# The MLflow run id of a run (in its directory) or of a sweep's parent run (in the sweep's).
RUN_ID_FILE = "mlflow_run_id"

# MLflow's limits: values in one log_batch call, and characters in a param's value.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000

# summary.json's status -> the MLflow run's. A diverged run exits 0 but its training failed,
# as TensorBoard's HParams session says too; the tag runner.status tells the two apart.
RUN_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}

# Numbers of the summary logged as metrics (at the run's last step); its words become tags.
SUMMARY_METRICS = (
    "final_loss", "best_loss", "best_val_loss", "steps_completed", "best_step",
    "diverged_at_step", "wall_s", "steps_per_s",
)  # fmt: skip
SUMMARY_TAGS = ("status", "stop_reason", "loop", "device")

# Run directory entries not uploaded: checkpoints are for resuming, not for reading.
NOT_ARTIFACTS = ("checkpoint", RUN_ID_FILE)


def check_installed() -> None:
    """Refuses log.mlflow=true without MLflow, in one line, before anything is written."""
    from importlib.util import find_spec

    try:
        installed = find_spec("mlflow") is not None
        if installed:  # imported now, so its seconds do not count as training time
            import mlflow.tracking  # noqa: F401
    except ImportError:
        installed = False
    if not installed:
        raise ConfigError(
            "log.mlflow", True, "MLflow installed for it: pip install 'runner[mlflow]'"
        )


def client(uri: str | None) -> Any:
    """An MlflowClient for `uri` (None: MLflow's default, MLFLOW_TRACKING_URI if set)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow: Any) -> str:
    """The experiment runs go to: MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME (created if
    need be) as MLflow reads them, else MLflow's Default experiment."""
    if given := os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return given
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return "0"  # the Default experiment every tracking store has
    found = mlflow.get_experiment_by_name(name)
    return found.experiment_id if found is not None else mlflow.create_experiment(name)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys (`optimizer.lr`), values as text,
    lists as YAML shows them, cut to MLflow's limit (a long `data.x` ends in `...`); `_target_`
    keys left out (which class builds a part is the code's business, as in TensorBoard's config
    text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if key == "_target_":
            continue
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            text = _text(value)
            if len(text) > MAX_PARAM_LENGTH:
                text = text[: MAX_PARAM_LENGTH - 3] + "..."
            out[f"{prefix}{key}"] = text
    return out


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def read_run_id(directory: Path) -> str | None:
    try:
        return (directory / RUN_ID_FILE).read_text().strip() or None
    except OSError:
        return None


class MlflowSink:
    """One run's MLflow run: started (or, on resume, continued) when the sink opens, ended
    with the run's status when it closes."""

    def __init__(
        self,
        out_dir: Path,
        layout: Layout,
        config: Mapping[str, Any],
        dtype: str,
        uri: str | None,
        overrides: Sequence[str] = (),
        resume_at: int | None = None,
    ) -> None:
        from mlflow.entities import Param, RunTag

        self.out_dir, self.columns = out_dir, list(layout.columns)
        # float32 values are sent as the decimals metrics.csv shows (21.675, not
        # 21.674999237060547), so MLflow and the CSV hold the same numbers.
        self._float32 = np.dtype(dtype) == np.float32
        self.client = client(uri)
        self._pending: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._sent_through = 0  # rows up to this step are in MLflow already (a resumed run)
        self.run_id = self._continued(resume_at)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        parent = os.environ.get(PARENT_RUN_ENV)
        tags = {"runner.run_dir": str(out_dir), "runner.overrides": " ".join(overrides)}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id(self.client), tags=tags, run_name=out_dir.name)
        self.run_id = run.info.run_id
        (out_dir / RUN_ID_FILE).write_text(self.run_id + "\n")
        params = [Param(k, v) for k, v in flat_params(config).items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])
        self.client.log_batch(self.run_id, tags=[RunTag("runner.status", "running")])

    def _continued(self, resume_at: int | None) -> str | None:
        """The MLflow run a resumed run continues, if its directory names one the store has;
        the rows it already holds (up to the last step of its last column: rows go out in
        order) are not sent again."""
        run_id = read_run_id(self.out_dir) if resume_at is not None else None
        if run_id is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return None  # another store, or the run was deleted: a new run
        history = self.client.get_metric_history(run_id, self.columns[-1])
        self._sent_through = max((m.step for m in history), default=0)
        return run_id

    def write(self, steps: np.ndarray, table: np.ndarray, rows: np.ndarray) -> None:
        self._pending.append((steps, table, int(time.time() * 1000)))

    def flush(self) -> None:
        if not self._pending:
            return
        from mlflow.entities import Metric

        pending, self._pending = self._pending, []
        metrics = []
        columns = self.columns
        for steps, table, stamp in pending:
            if self._float32:
                table = table.astype(np.float32).astype(str).astype(np.float64)
            for step, values in zip(steps.tolist(), table.tolist(), strict=True):
                if step > self._sent_through:
                    metrics.extend(
                        Metric(key, value, stamp, step)
                        for key, value in zip(columns, values, strict=True)
                    )
        self._send(metrics)

    def _send(self, metrics: list) -> None:
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[start : start + MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self, summary: dict | None = None) -> None:
        run_id = self.run_id
        if run_id is None:
            return
        status = "FAILED"
        try:
            self.flush()
            if summary is not None:
                self._log_summary(run_id, summary)
                status = RUN_STATUS.get(summary.get("status"), "FAILED")
            self._log_files(run_id, summary)
        finally:
            self.run_id = None
            self.client.set_terminated(run_id, status)

    def _log_summary(self, run_id: str, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        stamp, step = int(time.time() * 1000), int(summary.get("steps_completed") or 0)
        metrics = [
            Metric(key, float(summary[key]), stamp, step)
            for key in SUMMARY_METRICS
            if isinstance(summary.get(key), int | float) and not isinstance(summary[key], bool)
        ]
        tags = [
            RunTag(f"runner.{key}", str(summary[key]))
            for key in SUMMARY_TAGS
            if summary.get(key) is not None
        ]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def _log_files(self, run_id: str, summary: Mapping[str, Any] | None) -> None:
        """The run directory as artifacts, closed sinks' files included (this sink is the last
        to close); summary.json as the runner writes it next, from `summary`."""
        for path in sorted(self.out_dir.iterdir()):
            name = path.name
            if name in NOT_ARTIFACTS or name == "summary.json":
                continue
            if name.startswith(summary_file.TEMP_PREFIX):
                continue
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=name)
            else:
                self.client.log_artifact(run_id, str(path))
        if summary is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "summary.json"
                summary_file.write_summary(path, summary)
                self.client.log_artifact(run_id, str(path))


def start_sweep_run(sweep_dir: Path, uri: str | None, resume: bool) -> str:
    """The parent run of the sweep in `sweep_dir` (the one it already has when resumed),
    named after the directory; returns its id."""
    mlflow = client(uri)
    run_id = read_run_id(sweep_dir) if resume else None
    if run_id is not None:
        mlflow.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow.create_run(
        experiment_id(mlflow), tags={"runner.sweep_dir": str(sweep_dir)}, run_name=sweep_dir.name
    )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / RUN_ID_FILE).write_text(run.info.run_id + "\n")
    return run.info.run_id


def end_sweep_run(run_id: str, sweep_dir: Path, uri: str | None, status: str) -> None:
    """Ends the parent run with `status`, the sweep report's files (summary.csv, the plots)
    uploaded to it."""
    mlflow = client(uri)
    try:
        for path in sorted(sweep_dir.glob("*")):
            if path.is_file() and path.suffix in (".csv", ".png"):
                mlflow.log_artifact(run_id, str(path))
    finally:
        mlflow.set_terminated(run_id, status)
