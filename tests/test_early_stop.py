"""Early stopping, the target loss, the best step and its parameters, and held-out rows: each
checked against the rows of a run that did not stop, read back from disk, in every loop."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from runner.data import Dataset, hold_out, synthetic
from runner.errors import ConfigError
from runner.jobs import final_line
from runner.run import Job, run, run_jobs
from tests.helpers import compose_config, train
from tests.test_resume import LOOP_CLASSES, _crash_after

# Mini-batches of noisy data: the batch loss wanders, so it stops improving now and then.
NOISY = (
    "model=linear",
    "data=synthetic",
    "data.n_features=2",
    "data.n_samples=12",
    "data.noise=0.5",
    "train.batch_size=4",
    "optimizer.lr=0.05",
    "log.tensorboard=false",
)
LOOPS = ("numpy", "autograd", "optim")


def expected_stop(losses: list[float], patience: int | None, min_delta: float, target=None):
    """(stop step or None, best step) as Keras' EarlyStopping counts, written plainly."""
    best, best_step, wait = math.inf, None, 0
    for step, loss in enumerate(losses, start=1):
        if loss < best - min_delta:
            best, best_step, wait = loss, step, 0
        else:
            wait += 1
        if (target is not None and loss <= target) or (patience is not None and wait >= patience):
            return step, best_step
    return None, best_step


def params_before(metrics: pd.DataFrame, step: int) -> dict:
    """The parameters a step's loss was measured at: those after the step before it."""
    row = metrics.iloc[step - 2]
    return {
        "weight": [[row["param/weight/0"], row["param/weight/1"]]],
        "bias": [row["param/bias"]],
    }


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("min_delta", [0.0, 0.05])
def test_early_stop_ends_where_patience_runs_out(tmp_path, loop, min_delta):
    args = (f"loop={loop}", *NOISY, "train.steps=150")
    _, metrics = train(tmp_path / "full", *args)
    want_stop, want_best = expected_stop(metrics["loss"].tolist(), 4, min_delta)
    assert want_stop is not None and want_stop < 150, "the case must stop early"

    early = (*args, "train.early_stop.patience=4", f"train.early_stop.min_delta={min_delta}")
    summary, stopped = train(tmp_path / "early", *early)
    assert summary["status"] == "completed" and summary["stop_reason"] == "early_stop"
    assert summary["steps_completed"] == want_stop == stopped["step"].iloc[-1]
    # the same rows as the run that went on, up to the stop
    full_lines = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert (tmp_path / "early" / "metrics.csv").read_text().splitlines() == full_lines[
        : want_stop + 1
    ]
    assert summary["best_step"] == want_best
    assert want_best > 1  # its parameters are then a row of metrics.csv
    best = params_before(stopped, want_best)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(v) for v in summary["best_params"].values()]),
        np.concatenate([np.ravel(v) for v in best.values()]),
        rtol=1e-7,
    )
    line = final_line(summary, tmp_path / "early")
    assert line.startswith(f"completed (early stop at step {want_stop}): {want_stop} steps")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_target_loss_stops_at_the_first_step_that_reaches_it(tmp_path, loop):
    args = (f"loop={loop}", "train.steps=100", "log.tensorboard=false")
    _, metrics = train(tmp_path / "full", *args)
    # step 31's loss as the run held it (float32), so the comparison is exact: reached first
    # at step 31, since the loss falls
    target = float(np.float32(metrics["loss"].iloc[30]))
    summary, stopped = train(tmp_path / "target", *args, f"train.target_loss={target!r}")
    want, _ = expected_stop(metrics["loss"].tolist(), None, 0.0, target)
    assert want == 31
    assert summary["stop_reason"] == "target_loss" and summary["steps_completed"] == 31
    assert stopped["loss"].iloc[-1] <= target < stopped["loss"].iloc[-2]
    assert "target loss reached at step 31" in final_line(summary, tmp_path)


def test_without_early_stopping_the_best_step_is_the_lowest_loss(tmp_path):
    summary, metrics = train(tmp_path / "run", "loop=numpy", *NOISY, "train.steps=60")
    assert summary["stop_reason"] == "steps" and summary["steps_completed"] == 60
    assert summary["best_step"] == int(metrics["step"][metrics["loss"].idxmin()])
    assert summary["best_loss"] == pytest.approx(metrics["loss"].min(), rel=1e-7)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_early_stopping_run_resumes_byte_identically(tmp_path, monkeypatch, loop):
    args = (f"loop={loop}", *NOISY, "train.steps=150", "train.checkpoint_every=5")
    args = (*args, "train.early_stop.patience=6", "train.early_stop.min_delta=0.01")
    args = (*args, "data.val_fraction=0.25", "train.early_stop.monitor=val_loss")
    straight, _ = train(tmp_path / "straight", *args)
    crash_at = straight["steps_completed"] - 3
    with monkeypatch.context() as patch:
        _crash_after(patch, *LOOP_CLASSES[loop], step=crash_at)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tmp_path / "resumed", *args)
    summary, _ = train(tmp_path / "resumed", *args, "train.resume=true")
    assert (tmp_path / "resumed" / "metrics.csv").read_bytes() == (
        tmp_path / "straight" / "metrics.csv"
    ).read_bytes()
    for key in ("stop_reason", "steps_completed", "best_step", "best_params", "best_val_loss"):
        assert summary[key] == straight[key], key
    # an early-stopped run is over: resuming it again trains nothing
    again, _ = train(tmp_path / "resumed", *args, "train.resume=true")
    assert again == summary


