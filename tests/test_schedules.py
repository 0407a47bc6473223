"""Learning-rate schedules (`scheduler=...`): every loop's lr column is the rate that
torch.optim.lr_scheduler's own class, driven by hand, gives at each step, to the last bit, for one
job and for K jobs side by side; the three loops agree with a schedule on; bad settings are one
line naming scheduler.KEY; no schedule means no per-step schedule work at all."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.optim import lr_scheduler as torch_schedulers

from runner import schedules
from runner.errors import ConfigError
from runner.loops.autograd_loop import AutogradLoop
from runner.loops.numpy_loop import NumpyLoop
from runner.loops.optim_loop import OptimLoop
from runner.optim_rules import SGD
from runner.run import build_problem
from runner.schema import TrainConf
from tests.helpers import compose_config
from tests.test_parity import TOLERANCE, assert_loops_agree, trajectories

LOOPS = {"numpy": NumpyLoop, "autograd": AutogradLoop, "optim": OptimLoop}
STEPS = 120
# Noisy mini-batches: the loss jumps from batch to batch, so plateau finds plateaus.
PROBLEM = (
    "model=linear",
    "data=synthetic",
    "data.n_features=3",
    "data.n_samples=32",
    "data.noise=0.5",
    "train.batch_size=5",
    "optimizer=adam",
    "optimizer.lr=0.05",
    f"train.steps={STEPS}",
)

# Each schedule's overrides, torch's scheduler for it (built from torch's own API, not from
# runner.schedules), and how many distinct rates it must reach in STEPS steps: enough that its
# milestones, restarts or plateau reductions are passed.
SCHEDULES = {
    "step": (
        ["scheduler=step", "scheduler.step_size=15", "scheduler.gamma=0.5"],
        lambda o: torch_schedulers.StepLR(o, step_size=15, gamma=0.5),
        8,
    ),
    "multistep": (
        ["scheduler=multistep", "scheduler.milestones=[10,40,41,90]", "scheduler.gamma=0.3"],
        lambda o: torch_schedulers.MultiStepLR(o, milestones=[10, 40, 41, 90], gamma=0.3),
        5,
    ),
    "exponential": (
        ["scheduler=exponential", "scheduler.gamma=0.97"],
        lambda o: torch_schedulers.ExponentialLR(o, gamma=0.97),
        STEPS,
    ),
    "cosine": (  # T_max: null is train.steps
        ["scheduler=cosine", "scheduler.eta_min=0.001"],
        lambda o: torch_schedulers.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.001),
        STEPS,
    ),
    "cosine_past_T_max": (  # down to eta_min and back up, four times
        ["scheduler=cosine", "scheduler.T_max=25"],
        lambda o: torch_schedulers.CosineAnnealingLR(o, T_max=25),
        90,
    ),
    "linear": (
        [
            "scheduler=linear",
            "scheduler.start_factor=0.1",
            "scheduler.end_factor=0.6",
            "scheduler.total_iters=60",
        ],
        lambda o: torch_schedulers.LinearLR(o, start_factor=0.1, end_factor=0.6, total_iters=60),
        61,
    ),
    "warmup_cosine": (
        [
            "scheduler=warmup_cosine",
            "scheduler.warmup_steps=20",
            "scheduler.start_factor=0.01",
            "scheduler.eta_min=0.0001",
        ],
        lambda o: torch_schedulers.SequentialLR(
            o,
            [
                torch_schedulers.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=20),
                torch_schedulers.CosineAnnealingLR(o, T_max=STEPS - 20, eta_min=0.0001),
            ],
            milestones=[20],
        ),
        STEPS,
    ),
    "plateau": (
        ["scheduler=plateau", "scheduler.patience=3", "scheduler.factor=0.5"],
        lambda o: torch_schedulers.ReduceLROnPlateau(o, patience=3, factor=0.5),
        4,
    ),
    "plateau_max_abs_cooldown": (
        [
            "scheduler=plateau",
            "scheduler.mode=max",
            "scheduler.threshold_mode=abs",
            "scheduler.threshold=0.01",
            "scheduler.patience=2",
            "scheduler.cooldown=3",
            "scheduler.factor=0.5",
            "scheduler.min_lr=0.0001",
        ],
        lambda o: torch_schedulers.ReduceLROnPlateau(
            o,
            mode="max",
            threshold_mode="abs",
            threshold=0.01,
            patience=2,
            cooldown=3,
            factor=0.5,
            min_lr=0.0001,
        ),
        3,
    ),
}


def torch_rates(make, lr: float, losses: np.ndarray) -> list[float]:
    """The rate of each step under torch's scheduler `make(optimizer)`, stepped by hand after
    each optimizer step; ReduceLROnPlateau with that step's loss."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make(optimizer)
    rates = []
    for loss in losses.tolist():
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: the parameter stays, the scheduler sees a step
        if isinstance(scheduler, torch_schedulers.ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()
    return rates


def loop_rows(loop: str, overrides, lrs=None) -> np.ndarray:
    """(K, T, D) host rows of `loop` on the composed problem, K jobs at `lrs` if given."""
    cfg = compose_config(*overrides)
    train: TrainConf = OmegaConf.to_object(cfg.train)
    problem = build_problem(cfg, train, "cpu")
    if lrs is not None:
        problem = dataclasses.replace(problem, lrs=np.array(lrs, dtype=np.float64))
    cls = LOOPS[loop]
    return cls.to_host(list(cls(problem).steps(1, train.steps)))


@pytest.mark.parametrize("jobs", [1, 3])
@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_loops_lr_column_is_torchs_to_the_last_bit(name, loop, jobs):
    overrides, make, distinct = SCHEDULES[name]
    lrs = [0.05, 0.01, 0.002][:jobs]
    rows = loop_rows(loop, [*PROBLEM, *overrides], lrs)
    for j, lr in enumerate(lrs):
        loss, rates = rows[j, :, 0], rows[j, :, 1]
        assert rates.tolist() == torch_rates(make, lr, loss), f"job {j}"
        assert len(set(rates.tolist())) >= distinct
    assert rows[0, 0, 1] != rows[0, -1, 1]


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize("name", ["warmup_cosine", "plateau"])
def test_the_lr_column_of_metrics_csv_is_torchs(runs, loop, name):
    # End to end, in float64, whose CSV values read back exactly.
    overrides, make, _ = SCHEDULES[name]
    _, metrics = runs(f"loop={loop}", *PROBLEM, *overrides, "train.dtype=float64")
    assert metrics["lr"].tolist() == torch_rates(make, 0.05, metrics["loss"].to_numpy())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["step", "cosine_past_T_max", "warmup_cosine", "plateau"])
