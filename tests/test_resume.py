"""Checkpoints and exact resume: a run stopped anywhere and resumed ends with a metrics.csv
byte-identical to a run never stopped, for every loop and optimizer, mini-batches included."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pytest

from runner.errors import ConfigError
from runner.run import Finished, run
from tests.helpers import cli_in_process, train, wait_for

OPTIMIZERS = {
    "sgd": ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
    "adam": ["optimizer=adam", "optimizer.lr=0.01", "optimizer.amsgrad=true"],
    "adamw": ["optimizer=adamw", "optimizer.lr=0.01"],
    "rmsprop": ["optimizer=rmsprop", "optimizer.centered=true", "optimizer.momentum=0.5"],
    "adagrad": ["optimizer=adagrad", "optimizer.lr_decay=0.01"],
}
MORE_OPTIMIZERS = {
    # state beyond buffers: NAdam's mu_product, Rprop's step sizes, ASGD's eta (and its mu,
    # from the step, with averaging from step 10 on)
    "nadam": ["optimizer=nadam", "optimizer.maximize=true"],
    "radam": ["optimizer=radam", "optimizer.lr=0.01", "optimizer.decoupled_weight_decay=true"],
    "adamax": ["optimizer=adamax"],
    "adadelta": ["optimizer=adadelta"],
    "rprop": ["optimizer=rprop"],
    "asgd": ["optimizer=asgd", "optimizer.t0=10", "optimizer.lambd=0.01"],
}
PROBLEM = [
    "model=linear",
    "data=synthetic",
    "data.n_features=2",
    "train.batch_size=5",  # shuffled mini-batches: the batch order must resume too
    "train.checkpoint_every=7",
]
CASES = [(loop, name) for loop in ("numpy", "autograd", "optim") for name in OPTIMIZERS]
# The autograd loop runs the numpy loop's rules and checkpoints as the optim loop does: the
# numpy loop (the rule's state) and the optim loop (torch's) resume the later optimizers.
CASES += [(loop, name) for loop in ("numpy", "optim") for name in MORE_OPTIMIZERS]
OPTIMIZERS.update(MORE_OPTIMIZERS)
CASES.append(("optim", "lbfgs"))
OPTIMIZERS["lbfgs"] = ["optimizer=lbfgs", "optimizer.lr=0.1", "optimizer.max_iter=3"]
# Clipping and accumulation: a checkpoint sits at an optimizer step, so the micro-batch position
# follows from it (3 micro-batches a step: the crash at step 25 is mid-epoch).
OPTIMIZERS["adam+clip_grad_norm+accumulate"] = [
    *OPTIMIZERS["adam"], "train.clip_grad_norm=0.5", "train.accumulate=3"
]  # fmt: skip
OPTIMIZERS["sgd+clip_grad_value"] = [*OPTIMIZERS["sgd"], "train.clip_grad_value=0.2"]
OPTIMIZERS["lbfgs+clip_grad_norm"] = [*OPTIMIZERS["lbfgs"], "train.clip_grad_norm=0.5"]
CASES += [(loop, "adam+clip_grad_norm+accumulate") for loop in ("numpy", "autograd", "optim")]
CASES.append(("autograd", "sgd+clip_grad_value"))
CASES.append(("optim", "lbfgs+clip_grad_norm"))
# With a learning-rate schedule on: its state resumes too (40 steps, a crash at 25).
SCHEDULES = {
    "step": ["optimizer=adam", "scheduler=step", "scheduler.step_size=6", "scheduler.gamma=0.7"],
    "cosine": ["optimizer=sgd", "optimizer.momentum=0.9", "scheduler=cosine"],
    "warmup_cosine": ["optimizer=adamw", "scheduler=warmup_cosine", "scheduler.warmup_steps=23"],
    "plateau": [
        "optimizer=rmsprop",
        "scheduler=plateau",
        "scheduler.patience=1",
        "scheduler.cooldown=1",
        "scheduler.factor=0.5",
    ],
}
for name, args in SCHEDULES.items():
    OPTIMIZERS[f"schedule={name}"] = args
    CASES.extend((loop, f"schedule={name}") for loop in ("numpy", "autograd", "optim"))


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


@pytest.mark.parametrize("schedule", [[], SCHEDULES["step"][1:], SCHEDULES["plateau"][1:]])
@pytest.mark.parametrize("loop", ["numpy", "optim"])
def test_a_finished_run_can_be_extended(tmp_path, loop, schedule):
    # a schedule that does not follow train.steps continues too
    args = [f"loop={loop}", *PROBLEM, "optimizer=adam", *schedule]
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
# one loop of each checkpoint file (npz, pt): every loop's resume is the in-process crash test's
@pytest.mark.parametrize("loop", ["numpy", "optim"])
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path, loop):
    steps = 4000 if loop == "numpy" else 1500
    args = [f"loop={loop}", *PROBLEM[:-1], "optimizer=adam", f"train.steps={steps}",
            "train.checkpoint_every=100", "log.flush_secs=0.01", "log.landscape=false"]  # fmt: skip
    # the uninterrupted run and the resume run in this process; only the kill needs a process
    straight = cli_in_process(*args, "hydra.run.dir=straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args, "hydra.run.dir=killed"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ckpt = tmp_path / "killed" / "checkpoint"
    wait_for(lambda: any(ckpt.iterdir()), 120, "checkpoint", every=0.02)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert killed_summary["status"] == "running"  # how a crashed run is recognised
    rows = pd.read_csv(tmp_path / "killed" / "metrics.csv")  # readable: no torn row
    assert 0 < len(rows) < steps

    resumed = cli_in_process(*args, "hydra.run.dir=killed", "train.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "killed" / "metrics.csv").read_bytes() == (
        tmp_path / "straight" / "metrics.csv"
    ).read_bytes()


def test_a_sweep_resumes_skipping_finished_jobs(tmp_path):
    sweep = ["-m", "loop=numpy", "optimizer.lr=0.001,0.01,0.1", "train.steps=50",
             "train.checkpoint_every=10", "log.landscape=false",
             f"hydra.sweep.dir={tmp_path}/sweep"]  # fmt: skip
    first = cli_in_process(*sweep, cwd=tmp_path)
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

    again = cli_in_process(*sweep, "train.resume=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == jobs
    assert done.stat().st_mtime_ns == untouched  # finished job skipped
    assert (jobs[1] / "metrics.csv").read_bytes() == reference
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"


# --- nothing lost, nothing let in --------------------------------------------------------------
def _crashed(tmp_path, monkeypatch, *args, at=25):
    """A numpy-loop run of `args` crashed at step `at` in tmp_path/"run"; returns its directory."""
    with monkeypatch.context() as patch:
        _crash_after(patch, *LOOP_CLASSES["numpy"], step=at)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tmp_path / "run", *args)
    return tmp_path / "run"


RESUMABLE = ["loop=numpy", *PROBLEM, "train.steps=40"]  # checkpoints at 7, 14, 21, ...


def _files(directory) -> dict:
    return {
        p.relative_to(directory): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_resume_killed_as_it_reopens_metrics_csv_keeps_every_row(tmp_path, monkeypatch):
    import types

    from runner.sinks import csv_sink

    train(tmp_path / "straight", *RESUMABLE)
    run_dir = _crashed(tmp_path, monkeypatch, *RESUMABLE)
    lines = (run_dir / "metrics.csv").read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 24  # rows up to 24 on disk, checkpoint at 21

    def killed(fd, data):
        raise SystemExit("killed")  # the process dies at the sink's first write

    fake_os = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if n[0] != "_"})
    fake_os.write = killed
    with monkeypatch.context() as patch:
        patch.setattr(csv_sink, "os", fake_os)
        with pytest.raises(SystemExit):
            train(run_dir, *RESUMABLE, "train.resume=true")
    # the rows the checkpoint claims never left the disk; only those logged past it are cut
    assert (run_dir / "metrics.csv").read_bytes() == b"".join(lines[: 1 + 21])
    train(run_dir, *RESUMABLE, "train.resume=true")
    straight = (tmp_path / "straight" / "metrics.csv").read_bytes()
    assert (run_dir / "metrics.csv").read_bytes() == straight


def test_a_torn_last_line_past_the_checkpoint_is_logged_again(tmp_path, monkeypatch):
    train(tmp_path / "straight", *RESUMABLE)
    run_dir = _crashed(tmp_path, monkeypatch, *RESUMABLE)
    csv = run_dir / "metrics.csv"
    csv.write_bytes(csv.read_bytes()[:-7])  # row 24 torn by a kill mid-write
    train(run_dir, *RESUMABLE, "train.resume=true")
    assert csv.read_bytes() == (tmp_path / "straight" / "metrics.csv").read_bytes()


@pytest.mark.parametrize("damage", ["cut 7 bytes", "delete", "empty", "drop a row"])
def test_resume_refuses_a_metrics_csv_with_a_gap_before_the_checkpoint(tmp_path, damage):
    args = ["loop=numpy", *PROBLEM, "train.steps=14"]  # ends with its checkpoint at 14
    run_dir = tmp_path / "run"
    train(run_dir, *args)
    csv = run_dir / "metrics.csv"
    lines = csv.read_bytes().splitlines(keepends=True)
    if damage == "cut 7 bytes":
        csv.write_bytes(b"".join(lines)[:-7])
    elif damage == "delete":
        csv.unlink()
    elif damage == "empty":
        csv.write_bytes(b"")
    else:
        csv.write_bytes(b"".join(lines[:5] + lines[6:]))
    before = _files(run_dir)
    with pytest.raises(
        ConfigError, match=rf"train.resume=true: expected {re.escape(str(csv))} to hold the 14 rows"
    ):
        train(run_dir, *args, "train.steps=30", "train.resume=true")
    assert _files(run_dir) == before


def test_resume_refuses_a_metrics_csv_with_a_step_that_is_no_integer(tmp_path):
    args = ["loop=numpy", *PROBLEM, "train.steps=14"]
    train(tmp_path / "run", *args)
    csv = tmp_path / "run" / "metrics.csv"
    text = csv.read_text().splitlines(keepends=True)
    text[4] = "four" + text[4][1:]
    csv.write_text("".join(text))
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(csv))} to hold .* line 5 has step 'four'"
    ):
        train(tmp_path / "run", *args, "train.steps=30", "train.resume=true")


def test_resume_with_every_n_steps_keeps_the_rows_that_were_logged(tmp_path, monkeypatch):
    args = [*RESUMABLE, "log.every_n_steps=5"]
    train(tmp_path / "straight", *args)
    run_dir = _crashed(tmp_path, monkeypatch, *args)
    train(run_dir, *args, "train.resume=true")
    assert (run_dir / "metrics.csv").read_bytes() == (
        tmp_path / "straight" / "metrics.csv"
    ).read_bytes()
    # log.* may change on resume: rows 5..20 as logged, then every step from 22
    again = _crashed(tmp_path / "again", monkeypatch, *args)
    _, metrics = train(again, *RESUMABLE, "train.resume=true")
    assert metrics["step"].tolist() == [5, 10, 15, 20, *range(22, 41)]


def test_a_run_directory_that_holds_a_run_is_refused_without_resume(tmp_path):
    train(tmp_path / "run", "train.steps=5")
    before = _files(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"hydra.run.dir=\S+run: .*train.resume=true"):
        train(tmp_path / "run", "train.steps=5")
    assert _files(tmp_path / "run") == before


def test_resume_refuses_data_whose_contents_changed(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n2,4\n3,6\n")
    args = ["data=csv", f"data.path={data}", "data.target=y", "train.checkpoint_every=5"]
    train(tmp_path / "run", *args, "train.steps=10")
    data.write_text("x,y\n1,2\n2,4\n3,6\n")  # rewritten, same contents: fine
    train(tmp_path / "run", *args, "train.steps=15", "train.resume=true")
    data.write_text("x,y\n1,2\n2,5\n3,6\n")
    with pytest.raises(ConfigError, match=r"train.resume=true: expected .*the data"):
        train(tmp_path / "run", *args, "train.steps=20", "train.resume=true")


def test_a_resume_removes_the_temporary_files_of_a_killed_write(tmp_path, monkeypatch):
    run_dir = _crashed(tmp_path, monkeypatch, *RESUMABLE)
    leftovers = [run_dir / "checkpoint" / ".state.k1ll3d.tmp", run_dir / ".summary.k1ll3d.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"\0" * 1000)
    train(run_dir, *RESUMABLE, "train.resume=true")
    assert not any(p.exists() for p in leftovers)


@pytest.mark.parametrize("loop", ["numpy", "optim"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, loop, damage):
    args = [f"loop={loop}", "train.steps=10", "train.checkpoint_every=5"]
    train(tmp_path / "run", *args)
    (state,) = (p for p in (tmp_path / "run" / "checkpoint").iterdir() if ".prev." not in p.name)
    data = state.read_bytes()
    state.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"x" * 99}[damage]
    )
    with pytest.raises(
        ConfigError,
        match=rf"train.resume=true: expected a readable checkpoint; {re.escape(str(state))}",
    ):
        train(tmp_path / "run", *args, "train.steps=20", "train.resume=true")


@pytest.mark.parametrize("change", ["no tracker", "format 1"])
def test_a_checkpoint_of_another_format_is_one_line_naming_it(tmp_path, change):
    from runner import checkpoint

    args = ["loop=numpy", "train.steps=10", "train.checkpoint_every=5"]
    train(tmp_path / "run", *args)
    directory = tmp_path / "run" / "checkpoint"
    saved = checkpoint.load(directory, "numpy")
    meta = dict(saved.meta)
    if change == "no tracker":
        del meta["tracker"]
    checkpoint.save(directory, "numpy", saved.state, meta)
    if change == "format 1":  # as an older runner wrote it
        with np.load(directory / "state.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["__meta__"] = np.array(json.dumps({**meta, "format": 1}))
        np.savez(directory / "state.npz", **arrays)
    with pytest.raises(
        ConfigError, match=rf"expected a checkpoint .*{re.escape(str(directory / 'state.npz'))}"
    ):
        train(tmp_path / "run", *args, "train.steps=20", "train.resume=true")


def test_a_changed_group_is_named_by_its_choice(tmp_path):
    from tests.helpers import compose_config

    def run_with(optimizer: str, *more: str) -> None:
        overrides = [f"optimizer={optimizer}", "train.steps=10", *more]
        cfg = compose_config("log.progress=false", "log.landscape=false", *overrides)
        run(cfg, tmp_path / "run", overrides, choices={"optimizer": optimizer, "loop": "optim"})

    run_with("sgd")
    with pytest.raises(ConfigError, match=r"; optimizer was sgd, now adam \("):
        run_with("adam", "train.resume=true", "train.steps=20")
    with pytest.raises(ConfigError, match=r"; optimizer.lr was 0.01, now 0.2 \("):
        run_with("sgd", "train.resume=true", "train.steps=20", "optimizer.lr=0.2")


@pytest.mark.parametrize(
    "schedule", [["scheduler=cosine"], ["scheduler=warmup_cosine", "scheduler.warmup_steps=5"]]
)
def test_a_schedule_that_follows_train_steps_is_not_extended(tmp_path, schedule):
    # cosine's T_max: null is train.steps: 20 more steps would change every rate after step 10
    train(tmp_path / "run", *PROBLEM, *schedule, "train.steps=10")
    with pytest.raises(
        ConfigError,
        match=r"; train.steps was '10', now '20', and the schedule's length follows it \(",
    ):
        train(tmp_path / "run", *PROBLEM, *schedule, "train.steps=20", "train.resume=true")
    summary, _ = train(tmp_path / "long", *PROBLEM, "scheduler=cosine", "scheduler.T_max=10",
                       "train.steps=10")  # fmt: skip
    summary, _ = train(tmp_path / "long", *PROBLEM, "scheduler=cosine", "scheduler.T_max=10",
                       "train.steps=20", "train.resume=true")  # fmt: skip
    assert summary["steps_completed"] == 20


def test_a_changed_schedule_is_refused_on_resume(tmp_path):
    def run_with(*overrides: str) -> None:
        from tests.helpers import compose_config

        overrides = ("train.steps=10", *overrides)
        cfg = compose_config("log.progress=false", "log.landscape=false", *overrides)
        choices = {"scheduler": next((o.split("=")[1] for o in overrides
                                      if o.startswith("scheduler=")), "none")}  # fmt: skip
        run(cfg, tmp_path / "run", overrides, choices=choices)

    run_with()  # no schedule
    with pytest.raises(ConfigError, match=r"; scheduler was none, now cosine \("):
        run_with("scheduler=cosine", "train.resume=true", "train.steps=20")
    shutil.rmtree(tmp_path / "run")
    run_with("scheduler=step", "scheduler.step_size=3")
    with pytest.raises(ConfigError, match=r"; scheduler was step, now none \("):
        run_with("train.resume=true", "train.steps=20")
    with pytest.raises(ConfigError, match=r"; scheduler.step_size was 3, now 4 \("):
        run_with("scheduler=step", "scheduler.step_size=4", "train.resume=true", "train.steps=20")


def test_resuming_a_finished_run_with_fewer_steps_changes_nothing(tmp_path):
    from runner.jobs import final_line

    summary, _ = train(tmp_path / "run", "train.steps=30", "train.checkpoint_every=7")
    before = _files(tmp_path / "run")
    again, _ = train(tmp_path / "run", "train.steps=12", "train.resume=true")
    assert again == summary and _files(tmp_path / "run") == before
    line = final_line(again, tmp_path / "run", finished=isinstance(again, Finished))
    assert line.startswith("already completed: 30 steps, final loss ")
    assert line.endswith(f"-> {tmp_path / 'run'} (nothing to resume)")


def test_a_full_disk_names_the_file_and_leaves_a_failed_resumable_run(tmp_path, monkeypatch):
    import errno
    import types

    from runner.errors import describe_error
    from runner.sinks import csv_sink, summary

    args = [*RESUMABLE, "log.flush_secs=1000"]  # rows reach the disk at each checkpoint
    train(tmp_path / "straight", *args)
    straight = (tmp_path / "straight" / "metrics.csv").read_bytes()
    room = [straight.index(b"\n24,") + 5]  # the disk fills up inside row 24

    def write(fd, data):
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), room[0])
        room[0] -= n
        return os.write(fd, bytes(data[:n]))

    def mkstemp(*args, **kwargs):  # and then has no room for a new summary.json either
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return tempfile.mkstemp(*args, **kwargs)

    fake_os = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if n[0] != "_"})
    fake_os.write = write
    fake_tempfile = types.SimpleNamespace(mkstemp=mkstemp)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(csv_sink, "os", fake_os)
        patch.setattr(summary, "tempfile", fake_tempfile)
        with pytest.raises(OSError) as raised:
            train(run_dir, *args)
    assert describe_error(raised.value) == (
        f"{run_dir / 'metrics.csv'}: No space left on device",
        1,
    )
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    lines = straight.splitlines(keepends=True)
    assert (run_dir / "metrics.csv").read_bytes() == b"".join(lines[: 1 + 23])  # whole rows only
    summary_after, _ = train(run_dir, *args, "train.resume=true")  # once there is room again
    assert summary_after["status"] == "completed"
    assert (run_dir / "metrics.csv").read_bytes() == straight


def test_a_checkpoint_older_than_a_new_key_resumes_while_the_key_is_off(tmp_path):
    # A checkpoint written before optimizer.maximize existed: its settings lack the key. Once
    # resumed, the run's checkpoints hold it, and turning it on is refused as any change is.
    from runner import checkpoint

    args = ["loop=numpy", "train.steps=20", "train.checkpoint_every=5"]
    train(tmp_path / "straight", *args)
    train(tmp_path / "old", "loop=numpy", "train.steps=10", "train.checkpoint_every=5")
    saved = checkpoint.load(tmp_path / "old" / "checkpoint", "numpy")
    meta = dict(saved.meta)
    meta["fingerprint"] = {k: v for k, v in meta["fingerprint"].items() if "maximize" not in k}
    checkpoint.save(tmp_path / "old" / "checkpoint", "numpy", saved.state, meta)

    summary, _ = train(tmp_path / "old", *args, "train.resume=true")
    assert summary["steps_completed"] == 20
    assert (tmp_path / "old" / "metrics.csv").read_bytes() == (
        tmp_path / "straight" / "metrics.csv"
    ).read_bytes()
    with pytest.raises(ConfigError, match=r"optimizer\.maximize was False, now True"):
        train(tmp_path / "old", *args[:2], "train.steps=30", "optimizer.maximize=true",
              "train.resume=true")  # fmt: skip


@pytest.mark.parametrize("loop", ["numpy", "autograd", "optim"])
@pytest.mark.parametrize("behind", ["one checkpoint", "no checkpoint"])
def test_jobs_a_kill_left_checkpoints_apart_resume_side_by_side(tmp_path, loop, behind):
    # A kill between two jobs' checkpoint writes: job 1 is a checkpoint behind the others (or
    # has none yet). The sweep still resumes side by side, to its uninterrupted bytes.
    from runner.run import Job, run_jobs
    from tests.helpers import compose_config

    args = (
        "log.progress=false",
        f"loop={loop}",
        *PROBLEM,
        "optimizer=adam",
        "log.tensorboard=false",
        "log.landscape=false",
    )

    def jobs(root, steps):
        return [
            Job(compose_config(*args, f"optimizer.lr={lr}", f"train.steps={steps}", *extra),
                root / lr)
            for lr in ("0.01", "0.02", "0.05")
            for extra in [("train.resume=true",) if root.name == "cut" and steps == 30 else ()]
        ]  # fmt: skip

    run_jobs(jobs(tmp_path / "straight", 30))
    run_jobs(jobs(tmp_path / "cut", 20))  # checkpoints at 14 (kept as previous) and 20
    lagging = tmp_path / "cut" / "0.02" / "checkpoint"
    current = next(p for p in lagging.iterdir() if ".prev." not in p.name)
    previous = next(p for p in lagging.iterdir() if ".prev." in p.name)
    if behind == "one checkpoint":
        os.replace(previous, current)  # as if killed before its step-20 checkpoint
    else:
        shutil.rmtree(lagging)
    results = run_jobs(jobs(tmp_path / "cut", 30))
    assert [r.summary["steps_completed"] for r in results] == [30, 30, 30]
    for lr in ("0.01", "0.02", "0.05"):
        assert (tmp_path / "cut" / lr / "metrics.csv").read_bytes() == (
            tmp_path / "straight" / lr / "metrics.csv"
        ).read_bytes(), lr
