"""log.mlflow=true: what MLflow holds, read back with MlflowClient from a local SQLite store (one
per module: creating one takes seconds) and compared with the run's own files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner.signals import Interrupted
from runner.sinks import mlflow_sink
from tests.helpers import cli_in_process, compose_config, wait_for

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tracking URI and an experiment whose artifacts stay under the test's tmp dir."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("tests", artifact_location=(root / "art").as_uri())
    return uri, experiment


@pytest.fixture
def tracking(store, monkeypatch):
    """The store's client, with the runner pointed at its experiment (as MLflow's own
    MLFLOW_EXPERIMENT_ID says) and no sweep's parent run left in the environment."""
    uri, experiment = store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment)
    monkeypatch.delenv(mlflow_sink.PARENT_RUN_ENV, raising=False)
    client = mlflow.MlflowClient(uri)
    client.uri = uri
    return client


def run_id(directory: Path) -> str:
    return (directory / mlflow_sink.RUN_ID_FILE).read_text().strip()


def csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    header, *rows = path.read_text().splitlines()
    return header.split(","), [row.split(",") for row in rows]


def assert_history_is_the_csv(client, rid: str, directory: Path) -> None:
    """Every metric's history in MLflow is its metrics.csv column: same steps, same values."""
    (_, *columns), rows = csv_rows(directory / "metrics.csv")
    for i, key in enumerate(columns, start=1):
        history = sorted((m.step, m.value) for m in client.get_metric_history(rid, key))
        assert history == [(int(row[0]), float(row[i])) for row in rows], key


def train(directory: Path, uri: str, *overrides: str) -> dict:
    from runner.run import run

    overrides = ("log.progress=false", "log.mlflow=true", f"log.mlflow_uri={uri}", *overrides)
    return run(compose_config(*overrides), directory, overrides)


@pytest.mark.slow  # the module's store is made for the first test: seconds
def test_a_run_logs_params_every_row_the_summary_and_its_files(tracking, tmp_path):
    # 150 steps of 9 columns: more than one log_batch of 1000 metrics at the final flush
    out = tmp_path / "run"
    summary = train(
        out, tracking.uri, "model=linear", "data=synthetic", "data.n_features=2",
        "optimizer=adam", "optimizer.lr=0.05", "train.steps=150",
    )  # fmt: skip
    rid = run_id(out)
    run = tracking.get_run(rid)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["optimizer.lr"] == "0.05" and params["train.steps"] == "150"
    assert params["optimizer.betas"] == "[0.9, 0.999]" and params["model.init"] == "null"
    assert params["data.n_features"] == "2" and params["train.dtype"] == "float32"
    assert not any(key.endswith("_target_") for key in params)
    assert_history_is_the_csv(tracking, rid, out)
    assert len(tracking.get_metric_history(rid, "param/weight/1")) == 150
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["final_loss"] == summary["final_loss"]
    assert metrics["best_loss"] == summary["best_loss"]
    assert metrics["steps_completed"] == 150 and metrics["wall_s"] == summary["wall_s"]
    assert tags["runner.status"] == "completed" and tags["runner.loop"] == "optim"
    # run(cfg) writes no .hydra/ (Hydra does: the sweep test sees it); no checkpoint/
    artifacts = {a.path for a in tracking.list_artifacts(rid)}
    assert artifacts == {"metrics.csv", "summary.json", "tensorboard", "landscape.png"}
    got = Path(tracking.download_artifacts(rid, "", str(tmp_path / "back")))
    for name in ("metrics.csv", "summary.json"):
        assert (got / name).read_bytes() == (out / name).read_bytes(), name
    events = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert sorted(p.name for p in (got / "tensorboard").iterdir()) == events


def test_logged_rows_follow_every_n_steps_and_float64(tracking, tmp_path):
    out = tmp_path / "run"
    train(out, tracking.uri, "train.steps=7", "log.every_n_steps=3", "train.dtype=float64")
    rid = run_id(out)
    assert [m.step for m in tracking.get_metric_history(rid, "loss")] == [3, 6, 7]
    assert_history_is_the_csv(tracking, rid, out)


@pytest.mark.parametrize(
    ("ending", "raised", "status", "steps"),
    [("crash", MemoryError, "FAILED", 3), ("ctrl-c", Interrupted, "KILLED", 4)],
)
def test_a_run_that_stops_early_ends_its_mlflow_run_so(
    tracking, tmp_path, monkeypatch, ending, raised, status, steps
):
    from runner.loops.numpy_loop import NumpyLoop

    real_steps = NumpyLoop.steps

    def steps_then_stop(self, first, last):
        for record in real_steps(self, first, last):
            if record.step == 4:
                if ending == "crash":
                    raise MemoryError("simulated")
                os.kill(os.getpid(), signal.SIGINT)  # the runner stops after this step
            yield record

    monkeypatch.setattr(NumpyLoop, "steps", steps_then_stop)
    out = tmp_path / "run"
    with pytest.raises(raised):
        train(out, tracking.uri, "loop=numpy", "train.steps=10")
    summary = json.loads((out / "summary.json").read_text())
    run = tracking.get_run(run_id(out))
    assert run.info.status == status
    assert run.data.tags["runner.status"] == summary["status"]
    assert run.data.metrics["steps_completed"] == summary["steps_completed"] == steps
    assert_history_is_the_csv(tracking, run_id(out), out)