def test_the_three_loops_agree_under_a_schedule(name, dtype):
    frames = trajectories(None, [*PROBLEM, *SCHEDULES[name][0], f"train.dtype={dtype}"])
    assert_loops_agree(frames, TOLERANCE[dtype])
    for loop, frame in frames.items():
        assert frame["lr"].tolist() == frames["optim"]["lr"].tolist(), loop


# --- the hand-written schedules on their own --------------------------------------------------
MANUAL = [
    schedules.Step(1, 0.9),
    schedules.MultiStep((1, 2, 3, 50), 0.5),
    schedules.MultiStep((), 0.5),
    schedules.Exponential(1.01),
    schedules.Cosine(1),
    schedules.Cosine(7, 0.02),
    schedules.Linear(),
    schedules.Linear(1.0, 0.0, 9),
    schedules.WarmupCosine(0, 0.5, 0.0),
    schedules.WarmupCosine(1, 0.2, 0.001),
    schedules.WarmupCosine(149, 0.3, 0.0),
    schedules.Plateau(patience=0),
    schedules.Plateau(patience=2, threshold=0.2, cooldown=1, min_lr=0.004),
]


@pytest.mark.parametrize("schedule", MANUAL, ids=repr)
def test_hand_written_rates_equal_torchs_for_one_job_and_for_k(schedule):
    resolved = schedule.resolved(150)
    lrs = np.array([0.1, 0.0123456789, 3e-5, 0.1])
    rng = np.random.default_rng(0)
    losses = np.abs(rng.standard_normal((150, len(lrs)))).astype(np.float32)
    together = schedules.ManualSchedule(resolved, lrs, SGD(), {"w": ()})
    alone = [schedules.ManualSchedule(resolved, lrs[[j]], SGD(), {"w": ()}) for j in range(4)]
    got_together, got_alone = [], []
    for loss in losses:
        got_together.append(list(together.rates))
        got_alone.append([a.rates[0] for a in alone])
        together.step(loss)
        for j, a in enumerate(alone):
            a.step(loss[j])
            assert isinstance(a.rates[0], float) and isinstance(a.rule.current.lr, float)
    want = [torch_rates(resolved.torch_scheduler, lr, losses[:, j]) for j, lr in enumerate(lrs)]
    assert np.array(got_together).T.tolist() == want
    assert np.array(got_alone).T.tolist() == want


def test_a_job_rule_is_at_its_rate_as_a_python_float():
    # One job: the rule's lr is a Python float, never a NumPy scalar (which would widen float32).
    schedule = schedules.ManualSchedule(schedules.Cosine(10), np.array([0.1]), SGD(), {"w": ()})
    for _ in range(12):
        assert type(schedule.rule.current.lr) is float
        schedule.step()
    assert schedule.rule.current.lr == schedule.rates[0]


