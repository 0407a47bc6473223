"""Checkpoints and exact resume: a run stopped anywhere and resumed ends with a metrics.csv
byte-identical to a run never stopped, for every loop and optimizer, mini-batches included."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from runner.errors import ConfigError
from tests.helpers import run_cli, train

OPTIMIZERS = {
    "sgd": ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
    "adam": ["optimizer=adam", "optimizer.lr=0.01", "optimizer.amsgrad=true"],
    "adamw": ["optimizer=adamw", "optimizer.lr=0.01"],
    "rmsprop": ["optimizer=rmsprop", "optimizer.centered=true", "optimizer.momentum=0.5"],
    "adagrad": ["optimizer=adagrad", "optimizer.lr_decay=0.01"],
}
PROBLEM = [
    "model=linear",
    "data=synthetic",
    "data.n_features=2",
    "train.batch_size=5",  # shuffled mini-batches: the batch order must resume too
    "train.checkpoint_every=7",
]
CASES = [(loop, name) for loop in ("numpy", "autograd", "optim") for name in OPTIMIZERS]
CASES.append(("optim", "lbfgs"))
OPTIMIZERS["lbfgs"] = ["optimizer=lbfgs", "optimizer.lr=0.1", "optimizer.max_iter=3"]


def _crash_after(monkeypatch, loop_module: str, cls: str, step: int) -> None:
    """Makes the loop die at `step`, after earlier steps were logged and checkpointed."""
    module = __import__(f"runner.loops.{loop_module}", fromlist=[cls])
    loop_cls = getattr(module, cls)
    real = loop_cls.steps

    def steps(self, first, last):
        for record in real(self, first, last):
            if record.step == step:
                raise RuntimeError("simulated crash")
            yield record

    monkeypatch.setattr(loop_cls, "steps", steps)


LOOP_CLASSES = {
    "numpy": ("numpy_loop", "NumpyLoop"),
    "autograd": ("autograd_loop", "AutogradLoop"),
    "optim": ("optim_loop", "OptimLoop"),
}


@pytest.mark.parametrize("loop,optimizer", CASES)
def test_crash_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, loop, optimizer):
    args = [f"loop={loop}", *PROBLEM, *OPTIMIZERS[optimizer], "train.steps=40"]
    train(tmp_path / "straight", *args)

    with monkeypatch.context() as patch:
        _crash_after(patch, *LOOP_CLASSES[loop], step=25)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tmp_path / "stopped", *args)
    crashed = pd.read_csv(tmp_path / "stopped" / "metrics.csv")
    assert crashed["step"].max() == 24  # rows past the checkpoint at 21 exist before resume
    summary, _ = train(tmp_path / "stopped", *args, "train.resume=true")

    assert summary["status"] == "completed" and summary["steps_completed"] == 40
    straight = (tmp_path / "straight" / "metrics.csv").read_bytes()
    assert (tmp_path / "stopped" / "metrics.csv").read_bytes() == straight
    first = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["params"] == first["params"] and summary["best_loss"] == first["best_loss"]


@pytest.mark.parametrize("loop", ["numpy", "optim"])
def test_a_finished_run_can_be_extended(tmp_path, loop):
    args = [f"loop={loop}", *PROBLEM, "optimizer=adam"]
    train(tmp_path / "straight", *args, "train.steps=30")
    train(tmp_path / "short", *args, "train.steps=12")  # 12 is no multiple of 7: final checkpoint
    train(tmp_path / "short", *args, "train.steps=30", "train.resume=true")
    assert (tmp_path / "short" / "metrics.csv").read_bytes() == (
        tmp_path / "straight" / "metrics.csv"
    ).read_bytes()


def test_resuming_a_completed_run_changes_nothing(tmp_path):
    summary, _ = train(tmp_path / "run", "train.steps=20")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    again, _ = train(tmp_path / "run", "train.steps=20", "train.resume=true")
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert again == summary and after == before


@pytest.mark.parametrize(
    "change,key",
    [
        ("optimizer=adam", "optimizer._target_"),
        ("optimizer.lr=0.5", "optimizer.lr"),
        ("model.init=0.5", "model.init"),
        ("data.noise=0.3", "data.noise"),
        ("train.seed=9", "data.seed"),  # synthetic data follows train.seed
        ("loop=numpy", "loop"),
    ],
)
def test_resume_with_other_settings_is_refused(tmp_path, change, key):
    args = [*PROBLEM, "train.steps=10"]
    train(tmp_path / "run", *args)
    with pytest.raises(ConfigError, match=rf"train.resume=true: expected the .*{key}"):
        train(tmp_path / "run", *args, "train.steps=20", change, "train.resume=true")


def test_resume_without_a_checkpoint_starts_over(tmp_path):
    args = ["train.steps=15", "train.checkpoint_every=0"]
    train(tmp_path / "a", *args)
    train(tmp_path / "b", "train.steps=5", "train.checkpoint_every=0")
    (tmp_path / "b" / "summary.json").unlink()  # as if killed before finishing
    summary, metrics = train(tmp_path / "b", *args, "train.resume=true")
    assert summary["steps_completed"] == 15 and metrics["step"].tolist() == list(range(1, 16))
    assert (tmp_path / "b" / "metrics.csv").read_bytes() == (
        tmp_path / "a" / "metrics.csv"
    ).read_bytes()


def test_resumed_tensorboard_shows_every_step_once(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [*PROBLEM, "train.steps=30", "loop=numpy"]
    with monkeypatch.context() as patch:
        _crash_after(patch, *LOOP_CLASSES["numpy"], step=17)
        with pytest.raises(RuntimeError):
            train(tmp_path / "run", *args)
    train(tmp_path / "run", *args, "train.resume=true")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [s.step for s in acc.Scalars("loss")]
    assert steps == list(range(1, 31))
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert [s.value for s in acc.Scalars("loss")] == pytest.approx(
        metrics["loss"].tolist(), rel=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["numpy", "autograd", "optim"])
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path, loop):
    steps = 4000 if loop == "numpy" else 1500
    args = [f"loop={loop}", *PROBLEM[:-1], "optimizer=adam", f"train.steps={steps}",
            "train.checkpoint_every=100", "log.flush_secs=0.01"]  # fmt: skip
    straight = run_cli(*args, "hydra.run.dir=straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args, "hydra.run.dir=killed"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ckpt = tmp_path / "killed" / "checkpoint"
    deadline = time.monotonic() + 120
    while not (ckpt.is_dir() and any(ckpt.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert killed_summary["status"] == "running"  # how a crashed run is recognised
    rows = pd.read_csv(tmp_path / "killed" / "metrics.csv")  # readable: no torn row
    assert 0 < len(rows) < steps

    resumed = run_cli(*args, "hydra.run.dir=killed", "train.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "killed" / "metrics.csv").read_bytes() == (
        tmp_path / "straight" / "metrics.csv"
    ).read_bytes()


@pytest.mark.slow
def test_a_sweep_resumes_skipping_finished_jobs(tmp_path):
    sweep = ["-m", "optimizer.lr=0.001,0.01,0.1", "train.steps=50", "train.checkpoint_every=10",
             f"hydra.sweep.dir={tmp_path}/sweep"]  # fmt: skip
    first = run_cli(*sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    done = jobs[0] / "metrics.csv"
    untouched = done.stat().st_mtime_ns
    reference = (jobs[1] / "metrics.csv").read_bytes()
    # job 1 was killed at step 25, before its first checkpoint; job 2 never started
    summary = json.loads((jobs[1] / "summary.json").read_text())
    (jobs[1] / "summary.json").write_text(json.dumps(summary | {"status": "running"}))
    lines = reference.decode().splitlines(keepends=True)
    (jobs[1] / "metrics.csv").write_text("".join(lines[:26]))
    shutil.rmtree(jobs[1] / "checkpoint")
    shutil.rmtree(jobs[2])

    again = run_cli(*sweep, "train.resume=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == jobs
    assert done.stat().st_mtime_ns == untouched  # finished job skipped
    assert (jobs[1] / "metrics.csv").read_bytes() == reference
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
