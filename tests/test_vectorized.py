"""`hydra/launcher=vectorized`: a learning-rate sweep trained as one batched problem writes the
jobs the basic launcher writes (same directories, metrics and summaries, to the dtype's
tolerance), and a sweep it cannot batch runs job by job after saying why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from runner.run import Job, run, run_jobs
from tests.helpers import cli_in_process, compose_config

# 1e38 overflows float32 at once, whatever the optimizer: every sweep has a diverging job.
RATES = ["0.001", "0.01", "0.1", "1e+38"]
JOBS = [f"{i}_optimizer.lr={lr}" for i, lr in enumerate(RATES)]
LINEAR = ("model=linear", "data=synthetic", "data.n_features=2", "data.n_samples=8")
CASES = {
    "numpy-sgd-momentum": ("loop=numpy", "optimizer=sgd", "optimizer.momentum=0.9"),
    "numpy-adam-linear": ("loop=numpy", "optimizer=adam", *LINEAR, "train.batch_size=4"),
    "numpy-rmsprop": ("loop=numpy", "optimizer=rmsprop", "optimizer.momentum=0.5"),
    "numpy-adagrad-linear": ("loop=numpy", "optimizer=adagrad", *LINEAR),
    "autograd-sgd-linear": ("loop=autograd", "optimizer=sgd", "optimizer.momentum=0.9", *LINEAR),
    "autograd-adam": ("loop=autograd", "optimizer=adam"),
    "autograd-rmsprop-linear": ("loop=autograd", "optimizer=rmsprop", *LINEAR),
    "autograd-adagrad": ("loop=autograd", "optimizer=adagrad", "loss=huber"),
    # the rate reaches the state: ASGD's eta (a power of each job's lr), Rprop's step sizes
    # (whose default largest, 50, would clamp the rate 1e38 at once: no job would diverge)
    "numpy-asgd-linear": ("loop=numpy", "optimizer=asgd", "optimizer.t0=5", *LINEAR),
    "autograd-rprop": ("loop=autograd", "optimizer=rprop", "optimizer.step_sizes=[1e-6,1e38]"),
    "optim-sgd-nesterov-linear": (
        "loop=optim",
        "optimizer=sgd",
        "optimizer.momentum=0.9",
        "optimizer.nesterov=true",
        *LINEAR,
    ),
    "optim-adagrad-minibatch": ("loop=optim", "optimizer=adagrad", *LINEAR, "train.batch_size=4"),
    "optim-rmsprop": ("loop=optim", "optimizer=rmsprop", "loss=l1"),
    # clipping and accumulation: each job clipped by its own norm, over its own parameters
    "numpy-adam-clip-accumulate": (
        "loop=numpy",
        "optimizer=adam",
        *LINEAR,
        "train.batch_size=2",
        "train.accumulate=3",
        "train.clip_grad_norm=0.5",
    ),
    "autograd-sgd-clip-value-accumulate": (
        "loop=autograd",
        "optimizer=sgd",
        *LINEAR,
        "train.batch_size=2",
        "train.accumulate=2",
        "train.clip_grad_value=0.3",
    ),
    "optim-adam-clip-accumulate": (
        "loop=optim",
        "optimizer=adam",
        *LINEAR,
        "train.batch_size=3",
        "train.accumulate=2",
        "train.clip_grad_norm=0.5",
    ),
    # A schedule scales each job's rate: the sweep still trains side by side.
    "numpy-adam-warmup_cosine": (
        "loop=numpy", "optimizer=adam", "scheduler=warmup_cosine", "scheduler.warmup_steps=8",
    ),
    "autograd-sgd-step-linear": (
        "loop=autograd", "optimizer=sgd", "scheduler=step", "scheduler.step_size=4", *LINEAR,
    ),
    "optim-adam-plateau": (
        "loop=optim", "optimizer=adam", "scheduler=plateau", "scheduler.patience=2", *LINEAR,
    ),
}  # fmt: skip
# landscape.png is drawn from the numbers these tests compare; test_pictures.py checks it, and
# the lr_sweeps fixture checks each job of a sweep gets one
COMMON = ("train.steps=30", "log.tensorboard=false", "log.every_n_steps=7", "log.landscape=false")
RTOL = 1e-5  # float32 (SPEC)
PLATEAU = ("scheduler=plateau", "scheduler.patience=1", "scheduler.factor=0.5")


def sweep(root: Path, *args: str) -> tuple[Path, str]:
    """`runner -m ARGS...` (in this process) into root/sweep; returns the sweep dir and stdout."""
    out = root / "sweep"
    result = cli_in_process("-m", *args, f"hydra.sweep.dir={out}", cwd=root)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0] != ".")


def assert_same_job(got: Path, want: Path) -> None:
    """Same metrics.csv (numerically) and summary.json, but for wall time and speed."""
    a, b = pd.read_csv(got / "metrics.csv"), pd.read_csv(want / "metrics.csv")
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=RTOL, atol=1e-30)
    s, t = (json.loads((d / "summary.json").read_text()) for d in (got, want))
    for key in ("status", "steps_completed", "diverged_at_step", "loop", "device", "overrides"):
        assert s[key] == t[key], key
    for key in ("final_loss", "best_loss"):
        if t[key] is None:
            assert s[key] is None, key
        else:
            assert s[key] == pytest.approx(t[key], rel=RTOL), key
    for name, value in t["params"].items():
        # null (NaN) in a diverged job's parameters compares equal to null
        got, want = (np.array(v, dtype=float) for v in (s["params"][name], value))
        np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("case", list(CASES))
def test_jobs_side_by_side_equal_runs_one_by_one(case, tmp_path):
    # What the vectorized launcher trains, in-process: run_jobs with one job per rate. Each
    # job's outputs agree with those of its run alone to the dtype's tolerance. (Numbers only:
    # landscape.png, drawn from these numbers, is left to the sweeps below and test_pictures.)
    args = ("log.progress=false", *CASES[case], *COMMON)
    jobs = [
        Job(compose_config(*args, f"optimizer.lr={lr}"), tmp_path / "side" / job, (job,))
        for job, lr in zip(JOBS, RATES, strict=True)
    ]
    results = run_jobs(jobs)
    for job in jobs:
        alone = tmp_path / "alone" / job.out_dir.name
        run(job.cfg, alone, job.overrides)
        assert_same_job(job.out_dir, alone)
    assert [r.summary["status"] for r in results] == ["completed"] * 3 + ["diverged"]
    assert all(r.error is None for r in results)


@pytest.fixture(scope="module")
def lr_sweeps(tmp_path_factory) -> dict[str, Path]:
    """One sweep over RATES (numpy loop, Adam) under each launcher: launcher -> sweep dir."""
    args = ("-m", f"optimizer.lr={','.join(RATES)}", "loop=numpy", "optimizer=adam", *COMMON,
            "log.landscape=true")  # fmt: skip
    root = tmp_path_factory.mktemp("lr_sweeps")
    dirs = {}
    for launcher, extra in (("vectorized", ("hydra/launcher=vectorized",)), ("basic", ())):
        (root / launcher).mkdir()
        dirs[launcher], _ = sweep(root / launcher, *args, *extra)
    return dirs


def test_same_directories_and_summary_as_the_basic_launcher(lr_sweeps):
    vec, basic = lr_sweeps["vectorized"], lr_sweeps["basic"]
    assert job_dirs(vec) == job_dirs(basic) == JOBS
    for job in JOBS:
        assert_same_job(vec / job, basic / job)
        for name in ("config.yaml", "overrides.yaml"):
            hydra_file = Path(".hydra") / name
            assert (vec / job / hydra_file).read_text() == (basic / job / hydra_file).read_text()
        assert sorted(p.name for p in (vec / job).iterdir()) == sorted(
            p.name for p in (basic / job).iterdir()
        )
        assert (vec / job / "landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = (pd.read_csv(d / "summary.csv").drop(columns="wall_s") for d in (vec, basic))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=RTOL)


def test_a_sweep_over_other_keys_runs_job_by_job(tmp_path):
    out, stdout = sweep(
        tmp_path, "optimizer.lr=0.01,0.1", "loop=numpy,optim", *COMMON, "hydra/launcher=vectorized"
    )
    notes = [line for line in stdout.splitlines() if line.startswith("vectorized launcher:")]
    assert notes == ["vectorized launcher: the sweep varies loop (only optimizer.lr may vary); "
                     "running jobs one by one"]  # fmt: skip
    jobs = job_dirs(out)
    assert len(jobs) == 4
    for job in jobs:
        overrides = json.loads((out / job / "summary.json").read_text())["overrides"]
        want = tmp_path / "want" / job
        run(compose_config("log.progress=false", *overrides), want, overrides)
        assert_same_job(out / job, want)
    assert len(pd.read_csv(out / "summary.csv")) == 4


def test_lbfgs_runs_job_by_job(tmp_path):
    # 3 steps: the note is the claim (an LBFGS job's numbers are its own run's, run job by job)
    _, stdout = sweep(tmp_path, "optimizer.lr=0.01,0.1", "loop=optim", "optimizer=lbfgs", *COMMON,
                      "train.steps=3", "hydra/launcher=vectorized")  # fmt: skip
    assert (
        "vectorized launcher: optimizer LBFGS (its steps evaluate each job's loss apart); "
        "running jobs one by one" in stdout
    )


def test_an_optim_job_whose_step_overflows_diverges_alone_as_its_run_would(tmp_path):
    # torch.optim.Adam refuses a step size that overflows float32 (lr 1e38), where the manual
    # rules reach inf: that job diverges at step 1, as its own run does, and the others go on.
    args = ("log.progress=false", "loop=optim", "optimizer=adam", *COMMON)
    jobs = [
        Job(compose_config(*args, f"optimizer.lr={lr}"), tmp_path / "side" / job, (job,))
        for job, lr in zip(JOBS, RATES, strict=True)
    ]
    results = run_jobs(jobs)
    assert [r.summary["status"] for r in results] == ["completed"] * 3 + ["diverged"]
    assert results[-1].summary["diverged_at_step"] == 1 and results[-1].error is None
    for job in jobs:
        alone = tmp_path / "alone" / job.out_dir.name
        run(job.cfg, alone, job.overrides)
        assert_same_job(job.out_dir, alone)


def test_a_bad_rate_stops_the_sweep_before_any_job_runs(tmp_path):
    # The vectorized launcher makes the check Hydra's sweeper skips under it: Hydra's message,
    # exit 2, no job directory, as with the basic launcher.
    for launcher in ("vectorized", "basic"):
        out = tmp_path / launcher
        extra = ["hydra/launcher=vectorized"] if launcher == "vectorized" else []
        result = cli_in_process("-m", "optimizer.lr=0.1,0.01,abc", "loop=numpy", *COMMON, *extra,
                                f"hydra.sweep.dir={out}", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            "runner: error: optimizer.lr=abc: expected a number"
        ]
        assert not out.exists() or job_dirs(out) == []


def test_the_vectorized_launcher_brings_its_sweeper_unless_one_is_chosen(lr_sweeps, tmp_path):
    def sweeper_of(sweep_dir: Path) -> str:
        return OmegaConf.load(sweep_dir / "multirun.yaml").hydra.sweeper._target_

    assert sweeper_of(lr_sweeps["vectorized"]).endswith(".RunnerSweeper")
    out, _ = sweep(tmp_path, "optimizer.lr=0.01,0.1", "loop=numpy", *COMMON,
                   "hydra/launcher=vectorized", "hydra/sweeper=basic")  # fmt: skip
    assert sweeper_of(out).endswith(".BasicSweeper")
    assert job_dirs(out) == ["0_optimizer.lr=0.01", "1_optimizer.lr=0.1"]


@pytest.mark.parametrize(
    "loop_args",
    [
        ("loop=numpy", "optimizer=adam"),
        ("loop=autograd", "optimizer=rmsprop", "optimizer.momentum=0.5"),
        ("loop=optim", "optimizer=adam", *LINEAR),
        # the schedule's state too, each job's own (plateau's best and counters are per job)
        ("loop=numpy", "optimizer=adam", *LINEAR, "train.batch_size=3", *PLATEAU),
        ("loop=autograd", "optimizer=sgd", "scheduler=step", "scheduler.step_size=4"),
        ("loop=optim", "optimizer=adam", *LINEAR, "train.batch_size=3", *PLATEAU),
    ],
    ids=lambda args: " ".join(a for a in args if a.startswith(("loop=", "scheduler="))),
)
def test_a_side_by_side_jobs_checkpoint_continues_as_its_own_run(loop_args, tmp_path):
    # 20 steps side by side, then job 1's own run resumes from its checkpoint to 30: the same
    # rows as one run of 30 steps from scratch (optimizer state included).
    args = ("log.progress=false", *loop_args, "log.tensorboard=false", "log.landscape=false",
            "train.checkpoint_every=10")  # fmt: skip
    jobs = [
        Job(compose_config(*args, f"optimizer.lr={lr}", "train.steps=20"), tmp_path / str(j))
        for j, lr in enumerate(("0.01", "0.05"))
    ]
    run_jobs(jobs)
    resumed = run(compose_config(*args, "optimizer.lr=0.05", "train.steps=30",
                                 "train.resume=true"), tmp_path / "1")  # fmt: skip
    assert resumed["status"] == "completed" and resumed["steps_completed"] == 30
    want = tmp_path / "want"
    run(compose_config(*args, "optimizer.lr=0.05", "train.steps=30"), want)
    assert_same_job(tmp_path / "1", want)


SCHEDULED = {
    "cosine": ("scheduler=cosine", "scheduler.T_max=12", "scheduler.eta_min=0.0001"),
    "warmup_cosine": ("scheduler=warmup_cosine", "scheduler.warmup_steps=10"),
    "step": ("scheduler=step", "scheduler.step_size=7", "scheduler.gamma=0.5"),
    # rates of 0.05 and 0.01 fall to min_lr: the jobs' rates become equal, then stay so
    "plateau": ("scheduler=plateau", "scheduler.patience=1", "scheduler.min_lr=0.0001"),
}


@pytest.mark.parametrize("loop", ["numpy", "autograd", "optim"])
@pytest.mark.parametrize("schedule", list(SCHEDULED))
def test_a_scheduled_jobs_rates_are_those_of_its_own_run(loop, schedule, tmp_path):
    # float64, whose CSV values read back exactly: each job's lr column, bit for bit
    args = ("log.progress=false", f"loop={loop}", "optimizer=adam", *LINEAR, "train.batch_size=3",
            "train.steps=40", "train.dtype=float64", "log.tensorboard=false",
            "log.landscape=false", *SCHEDULED[schedule])  # fmt: skip
    rates = ("0.05", "0.01", "0.002")
    jobs = [
        Job(compose_config(*args, f"optimizer.lr={lr}"), tmp_path / "side" / lr) for lr in rates
    ]
    run_jobs(jobs)
    for job, lr in zip(jobs, rates, strict=True):
        run(job.cfg, tmp_path / "alone" / lr)
        got, want = (pd.read_csv(tmp_path / d / lr / "metrics.csv") for d in ("side", "alone"))
        assert got["lr"].tolist() == want["lr"].tolist()
        assert len(set(got["lr"])) > 2
        assert_same_job(tmp_path / "side" / lr, tmp_path / "alone" / lr)


@pytest.mark.parametrize("loop", ["numpy", "autograd", "optim"])
def test_jobs_side_by_side_resume_side_by_side_under_a_schedule(loop, tmp_path):
    # 20 steps of 3 jobs, then the same 3 resumed together to 30: the bytes of 30 straight
    args = ("log.progress=false", f"loop={loop}", "optimizer=adam", *LINEAR, "train.batch_size=3",
            "log.tensorboard=false", "log.landscape=false", "train.checkpoint_every=10",
            *PLATEAU)  # fmt: skip

    def jobs(root: str, *more: str) -> list[Job]:
        return [
            Job(compose_config(*args, f"optimizer.lr={lr}", *more), tmp_path / root / lr)
            for lr in ("0.05", "0.01", "0.002")
        ]

    run_jobs(jobs("straight", "train.steps=30"))
    run_jobs(jobs("resumed", "train.steps=20"))
    results = run_jobs(jobs("resumed", "train.steps=30", "train.resume=true"))
    assert [r.summary["steps_completed"] for r in results] == [30] * 3
    for lr in ("0.05", "0.01", "0.002"):
        straight = (tmp_path / "straight" / lr / "metrics.csv").read_bytes()
        assert (tmp_path / "resumed" / lr / "metrics.csv").read_bytes() == straight, lr
        assert len(set(pd.read_csv(tmp_path / "straight" / lr / "metrics.csv")["lr"])) > 2