def test_a_diverged_run_is_failed_in_mlflow_with_its_last_step(tracking, tmp_path):
    out = tmp_path / "run"
    summary = train(out, tracking.uri, "train.steps=50", "optimizer.lr=10")
    assert summary["status"] == "diverged"
    run = tracking.get_run(run_id(out))
    assert run.info.status == "FAILED" and run.data.tags["runner.status"] == "diverged"
    assert run.data.metrics["diverged_at_step"] == summary["diverged_at_step"]
    history = [m.step for m in tracking.get_metric_history(run_id(out), "loss")]
    assert history == list(range(1, summary["diverged_at_step"] + 1))


def test_a_param_too_long_for_mlflow_is_cut_to_its_limit():
    params = mlflow_sink.flat_params({"data": {"x": list(range(5000)), "_target_": "a.b"}})
    assert list(params) == ["data.x"]
    assert len(params["data.x"]) == mlflow_sink.MAX_PARAM_LENGTH
    assert params["data.x"].startswith("[0, 1, 2, ") and params["data.x"].endswith("...")


def test_a_resumed_run_continues_its_mlflow_run_with_each_step_once(tracking, tmp_path):
    out = tmp_path / "run"
    args = ("train.steps=6", "train.checkpoint_every=4")
    train(out, tracking.uri, *args)
    first = run_id(out)
    train(out, tracking.uri, "train.steps=9", "train.checkpoint_every=4", "train.resume=true")
    assert run_id(out) == first
    assert [m.step for m in tracking.get_metric_history(first, "loss")] == list(range(1, 10))
    assert_history_is_the_csv(tracking, first, out)
    assert tracking.get_run(first).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_sweep_is_a_parent_run_with_a_child_run_per_job(tracking, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    result = cli_in_process(
        "-m", "optimizer.lr=0.01,0.02", "train.steps=5", "log.tensorboard=false",
        "log.mlflow=true", f"log.mlflow_uri={tracking.uri}", f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert mlflow_sink.PARENT_RUN_ENV not in os.environ  # the sweep's end took it away
    parent = run_id(sweep)
    assert tracking.get_run(parent).info.status == "FINISHED"
    assert tracking.get_run(parent).info.run_name == "sweep"
    assert {"summary.csv", "loss.png"} <= {a.path for a in tracking.list_artifacts(parent)}
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_optimizer.lr=0.01", "1_optimizer.lr=0.02"]
    for job in jobs:
        child = tracking.get_run(run_id(job))
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.info.run_name == job.name and child.info.status == "FINISHED"
        assert child.data.params["optimizer.lr"] == job.name.split("=")[1]
        assert ".hydra" in {a.path for a in tracking.list_artifacts(child.info.run_id)}
        assert_history_is_the_csv(tracking, child.info.run_id, job)


def test_log_mlflow_without_mlflow_installed_is_one_line_exit_2(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    result = cli_in_process("log.mlflow=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "runner: error: log.mlflow=true: expected MLflow installed for it: "
        "pip install 'runner[mlflow]'\n"
    )
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_run_logs_to_a_real_mlflow_server(tmp_path, monkeypatch):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"),
        ],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # Without this, the server starts a job runner and seven task consumers, each a
        # process importing mlflow: about 12 s of CPU, for jobs that logging runs never asks for.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                return False

        wait_for(up, timeout=120, what="mlflow server", every=0.5)
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        monkeypatch.delenv(mlflow_sink.PARENT_RUN_ENV, raising=False)
        out = tmp_path / "run"
        summary = train(out, uri, "train.steps=20", "log.every_n_steps=2")
        client = mlflow.MlflowClient(uri)
        rid = run_id(out)
        run = client.get_run(rid)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["final_loss"] == summary["final_loss"]
        assert_history_is_the_csv(client, rid, out)
        assert {"metrics.csv", "summary.json"} <= {a.path for a in client.list_artifacts(rid)}
    finally:
        # the server's own process group (it starts workers): stopped by its leader's PID
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_a_sweep_a_signal_ended_leaves_its_parent_run_killed(tracking, tmp_path):
    # Hydra calls no on_multirun_end then; the CLI's Ctrl-C path reports the sweep instead.
    from omegaconf import OmegaConf

    from runner.callbacks import MlflowSweep, report_interrupted_sweep

    sweep = tmp_path / "sweep"
    config = OmegaConf.create(
        {
            "hydra": {"sweep": {"dir": str(sweep)}},
            "train": {"resume": False},
            "log": {"mlflow": True, "mlflow_uri": tracking.uri},
        }
    )
    MlflowSweep().on_multirun_start(config)
    parent = os.environ[mlflow_sink.PARENT_RUN_ENV]
    assert run_id(sweep) == parent
    assert tracking.get_run(parent).info.status == "RUNNING"
    report_interrupted_sweep()
    assert tracking.get_run(parent).info.status == "KILLED"
    assert mlflow_sink.PARENT_RUN_ENV not in os.environ