def test_no_schedule_adds_nothing_to_a_loop():
    cfg = compose_config("loop=numpy", "train.steps=3")
    problem = build_problem(cfg, OmegaConf.to_object(cfg.train), "cpu")
    assert problem.schedule is None
    loop = NumpyLoop(problem)
    records = list(loop.steps(1, 3))
    assert all(r.lr is problem.lrs for r in records)  # the loop's own records, as they were
    assert set(loop.state(0)) == {"params", "optimizer"}  # checkpoints as before


@pytest.mark.parametrize("loop", ["numpy", "autograd"])
def test_one_jobs_schedule_state_is_that_of_its_own_run(loop):
    # The checkpoint of job 1 of 3 holds what a run of that job alone holds: ints and floats.
    overrides = [
        *PROBLEM,
        *SCHEDULES["warmup_cosine"][0],
        "train.steps=30",
        "train.batch_size=null",
    ]
    cfg = compose_config(*overrides)
    train: TrainConf = OmegaConf.to_object(cfg.train)
    problem = build_problem(cfg, train, "cpu")
    together = LOOPS[loop](dataclasses.replace(problem, lrs=np.array([0.05, 0.01, 0.002])))
    alone = LOOPS[loop](dataclasses.replace(problem, lrs=np.array([0.01])))
    for _ in zip(together.steps(1, 30), alone.steps(1, 30), strict=True):
        pass
    state = together.state(1)["scheduler"]
    assert state == alone.state(0)["scheduler"]
    assert state["lr"] < 0.01 and state["initial_lr"] == 0.01
    leaves = [state["lr"], state["initial_lr"], state["last_epoch"], *state["0"].values()]
    assert all(type(v) in (int, float) for v in leaves)


def test_plateau_state_is_one_value_per_job():
    together = schedules.ManualSchedule(
        schedules.Plateau(patience=0), np.array([0.1, 0.2]), SGD(), {"w": ()}
    )
    for loss in ([1.0, 1.0], [2.0, 0.5], [3.0, 0.25]):
        together.step(np.array(loss, dtype=np.float32))
    state = together.state(0)
    assert state == {"lr": 0.1 * 0.1 * 0.1, "initial_lr": 0.1, "last_epoch": 3, "best": 1.0,
                     "num_bad_epochs": 0, "cooldown_counter": 0}  # fmt: skip
    assert together.state(1)["lr"] == 0.2 and together.state(1)["best"] == 0.25
    again = schedules.ManualSchedule(
        schedules.Plateau(patience=0), np.array([0.1, 0.2]), SGD(), {"w": ()}
    )
    again.load_state(0, state)
    assert again.state(0) == state and again.rates.tolist() == [0.1 * 0.1 * 0.1, 0.2]


# --- bad settings ------------------------------------------------------------------------------
BAD = [
    (["scheduler=step"], "scheduler.step_size=???: expected a value"),
    (
        ["scheduler=step", "scheduler.step_size=0"],
        "scheduler.step_size=0: expected an integer >= 1",
    ),
    (
        ["scheduler=step", "scheduler.step_size=5", "scheduler.gamma=0"],
        "scheduler.gamma=0.0: expected a number > 0",
    ),
    (
        ["scheduler=multistep", "scheduler.milestones=[30,10]"],
        "scheduler.milestones=[30, 10]: expected a list of increasing integers >= 1",
    ),
    (
        ["scheduler=multistep", "scheduler.milestones=[0,10]"],
        "scheduler.milestones=[0, 10]: expected a list of increasing integers >= 1",
    ),
    (
        ["scheduler=exponential", "scheduler.gamma=-0.5"],
        "scheduler.gamma=-0.5: expected a number > 0",
    ),
    (
        ["scheduler=cosine", "scheduler.T_max=0"],
        "scheduler.T_max=0: expected an integer >= 1, or null",
    ),
    (
        ["scheduler=cosine", "scheduler.eta_min=-1"],
        "scheduler.eta_min=-1.0: expected a number >= 0",
    ),
    (
        ["scheduler=linear", "scheduler.start_factor=0"],
        "scheduler.start_factor=0.0: expected a number in (0, 1]",
    ),
    (
        ["scheduler=linear", "scheduler.end_factor=1.5"],
        "scheduler.end_factor=1.5: expected a number in [0, 1]",
    ),
    (
        ["scheduler=linear", "scheduler.total_iters=0"],
        "scheduler.total_iters=0: expected an integer >= 1",
    ),
    (
        ["scheduler=warmup_cosine", "scheduler.warmup_steps=100"],
        "scheduler.warmup_steps=100: expected an integer >= 0 and < train.steps (100)",
    ),
    (
        ["scheduler=warmup_cosine", "scheduler.warmup_steps=-1"],
        "scheduler.warmup_steps=-1: expected an integer >= 0 and < train.steps (100)",
    ),
    (
        ["scheduler=plateau", "scheduler.factor=1.0"],
        "scheduler.factor=1.0: expected a number in [0, 1)",
    ),
    (
        ["scheduler=plateau", "scheduler.mode=maximum"],
        "scheduler.mode=maximum: expected min or max",
    ),
    (
        ["scheduler=plateau", "scheduler.patience=-1"],
        "scheduler.patience=-1: expected an integer >= 0",
    ),
    (
        ["scheduler=plateau", "scheduler.threshold_mode=relative"],
        "scheduler.threshold_mode=relative: expected rel or abs",
    ),
    (
        ["scheduler=plateau", "train.early_stop.monitor=val_loss"],
        "train.early_stop.monitor=val_loss: expected loss",
    ),
]