@pytest.mark.parametrize("loop", LOOPS)
def test_side_by_side_jobs_each_stop_on_their_own(tmp_path, loop):
    args = ("log.progress=false", "log.landscape=false", f"loop={loop}", *NOISY, "train.steps=120")
    # float64: every job then matches its run alone so closely that each stops at its step
    args = (*args, "train.early_stop.patience=5", "train.dtype=float64")
    args = (*args, "data.val_fraction=0.25", "train.early_stop.monitor=val_loss")
    rates = ["0.01", "0.05", "0.2"]
    jobs = [
        Job(compose_config(*args, f"optimizer.lr={lr}"), tmp_path / "side" / lr, (lr,))
        for lr in rates
    ]
    results = run_jobs(jobs)
    stops = set()
    for job, result in zip(jobs, results, strict=True):
        alone = run(job.cfg, tmp_path / "alone" / job.out_dir.name, job.overrides)
        for key in ("status", "stop_reason", "steps_completed", "best_step"):
            assert result.summary[key] == alone[key], key
        assert result.summary["best_val_loss"] == pytest.approx(alone["best_val_loss"], rel=1e-12)
        a = pd.read_csv(job.out_dir / "metrics.csv")
        b = pd.read_csv(tmp_path / "alone" / job.out_dir.name / "metrics.csv")
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-10, atol=1e-12)
        stops.add(alone["steps_completed"])
    assert len(stops) > 1  # the jobs did stop at different steps


# --- held-out rows ---------------------------------------------------------------------------


VALIDATED = (*NOISY, "data.n_samples=16", "data.val_fraction=0.25", "train.dtype=float64")


def test_val_loss_is_the_held_out_rows_loss_before_each_update(tmp_path):
    summary, metrics = train(tmp_path / "run", "loop=numpy", *VALIDATED, "train.steps=30")
    data = synthetic(n_samples=16, n_features=2, weight=2.0, bias=0.5, noise=0.5, seed=0)
    _, val = hold_out(data, 0.25, seed=0)
    assert len(val.y) == 4
    for step in range(2, 31):  # step t's val_loss is at the parameters after step t - 1
        before = metrics.iloc[step - 2]
        w = before[["param/weight/0", "param/weight/1"]].to_numpy(float)
        want = np.mean((val.x @ w + before["param/bias"] - val.y) ** 2)
        assert metrics["val_loss"].iloc[step - 1] == pytest.approx(want, rel=1e-12)
    assert summary["best_val_loss"] == pytest.approx(metrics["val_loss"].min(), rel=1e-15)
    assert list(metrics.columns)[-1] == "val_loss"  # after every column a run had before


def test_the_three_loops_agree_on_val_loss(tmp_path):
    frames = [train(tmp_path / loop, f"loop={loop}", *VALIDATED, "optimizer=adam",
                    "train.steps=100")[1] for loop in LOOPS]  # fmt: skip
    reference = frames[2]["val_loss"].to_numpy()
    for frame in frames[:2]:
        np.testing.assert_allclose(frame["val_loss"].to_numpy(), reference, rtol=1e-10)


def test_hold_out_draws_the_rows_from_the_seed():
    data = Dataset(np.arange(20.0)[:, None], np.arange(20.0) * 2)
    train_rows, val = hold_out(data, 0.25, seed=3)
    assert len(val.y) == 5 and len(train_rows.y) == 15
    assert sorted([*train_rows.x[:, 0], *val.x[:, 0]]) == list(np.arange(20.0))
    assert np.all(np.diff(val.x[:, 0]) > 0)  # in the data's own order
    _, val_again = hold_out(data, 0.25, seed=3)
    assert np.array_equal(val_again.x, val.x)
    assert not np.array_equal(hold_out(data, 0.25, seed=4)[1].x, val.x)
    assert hold_out(data, 0.0, seed=3) == (data, None)
    assert len(hold_out(data, 0.01, seed=3)[1].y) == 1  # at least one row, rounded up


def test_a_fraction_that_leaves_no_training_rows_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data.val_fraction=0.9: .*4 rows, 4 would be held"):
        train(tmp_path / "run", "data.val_fraction=0.9")
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.early_stop.monitor=accuracy", r"train.early_stop.monitor=accuracy: .*loss or"),
        ("train.early_stop.monitor=val_loss", r"monitor=val_loss: .*data.val_fraction"),
        ("train.early_stop.patience=0", r"train.early_stop.patience=0: .*>= 1, or null"),
        ("train.early_stop.min_delta=-1", r"train.early_stop.min_delta=-1.0: .*>= 0"),
        ("data.val_fraction=1.0", r"data.val_fraction=1.0: .*0 <= f < 1"),
    ],
)
def test_bad_stopping_settings_are_refused_by_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train(tmp_path / "run", override)
