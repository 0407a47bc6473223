"""A sweep keeps every promise of a single run under the basic and the vectorized launcher alike:
rows on disk within log.flush_secs while it runs, SIGINT/SIGTERM handling and exit codes, a progress
bar, and a killed sweep that resumes to the bytes of its own uninterrupted sweep. Both launchers
drive their jobs through the same driver (runner.run.run_jobs), so these hold for one as for the
other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import cli_in_process, run_on_a_terminal, wait_for

LAUNCHERS = {"basic": [], "vectorized": ["hydra/launcher=vectorized"]}
RATES = "optimizer.lr=0.001,0.002"


def _start(tmp_path: Path, launcher: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", RATES, *LAUNCHERS[launcher], *args,
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _rows(csv: Path) -> int:
    try:
        return max(0, len(csv.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
# Both signals under the vectorized launcher, whose sweeps once ignored SIGINT and died silently
# on SIGTERM; the basic launcher's jobs are single runs, whose SIGTERM test_outputs.py sends.
@pytest.mark.parametrize(
    "launcher,signum,code",
    [("basic", signal.SIGINT, 130), ("vectorized", signal.SIGINT, 130),
     ("vectorized", signal.SIGTERM, 143)],
)  # fmt: skip
def test_a_signal_stops_the_sweep_with_every_logged_step_on_disk(tmp_path, launcher, signum, code):
    # No checkpoints, flush_secs=0.2: only the flush timer brings rows to the disk while the job
    # runs, so rows seen (and more of them a few flush periods later) mean the timer works; the
    # signal then ends the jobs at once, each summary says why, nothing logged is lost.
    proc = _start(tmp_path, launcher, "loop=numpy", "train.steps=100000000",
                  "log.flush_secs=0.2", "log.tensorboard=false", "log.landscape=false",
                  "train.checkpoint_every=0")  # fmt: skip
    first = tmp_path / "sweep" / "0_optimizer.lr=0.001" / "metrics.csv"
    try:
        wait_for(lambda: _rows(first) > 100, 60, "rows")
        seen = _rows(first)
        # more rows within 1.5 s while the sweep runs (as before: three periods of 0.5 s)
        wait_for(lambda: _rows(first) > seen, 1.5, "more rows within 1.5 s")
        assert proc.poll() is None
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    # the line says where the jobs are and how to resume them, whichever launcher ran them
    assert f"every logged step is on disk in {tmp_path / 'sweep'}; resume with: runner " in stderr
    assert stderr.rstrip().endswith("train.resume=true")
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    # basic: job 1 never started; vectorized: both jobs train together and stop together
    expected = 1 if launcher == "basic" else 2
    assert len(jobs) == expected
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        metrics = pd.read_csv(job / "metrics.csv")
        assert summary["status"] == "interrupted"
        assert summary["steps_completed"] == len(metrics) > 100
        assert metrics["step"].tolist() == list(range(1, len(metrics) + 1))


@pytest.mark.slow
# (basic, optim) is the single runs' SIGKILL test in test_resume.py: a basic job is a single run
@pytest.mark.parametrize(
    "launcher,loop", [("basic", "numpy"), ("vectorized", "numpy"), ("vectorized", "optim")]
)
def test_a_killed_sweep_resumes_to_the_bytes_of_its_uninterrupted_sweep(tmp_path, launcher, loop):
    # float32 and Adam: a job resumed apart from its batch would part from the batched numbers
    # long enough to be killed mid-run (after the first checkpoint, an eighth of the way into
    # job 0, and well before the next), short enough to take a second
    steps, every = (8000, 1000) if loop == "numpy" else (600, 50)
    args = [f"loop={loop}", "optimizer=adam", "model=linear", "data=synthetic",
            "data.n_features=2", "train.batch_size=5", f"train.steps={steps}",
            f"train.checkpoint_every={every}", "log.every_n_steps=10", "log.flush_secs=0.01",
            "log.tensorboard=false", "log.landscape=false"]  # fmt: skip
    # the uninterrupted sweep and the resume run in this process; only the kill needs a process
    straight = cli_in_process("-m", RATES, *LAUNCHERS[launcher], *args,
                              f"hydra.sweep.dir={tmp_path / 'straight'}", cwd=tmp_path)  # fmt: skip
    assert straight.returncode == 0, straight.stderr

    proc = _start(tmp_path, launcher, *args)
    job = tmp_path / "sweep" / "0_optimizer.lr=0.001"
    # Side by side, every job's checkpoint is in place before the kill (the basic launcher's job 1
    # has not started): jobs killed between their checkpoints' writes resume one by one. In place
    # means renamed into its name: the temporary file before the rename does not count.
    started = [job] if launcher == "basic" else [job, tmp_path / "sweep" / "1_optimizer.lr=0.002"]
    state = "state.npz" if loop == "numpy" else "state.pt"

    def checkpointed() -> bool:
        return all((j / "checkpoint" / state).exists() for j in started)

    try:
        wait_for(checkpointed, 60, "checkpoints", every=0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    killed = json.loads((job / "summary.json").read_text())
    assert killed["status"] == "running"  # killed mid-run, not after the end
    resumed = cli_in_process("-m", RATES, *LAUNCHERS[launcher], *args, "train.resume=true",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    if launcher == "vectorized":
        assert "vectorized launcher" not in resumed.stdout  # resumed as one batch
    for job in ("0_optimizer.lr=0.001", "1_optimizer.lr=0.002"):
        got = (tmp_path / "sweep" / job / "metrics.csv").read_bytes()
        assert got == (tmp_path / "straight" / job / "metrics.csv").read_bytes(), job


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_sweep_shows_a_progress_bar_on_a_terminal(tmp_path, launcher):
    argv = [
        sys.executable,
        "-m",
        "runner",
        "-m",
        RATES,
        *LAUNCHERS[launcher],
        "loop=numpy",
        "train.steps=20000",
        "log.tensorboard=false",
        "log.landscape=false",
        f"hydra.sweep.dir={tmp_path / 's'}",
    ]
    code, text = run_on_a_terminal(argv, tmp_path)
    assert code == 0, text
    assert "step/s" in text and "/20000 [" in text and "loss=" in text  # the tqdm bar
    assert text.count("completed: 20000 steps") == 2