@pytest.mark.parametrize(
    "overrides,message", BAD, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else ""
)
def test_bad_settings_are_one_line_naming_the_key(runs, tmp_path, overrides, message):
    from runner.errors import describe_error

    with pytest.raises(Exception) as err:
        runs(*overrides)
    line, code = describe_error(err.value)
    assert line.startswith(message) and "\n" not in line and code == 2, line
    assert isinstance(err.value, ConfigError) or "???" in message
    assert not list(tmp_path.glob("*/metrics.csv"))


def test_scheduler_defaults_are_torchs():
    import inspect

    pairs = {
        "step": torch_schedulers.StepLR,
        "multistep": torch_schedulers.MultiStepLR,
        "exponential": torch_schedulers.ExponentialLR,
        "cosine": torch_schedulers.CosineAnnealingLR,
        "linear": torch_schedulers.LinearLR,
        "plateau": torch_schedulers.ReduceLROnPlateau,
    }
    for name, cls in pairs.items():
        cfg = compose_config(f"scheduler={name}").scheduler
        defaults = inspect.signature(cls).parameters
        for key in cfg:
            if key == "_target_" or OmegaConf.is_missing(cfg, key):
                continue  # what torch requires, the config requires too (`???`)
            value = cfg[key]
            if name == "cosine" and key == "T_max":
                assert value is None  # ours: null, train.steps (torch has no default)
                continue
            assert value == defaults[key].default, (name, key)
    warmup = compose_config("scheduler=warmup_cosine").scheduler
    linear, cosine = (inspect.signature(c).parameters for c in (
        torch_schedulers.LinearLR, torch_schedulers.CosineAnnealingLR))  # fmt: skip
    assert warmup.start_factor == linear["start_factor"].default
    assert warmup.eta_min == cosine["eta_min"].default
    assert math.isclose(warmup.start_factor, 1 / 3)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_schedule_that_keeps_the_rate_changes_no_byte(runs, tmp_path, loop):
    # step_size past train.steps: every step at optimizer.lr, through the scheduled code path
    args = (f"loop={loop}", *PROBLEM, "train.steps=30", "log.tensorboard=false")
    runs(*args)
    runs(*args, "scheduler=step", "scheduler.step_size=1000")
    plain, scheduled = ((tmp_path / f"run{i}" / "metrics.csv").read_bytes() for i in (0, 1))
    assert scheduled == plain


@pytest.mark.parametrize("loop", list(LOOPS))
def test_plateau_watches_val_loss_when_it_is_the_monitor(runs, loop):
    overrides, make, _ = SCHEDULES["plateau"]
    args = (f"loop={loop}", *PROBLEM, *overrides, "data.val_fraction=0.25", "train.dtype=float64")
    _, metrics = runs(*args, "optimizer.lr=0.5", "train.early_stop.monitor=val_loss")
    rates = metrics["lr"].tolist()
    assert rates == torch_rates(make, 0.5, metrics["val_loss"].to_numpy())
    assert rates != torch_rates(make, 0.5, metrics["loss"].to_numpy())  # not the train loss
    assert len(set(rates)) > 2


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_scheduler_step_per_optimizer_step_with_accumulation_and_clipping(dtype):
    # 2 mini-batches per update, clipped: the schedule counts updates, not batches
    overrides = [*PROBLEM, *SCHEDULES["warmup_cosine"][0], "train.accumulate=2",
                 "train.clip_grad_norm=0.5", f"train.dtype={dtype}"]  # fmt: skip
    frames = trajectories(None, overrides)
    assert_loops_agree(frames, TOLERANCE[dtype])
    want = torch_rates(SCHEDULES["warmup_cosine"][1], 0.05, np.zeros(STEPS))
    for loop, frame in frames.items():
        assert frame["lr"].tolist() == want, loop
