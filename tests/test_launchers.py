"""Hydra's launcher and sweeper plugins (the optional extras) through the real command line:
joblib, submitit_local and Ray run a sweep's jobs to the same results, in the same directories, as
the basic launcher, and the Optuna preset finds a good learning rate (slow: the plugins' worker
processes, or a process of the CLI's own)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from runner.jobs import SWEPT_KEYS_ENV
from runner.run import run
from tests.helpers import cli_in_process, compose_config, run_cli, wait_for

# A job of each ending: lr 0.01 completes; at float32, lr 1.0 diverges within 20 steps; lr -1
# is refused by the job itself (run() validates the optimizer): under joblib or submitit in a
# worker process, which the runner process learns of from the job's failed.json. Bad input is
# exit 2 under every launcher, as for a single run.
RATES = ["0.01", "1.0", "-1"]
JOBS = [f"{i}_optimizer.lr={lr}" for i, lr in enumerate(RATES)]
SWEEP = (
    "-m", f"optimizer.lr={','.join(RATES)}", "train.steps=20", "loop=numpy",
    "log.tensorboard=false", "log.landscape=false",
)  # fmt: skip


def command(launcher: str, *argv: str, cwd: Path, **env: str):
    """`runner ARGS...` under `hydra/launcher=<launcher>`: in this process for the launchers
    that run each job here or in a process they start for it and wait for (basic,
    submitit_local); in a process of its own for the others, whose workers outlive a command
    (joblib's pool stays up for reuse, with the environment it started with) or need an
    environment of their own (`env`)."""
    if launcher in ("basic", "submitit_local") and not env:
        return cli_in_process(*argv, f"hydra/launcher={launcher}", cwd=cwd)
    return run_cli(*argv, f"hydra/launcher={launcher}", cwd=cwd, **env)


def sweep_with(launcher: str, root: Path, *args: str, **env: str) -> Path:
    """The SWEEP run by `hydra/launcher=<launcher>` into root/<launcher> (exit 2: one job's input
    is bad, as RATES says); returns that dir."""
    sweep = root / launcher
    result = command(launcher, *SWEEP, *args, f"hydra.sweep.dir={sweep}", cwd=root, **env)
    assert result.returncode == 2, result.stderr  # the job with lr -1
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".") == JOBS
    return sweep


def results(sweep: Path) -> pd.DataFrame:
    """summary.csv without its one column that differs from run to run (wall time)."""
    return pd.read_csv(sweep / "summary.csv").drop(columns="wall_s")


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> pd.DataFrame:
    """The SWEEP's summary.csv as Hydra's basic launcher, one job after another, leaves it."""
    table = results(sweep_with("basic", tmp_path_factory.mktemp("basic")))
    assert table["status"].tolist() == ["completed", "diverged", "failed"]
    return table


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_launcher_plugin_runs_the_same_jobs(launcher, basic, tmp_path):
    sweep = sweep_with(launcher, tmp_path)
    pd.testing.assert_frame_equal(results(sweep), basic, check_exact=False, rtol=1e-12)
    if launcher == "submitit_local":
        # submitit keeps each job's console output in the job's log, not on the sweep's console
        logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
        for job in JOBS[:-1]:
            assert f"-> {sweep / job}\n" in logs
        assert "runner: error: optimizer.lr=-1.0: expected a number > 0\n" in logs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(pgid: int) -> None:
    """Ends the process group `pgid` (a Ray started by the test): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5  # Ray's own graceful stop can take far longer
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture
def ray_cluster():
    """A one-node Ray on 127.0.0.1, started for the test and stopped after it: its address and
    the environment a client of it needs."""
    missing = [m for m in ("ray", "hydra_plugins.hydra_ray_launcher") if find_spec(m) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed (pip install -e '.[ray]'; not in dev: "
            "hydra-ray-launcher needs cloudpickle<3, joblib 1.6 needs cloudpickle>=3)"
        )
    ray_env = {
        # Ray listens on the loopback only when it does not take the machine for a cluster node.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # a token of this test's own, whatever ~/.ray holds
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    # The cluster's processes get no RUNNER_SWEPT_KEYS of their own: the launcher must pass it on.
    env = {k: v for k, v in os.environ.items() if k != SWEPT_KEYS_ENV} | ray_env
    # short: Ray's socket paths under it must fit in 107 bytes
    temp_dir = tempfile.mkdtemp(prefix="ray")
    port = free_port()
    log = Path(temp_dir) / "start.log"
    with open(log, "w") as out:
        start = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head",
             "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", "--include-dashboard=false",
             "--num-cpus=2", "--disable-usage-stats", "--log-color=false",
             f"--temp-dir={temp_dir}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        assert start.wait(timeout=120) == 0, log.read_text()
        assert "Local node IP: 127.0.0.1" in log.read_text()
        yield f"127.0.0.1:{port}", ray_env
    finally:
        stop_group(start.pid)  # the session `ray start` led: every process of this Ray
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_the_ray_launcher_runs_the_same_jobs_on_a_running_cluster(ray_cluster, basic, tmp_path):
    address, ray_env = ray_cluster
    sweep = sweep_with(
        "ray_cluster", tmp_path, f"hydra.launcher.ray.init.address={address}", **ray_env
    )
    pd.testing.assert_frame_equal(results(sweep), basic, check_exact=False, rtol=1e-12)


# --- the Optuna preset --------------------------------------------------------------------------
# The seed problem (w*x on the seed line, SGD) in its default float32, where rates above ~0.35
# diverge: Optuna must take those trials' infinite loss and go on.
PROBLEM = ("train.steps=30", "loop=numpy")


def best_rate_on_a_grid(tmp_path: Path) -> float:
    """The best learning rate on a fine log grid over the preset's range, by run() in-process.
    A band of rates reaches a loss of exactly 0 at float32: the best is that band's middle."""
    cfg = compose_config(
        *PROBLEM, "log.progress=false", "log.csv=false", "log.tensorboard=false",
        "log.landscape=false", "train.checkpoint_every=0",
    )  # fmt: skip
    rates = np.geomspace(1e-4, 1.0, 49)
    losses = []
    for i, lr in enumerate(rates):
        cfg.optimizer.lr = float(lr)
        summary = run(cfg, tmp_path / f"grid{i}")
        losses.append(np.inf if summary["status"] != "completed" else summary["final_loss"])
    best = rates[np.asarray(losses) == min(losses)]
    return float(np.sqrt(best[0] * best[-1]))


@pytest.mark.slow
def test_the_optuna_preset_finds_a_rate_near_the_best(tmp_path):
    sweep = tmp_path / "optuna"
    result = run_cli(
        "-m", "hparams_search=lr_optuna", *PROBLEM, "log.tensorboard=false", "log.landscape=false",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    found = OmegaConf.load(sweep / "optimization_results.yaml").best_params["optimizer.lr"]
    best = best_rate_on_a_grid(tmp_path)
    assert best / 3 <= found <= best * 3, (found, best)

    table = pd.read_csv(sweep / "summary.csv")
    assert table["job"].tolist() == list(range(20))  # n_trials
    assert "diverged" in set(table["status"])  # an infinite loss did not stop the search
    assert table.loc[table["final_loss"].idxmin(), "optimizer.lr"] == found
    # job directories named as in any sweep: number, then the swept (here: searched) value
    lrs = [float(lr) for lr in table["optimizer.lr"]]
    assert table["dir"].tolist() == [f"{job}_optimizer.lr={lr!r}" for job, lr in enumerate(lrs)]

    # quiet: no Hydra, plugin or optuna log lines
    output = (result.stdout + result.stderr).splitlines()
    assert [line for line in output if "[HYDRA]" in line or "setup plugin" in line] == []
    assert result.stderr.strip() == "", result.stderr  # QuietOptuna: not even the study line


def start_sweep(cwd: Path, *args: str) -> subprocess.Popen:
    """`python -m runner -m ARGS...` in a process group of its own, so the test can end it
    (and only it) whatever happens."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "-m",
            *args,
            "log.tensorboard=false",
            "hydra.sweep.dir=sweep",
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        start_new_session=True,
    )


def wait_for_rows(*jobs: Path, timeout: float = 120) -> None:
    """Until every job's metrics.csv holds a few rows (bounded)."""
    names = [j.name for j in jobs]
    wait_for(lambda: all(len(rows(job)) > 3 for job in jobs), timeout, f"rows from {names}", 0.2)


def rows(job: Path) -> list[str]:
    try:
        return (job / "metrics.csv").read_text().splitlines()[1:]
    except FileNotFoundError:
        return []


def children(pid: int) -> set[int]:
    """The direct children of `pid`, from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def assert_whole_rows_and_interrupted(job: Path) -> None:
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "interrupted", job.name
    metrics = pd.read_csv(job / "metrics.csv")
    header = (job / "metrics.csv").read_text().splitlines()[0]
    assert all(line.count(",") == header.count(",") for line in rows(job))
    assert not metrics.isna().any().any()
    assert metrics["step"].tolist() == list(range(1, len(metrics) + 1))
    assert summary["steps_completed"] == len(metrics)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_sigterm_to_a_joblib_sweep_stops_every_job_and_leaves_no_worker(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = start_sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=0.01,0.02",
        "train.steps=3000000", "loop=numpy", "log.landscape=false",
    )  # fmt: skip
    jobs = [tmp_path / "sweep" / "0_optimizer.lr=0.01", tmp_path / "sweep" / "1_optimizer.lr=0.02"]
    try:
        wait_for_rows(*jobs)
        workers = children(proc.pid)
        assert len(workers) >= 2  # joblib's two workers (and loky's resource tracker)
        proc.send_signal(signal.SIGTERM)  # to the main process only, as `kill -TERM` does
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 143, err
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if alive(pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    for job in jobs:
        assert_whole_rows_and_interrupted(job)
    assert "Traceback" not in err


@pytest.mark.slow
def test_an_interrupted_sweep_still_writes_its_report(tmp_path):
    # job 0 finishes, job 1 is training when Ctrl-C comes, job 2 never starts
    proc = start_sweep(
        tmp_path, "train.steps=30,3000000,3000001", "loop=numpy", "log.landscape=false"
    )
    sweep = tmp_path / "sweep"
    try:
        wait_for_rows(sweep / "1_train.steps=3000000")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == 130, err
    table = pd.read_csv(sweep / "summary.csv")
    assert table["train.steps"].tolist() == [30, 3000000]
    assert table["status"].tolist() == ["completed", "interrupted"]
    assert table["steps_completed"].tolist()[1] == len(rows(sweep / "1_train.steps=3000000"))
    assert (sweep / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert f"wrote {sweep / 'summary.csv'}" in out
    assert_whole_rows_and_interrupted(sweep / "1_train.steps=3000000")
