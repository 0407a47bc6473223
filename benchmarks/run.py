"""What the runner costs on top of hand-written loops, as ratios (SPEC.md, "Benchmarks").

    python benchmarks/run.py           # full: a few minutes; writes benchmarks/results.json
    python benchmarks/run.py --fast    # seconds; checks that every measurement runs, times nothing

The problem is seed notebook 000's: w*x on x = 1..4, y = 2x, MSE, SGD with lr 0.01, float32.
Each ratio compares two things measured side by side in this one process run: repetitions
alternate (baseline, runner, baseline, runner, ...) so the machine's noise falls on both sides,
and the ratio is of the two medians. Nothing is subtracted from either side.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict
from torch import nn

from runner import schema
from runner.run import run

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The targets, as ratio upper bounds.
TARGET_RUNNER_VS_BARE = 1.10  # runner loop, logging off / its bare loop
TARGET_LOGGING_COST = 1.25  # runner loop, full logging / the same loop with logging off
TARGET_NUMPY_VS_OPTIM = 0.35  # `runner loop=numpy` process / `runner loop=optim` process
TARGET_TORCH_VS_IMPORT = 1.3  # a torch loop's `runner` process / `python -c "import torch"`
TARGET_SWEEP_VS_ONE_RUN = 2.0  # a 64-rate vectorized sweep process / one run's process
# A 64-rate vectorized sweep of the linear model, long enough that training shows, / one run:
TARGET_LONG_SWEEP = {"numpy": 2.0, "optim": 4.0}

LOOPS = ("numpy", "autograd", "optim")
# What the runner runs for each bare loop below. The defaults already are notebook 000 (model
# scalar from w = 0, data seed_line, loss mse, SGD lr 0.01, float32); the optim loop's bare
# version uses nn.Linear(1, 1), so the runner gets model=linear (weight and bias) too.
LOOP_OVERRIDES = {
    "numpy": ["loop=numpy"],
    "autograd": ["loop=autograd"],
    "optim": ["loop=optim", "model=linear"],
}
# The progress bar is off in both: it only shows on a terminal, and the table should stay clean.
# Logging off includes landscape.png, whose sink keeps each logged step's parameters.
LOGGING_OFF = [
    "log.csv=false", "log.tensorboard=false", "log.landscape=false", "log.progress=false",
]  # fmt: skip
# Every step, every parameter and gradient (max_elements 16 covers all of them here).
LOGGING_FULL = [
    "log.csv=true", "log.tensorboard=true", "log.landscape=true", "log.every_n_steps=1",
    "log.progress=false",
]  # fmt: skip
# A learning-rate schedule over the run's steps (T_max: null is train.steps), logging off.
SCHEDULED = ["scheduler=cosine", *LOGGING_OFF]


@dataclass(frozen=True)
class Settings:
    """How much of everything a mode measures."""

    mode: str
    steps: int  # training steps per in-process measurement
    reps: int  # interleaved repetitions of each in-process measurement
    process_reps: int  # interleaved repetitions of each start-up process
    sweep_jobs: int  # learning rates in the sweep
    sweep_steps: int  # train.steps of every sweep job (and of the single run)
    long_sweep_steps: int  # train.steps of the linear model's sweeps (sweep/linear_*)
    sweep_reps: int
    # untimed first runs: of each process (page cache, .pyc files), and a round in this process
    # (imports, first-call caches)
    warmup: bool


FULL = Settings("full", 4000, 9, 7, 64, 100, 2000, 3, True)
# Small enough for the test suite; the numbers it gives mean nothing.
FAST = Settings("fast", 50, 1, 1, 2, 5, 5, 1, False)


# -- bare loops: what a user would write by hand -------------------------------------------
# Each returns (seconds for `steps` steps, final weight, loss of the last step).


def bare_numpy(steps: int) -> tuple[float, float, float]:
    """NumPy with the mean gradient of the MSE, dL/dw = 2*mean(x*(w*x - y))."""
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    y = 2 * x
    w, lr = np.float32(0.0), np.float32(0.01)
    start = time.perf_counter()
    for _ in range(steps):
        err = w * x - y
        loss = np.mean(err**2)  # the runner reports it, so the bare loop computes it too
        w = w - lr * 2 * np.mean(x * err)
    return time.perf_counter() - start, float(w), float(loss)


def bare_autograd(steps: int) -> tuple[float, float, float]:
    """torch autograd; the hand-written update under no_grad and the gradient zeroed by hand."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = 2 * x
    w = torch.tensor(0.0, requires_grad=True)
    start = time.perf_counter()
    for _ in range(steps):
        loss = ((w * x - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= 0.01 * w.grad
        w.grad.zero_()
    return time.perf_counter() - start, w.item(), loss.item()


def bare_optim(steps: int) -> tuple[float, float, float]:
    """nn.Linear(1, 1), nn.MSELoss and torch.optim.SGD, from torch's default init (seed 0)."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # (N, 1)
    y = 2 * x
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, model.weight.item(), loss.item()


# The clipped run's threshold: far below the gradient norm of the first steps (about 30), so
# clipping acts while the fit is far off; near the fit it only measures the norm.
CLIP_GRAD_NORM = 1.0


def bare_optim_clipped(steps: int) -> tuple[float, float, float]:
    """bare_optim with torch.nn.utils.clip_grad_norm_ between backward and step."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # (N, 1)
    y = 2 * x
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD_NORM)
        optimizer.step()
    return time.perf_counter() - start, model.weight.item(), loss.item()


# The MLP row: experiment=tanh_mlp (1 -> 16 -> 1, tanh, sin(x) on 25 points of [-3, 3]) with
# plain SGD, so the bare loop's update is one line per parameter.
MLP_RUN = ["experiment=tanh_mlp", "optimizer=sgd", "optimizer.lr=0.05"]


def bare_numpy_mlp(steps: int, seed: int = 0) -> tuple[float, float]:
    """A hand-written NumPy MLP, 1 -> 16 -> 1 with tanh, MSE and SGD lr 0.05 on the tanh_mlp
    preset's points, from nn.Linear's init drawn as the runner draws it (default_rng(seed),
    layer by layer, weight before bias): (seconds for `steps` steps, loss of the last step)."""
    x = np.round(np.linspace(-3, 3, 25), 2).astype(np.float32)[:, None]  # (N, 1)
    y = np.round(np.sin(x[:, 0].astype(np.float64)), 4).astype(np.float32)  # (N,)
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(-1, 1, (16, 1)).astype(np.float32)  # bound 1/sqrt(fan_in = 1)
    b1 = rng.uniform(-1, 1, 16).astype(np.float32)
    w2 = rng.uniform(-0.25, 0.25, (1, 16)).astype(np.float32)  # 1/sqrt(16)
    b2 = rng.uniform(-0.25, 0.25, 1).astype(np.float32)
    lr, n = np.float32(0.05), len(y)
    start = time.perf_counter()
    for _ in range(steps):
        h = np.tanh(x @ w1.T + b1)  # (N, 16)
        err = (h @ w2.T + b2)[:, 0] - y  # (N,)
        loss = np.mean(err**2)
        dpred = (2 / n) * err
        dw2, db2 = dpred[None, :] @ h, dpred.sum(keepdims=True)
        dz = (dpred[:, None] @ w2) * (1 - h * h)  # back through the output layer and tanh
        dw1, db1 = dz.T @ x, dz.sum(axis=0)
        w1, b1, w2, b2 = w1 - lr * dw1, b1 - lr * db1, w2 - lr * dw2, b2 - lr * db2
    return time.perf_counter() - start, float(loss)


BARE: dict[str, Callable[[int], tuple[float, float, float]]] = {
    "numpy": bare_numpy,
    "autograd": bare_autograd,
    "optim": bare_optim,
}


# -- the same loops with a cosine learning-rate schedule over all their steps -----------------
def cosine_rate(step: int, steps: int, lr: float = 0.01) -> float:
    """The rate of 0-based step `step` of `steps` under cosine annealing to 0 (the closed form
    a user writes; CosineAnnealingLR's recursion gives the same rates to rounding)."""
    return lr * (1 + math.cos(math.pi * step / steps)) / 2


def bare_numpy_cosine(steps: int) -> tuple[float, float, float]:
    """bare_numpy with the rate of each step from cosine_rate."""
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    y = 2 * x
    w = np.float32(0.0)
    start = time.perf_counter()
    for t in range(steps):
        lr = cosine_rate(t, steps)
        err = w * x - y
        loss = np.mean(err**2)
        w = w - lr * 2 * np.mean(x * err)
    return time.perf_counter() - start, float(w), float(loss)


def bare_autograd_cosine(steps: int) -> tuple[float, float, float]:
    """bare_autograd with the rate of each step from cosine_rate."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = 2 * x
    w = torch.tensor(0.0, requires_grad=True)
    start = time.perf_counter()
    for t in range(steps):
        lr = cosine_rate(t, steps)
        loss = ((w * x - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad
        w.grad.zero_()
    return time.perf_counter() - start, w.item(), loss.item()


def bare_optim_cosine(steps: int) -> tuple[float, float, float]:
    """bare_optim with torch.optim.lr_scheduler.CosineAnnealingLR stepped after each step."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # (N, 1)
    y = 2 * x
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start, model.weight.item(), loss.item()


BARE_COSINE: dict[str, Callable[[int], tuple[float, float, float]]] = {
    "numpy": bare_numpy_cosine,
    "autograd": bare_autograd_cosine,
    "optim": bare_optim_cosine,
}


# -- the runner in this process -------------------------------------------------------------


@dataclass
class Composed:
    cfg: DictConfig
    overrides: list[str]
    choices: dict[str, str]


def compose_runs(runs: dict[str, list[str]]) -> dict[str, Composed]:
    """Each name's config, composed from the shipped conf/ as `runner OVERRIDES...` would."""
    schema.register()
    out = {}
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        for name, overrides in runs.items():
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
            # The CLI hands run() the group choices (they label the run in HParams); do the same.
            choices = dict(cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
            out[name] = Composed(cfg, overrides, choices)
    return out


WARMUP_STEPS = 5


def warmup_of(run_cfg: Composed) -> Composed:
    """The same run for WARMUP_STEPS steps (untimed: imports and first calls), without composing
    it again."""
    cfg = copy.deepcopy(run_cfg.cfg)
    cfg.train.steps = WARMUP_STEPS
    overrides = [o for o in run_cfg.overrides if not o.startswith("train.steps=")]
    return Composed(cfg, [*overrides, f"train.steps={WARMUP_STEPS}"], run_cfg.choices)


def runner_seconds_per_step(run_cfg: Composed, out_dir: Path, steps: int) -> float:
    """The runner's own measure: wall time of the training part (sinks included) / steps."""
    summary = run(run_cfg.cfg, out_dir, run_cfg.overrides, run_cfg.choices)
    if summary["status"] != "completed" or summary["steps_completed"] != steps:
        raise RuntimeError(f"{run_cfg.overrides}: {summary['status']}, {summary}")
    return 1.0 / summary["steps_per_s"]


def measure_steps(settings: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """Per-step time of each loop: bare, in the runner with logging off, and fully logged; and
    with a cosine learning-rate schedule, bare and in the runner with logging off."""
    steps, fast = settings.steps, settings.mode == "fast"
    kinds = (("off", LOGGING_OFF), ("full", LOGGING_FULL), ("cosine", SCHEDULED))
    runs = {
        f"{loop}/{kind}": [*LOOP_OVERRIDES[loop], *extra, f"train.steps={steps}"]
        for loop in LOOPS
        for kind, extra in kinds
    }
    composed = compose_runs(runs)
    out_dirs = (work / f"run{i}" for i in range(1_000_000))
    bare_kinds = {"bare": BARE, "bare_cosine": BARE_COSINE}
    # An untimed first round: imports (tensorboard's protos, torch.optim) and first-call caches
    # belong to start-up, which is measured on its own.
    for loop in LOOPS if settings.warmup else ():
        for bare in bare_kinds.values():
            bare[loop](50)
        for kind, _ in kinds:
            warm = warmup_of(composed[f"{loop}/{kind}"])
            runner_seconds_per_step(warm, next(out_dirs), WARMUP_STEPS)
    samples: dict[str, list[float]] = {
        key: [] for key in [*runs, *(f"{x}/{b}" for x in LOOPS for b in bare_kinds)]
    }
    for _ in range(settings.reps):
        for loop in LOOPS:
            for name, bare in bare_kinds.items():
                samples[f"{loop}/{name}"].append(bare[loop](steps)[0] / steps)
            for kind, _ in kinds:
                key = f"{loop}/{kind}"
                samples[key].append(runner_seconds_per_step(composed[key], next(out_dirs), steps))
    results = {}
    for loop in LOOPS:
        bare, off, full = (samples[f"{loop}/{kind}"] for kind in ("bare", "off", "full"))
        bare_label = f"bare {loop} loop, {steps} steps"
        off_label, full_label = (f"runner {' '.join(runs[f'{loop}/{k}'])}" for k in ("off", "full"))
        results[f"step/{loop}/logging_off"] = measurement(
            "s/step", off_label, off, bare_label, bare, TARGET_RUNNER_VS_BARE, fast
        )
        results[f"step/{loop}/logging_full"] = measurement(
            "s/step", full_label, full, bare_label, bare, None, fast
        )
        results[f"step/{loop}/logging_cost"] = measurement(
            "s/step", full_label, full, off_label, off, TARGET_LOGGING_COST, fast
        )
        results[f"step/{loop}/scheduled"] = measurement(
            "s/step",
            f"runner {' '.join(runs[f'{loop}/cosine'])}",
            samples[f"{loop}/cosine"],
            f"bare {loop} loop with a cosine schedule, {steps} steps",
            samples[f"{loop}/bare_cosine"],
            None,  # what a schedule costs the runner: no target of the issue's
            fast,
        )
    return results


def runner_against_bare(
    args: list[str], bare: Callable[[int], tuple], settings: Settings, work: Path
) -> tuple[str, list[float], list[float]]:
    """One runner row against one bare loop: the runner command's label, and the per-step
    samples of the runner with `args` and of `bare`, interleaved, after an untimed round of
    each when `settings.warmup` (as in measure_steps)."""
    steps = settings.steps
    composed = compose_runs({"run": [*args, f"train.steps={steps}"]})["run"]
    out_dirs = (work / f"run{i}" for i in range(1_000_000))
    if settings.warmup:
        bare(50)
        runner_seconds_per_step(warmup_of(composed), next(out_dirs), WARMUP_STEPS)
    bare_samples, runner = [], []
    for _ in range(settings.reps):
        bare_samples.append(bare(steps)[0] / steps)
        runner.append(runner_seconds_per_step(composed, next(out_dirs), steps))
    return f"runner {' '.join(composed.overrides)}", runner, bare_samples


def measure_clipped(settings: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """Per-step time of the optim loop with train.clip_grad_norm (logging off), against the bare
    optim loop that clips with torch's clip_grad_norm_."""
    args = [*LOOP_OVERRIDES["optim"], *LOGGING_OFF, f"train.clip_grad_norm={CLIP_GRAD_NORM}"]
    label, runner, bare = runner_against_bare(args, bare_optim_clipped, settings, work)
    bare_label = f"bare optim loop with clip_grad_norm_, {settings.steps} steps"
    return {
        "step/optim/clip_grad_norm": measurement(
            "s/step", label, runner, bare_label, bare, TARGET_RUNNER_VS_BARE,
            settings.mode == "fast",
        )
    }  # fmt: skip


def measure_mlp(settings: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """Per-step time of `loop=numpy` on the MLP (logging off), against the bare NumPy MLP."""
    args = [*MLP_RUN, "loop=numpy", *LOGGING_OFF]
    label, runner, bare = runner_against_bare(args, bare_numpy_mlp, settings, work)
    bare_label = f"bare NumPy MLP loop, {settings.steps} steps"
    return {
        "step/numpy/mlp": measurement(
            "s/step", label, runner, bare_label, bare, TARGET_RUNNER_VS_BARE,
            settings.mode == "fast",
        )
    }  # fmt: skip


def measure_mlflow(settings: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """Per-step time of the optim loop fully logged with log.mlflow=true (to a SQLite store in
    `work`), against the same run without it. Each side is the wall time of the whole run(),
    sinks opened and closed included: MLflow's rows mostly go out when the run ends."""
    steps, fast = settings.steps, settings.mode == "fast"
    name = "step/optim/mlflow_cost"
    try:
        from mlflow import MlflowClient
    except ImportError:
        return {name: {"status": "skipped: mlflow not installed (pip install 'runner[mlflow]')"}}
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # an experiment of its own, so that MLflow's artifacts stay in `work`
    experiment = MlflowClient(uri).create_experiment(
        "benchmark", artifact_location=(work / "artifacts").as_uri()
    )
    base = [*LOOP_OVERRIDES["optim"], *LOGGING_FULL]
    with_mlflow = [*base, "log.mlflow=true", f"log.mlflow_uri={uri}"]
    composed = compose_runs(
        {"off": [*base, f"train.steps={steps}"], "on": [*with_mlflow, f"train.steps={steps}"]}
    )
    composed |= {f"{kind}_warm": warmup_of(composed[kind]) for kind in ("off", "on")}
    out_dirs = (work / f"run{i}" for i in range(1_000_000))

    def seconds_per_step(kind: str, n: int) -> float:
        run_cfg = composed[kind]
        start = time.perf_counter()
        summary = run(run_cfg.cfg, next(out_dirs), run_cfg.overrides, run_cfg.choices)
        if summary["status"] != "completed":
            raise RuntimeError(f"{run_cfg.overrides}: {summary['status']}")
        return (time.perf_counter() - start) / n

    previous = os.environ.get("MLFLOW_EXPERIMENT_ID")
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment
    try:
        for kind in ("off_warm", "on_warm") if settings.warmup else ():
            seconds_per_step(kind, WARMUP_STEPS)  # untimed: MLflow's imports and first calls
        off, on = [], []
        for _ in range(settings.reps):
            off.append(seconds_per_step("off", steps))
            on.append(seconds_per_step("on", steps))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID")
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = previous
    on_label = f"runner {' '.join(with_mlflow[:-1])} (SQLite), {steps} steps, whole run"
    off_label = f"runner {' '.join(base)}, {steps} steps, whole run"
    return {name: measurement("s/step", on_label, on, off_label, off, None, fast)}


# -- whole processes ------------------------------------------------------------------------


def runner_command() -> list[str]:
    """The `runner` console script of this interpreter's environment (else `python -m runner`)."""
    script = Path(sys.executable).with_name("runner")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "runner"]


def process_seconds(cmd: Sequence[str], cwd: Path) -> float:
    """Wall time of one process, from spawn to exit; a failure stops the benchmark."""
    cwd.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}:\n{proc.stderr}")
    return seconds


def interleaved(
    commands: dict[str, list[str]], reps: int, warmup: bool, work: Path
) -> dict[str, list[float]]:
    """Wall seconds of each command, run in turn `reps` times (each in a fresh directory)."""
    counter = iter(range(1_000_000))
    if warmup:
        for cmd in commands.values():
            process_seconds(cmd, work / f"p{next(counter)}")
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):
        for name, cmd in commands.items():
            samples[name].append(process_seconds(cmd, work / f"p{next(counter)}"))
    return samples


# A user's own one-step torch.optim script, as a process: constructing any torch.optim optimizer
# imports torch._dynamo (about as long as `import torch` itself), which the runner cannot avoid.
BARE_OPTIM_PROCESS = (
    "import torch; m = torch.nn.Linear(1, 1); opt = torch.optim.SGD(m.parameters(), lr=0.01); "
    "x = torch.arange(1.0, 5.0)[:, None]; opt.zero_grad(); "
    "torch.nn.MSELoss()(m(x), 2 * x).backward(); opt.step()"
)


def measure_startup(settings: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """Whole-process wall time of one-step runs, against processes that only use torch."""
    runner = runner_command()
    runs = {loop: f"runner loop={loop} train.steps=1" for loop in LOOPS}
    torch_only, bare_optim = 'python -c "import torch"', "python -c <one-step torch.optim script>"
    commands = {
        torch_only: [sys.executable, "-c", "import torch"],
        **{runs[loop]: [*runner, f"loop={loop}", "train.steps=1"] for loop in LOOPS},
        bare_optim: [sys.executable, "-c", BARE_OPTIM_PROCESS],
    }
    s = interleaved(commands, settings.process_reps, settings.warmup, work)
    fast = settings.mode == "fast"

    def row(runner_run: str, baseline_run: str, target: float | None) -> dict[str, Any]:
        return measurement(
            "s", runner_run, s[runner_run], baseline_run, s[baseline_run], target, fast
        )

    return {
        "startup/numpy_vs_optim": row(runs["numpy"], runs["optim"], TARGET_NUMPY_VS_OPTIM),
        "startup/optim_vs_import_torch": row(runs["optim"], torch_only, TARGET_TORCH_VS_IMPORT),
        "startup/autograd_vs_import_torch": row(
            runs["autograd"], torch_only, TARGET_TORCH_VS_IMPORT
        ),
        "startup/numpy_vs_import_torch": row(runs["numpy"], torch_only, None),
        # The runner's own share on the torch.optim path, torch's imports set aside.
        "startup/optim_vs_bare_optim_script": row(runs["optim"], bare_optim, None),
    }


def sweep_rates(n: int) -> list[str]:
    """`n` learning rates spread evenly in log scale over 1e-4..0.1 (all stable here: w*x on
    x = 1..4 diverges above lr 2/15)."""
    return [f"{lr:.4g}" for lr in np.geomspace(1e-4, 0.1, n)]


def measure_sweep(settings: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """A sweep through Hydra's basic launcher and through the vectorized one, each against one
    run with the same settings (the default experiment: the optim loop)."""
    runner = runner_command()
    steps = f"train.steps={settings.sweep_steps}"
    rates = sweep_rates(settings.sweep_jobs)
    sweep_cmd = [*runner, "-m", f"optimizer.lr={','.join(rates)}", steps]
    vectorized_cmd = [*sweep_cmd, "hydra/launcher=vectorized"]
    single_cmd = [*runner, "optimizer.lr=0.01", steps]
    # No warm-up: the start-up measurements just ran the same command many times.
    commands = {"basic": sweep_cmd, "vectorized": vectorized_cmd, "single": single_cmd}
    s = interleaved(commands, settings.sweep_reps, False, work)
    # Every job must have run to the end, or the sweep's time means nothing.
    for sweep_dir in work.iterdir():
        summaries = list(sweep_dir.glob("multirun/**/summary.json"))
        if summaries:
            done = [json.loads(p.read_text())["status"] == "completed" for p in summaries]
            if len(done) != len(rates) or not all(done):
                raise RuntimeError(f"sweep in {sweep_dir}: {sum(done)}/{len(rates)} jobs completed")
    n, fast = len(rates), settings.mode == "fast"
    single_label = f"runner optimizer.lr=0.01 {steps}"
    sweep_label = f"runner -m optimizer.lr=<{n} rates> {steps}"
    basic = measurement("s", sweep_label, s["basic"], single_label, s["single"], None, fast)
    vectorized = measurement(
        "s",
        f"{sweep_label} hydra/launcher=vectorized",
        s["vectorized"],
        single_label,
        s["single"],
        TARGET_SWEEP_VS_ONE_RUN,
        fast,
    )
    basic["jobs"] = vectorized["jobs"] = n
    return {f"sweep/basic_launcher_{n}": basic, f"sweep/vectorized_{n}": vectorized}


def measure_long_sweeps(settings: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """A vectorized sweep of the linear model on the seed line, long enough that training
    counts, against one run of it, for the numpy and the optim loop."""
    runner = runner_command()
    rates = sweep_rates(settings.sweep_jobs)
    n, fast = len(rates), settings.mode == "fast"
    rows = {}
    # Each loop with and without landscape.png: every job draws its own (SPEC.md), and the
    # pictures are most of these sweeps' time (README, Performance).
    for loop, pictures in itertools.product(("numpy", "optim"), (True, False)):
        args = [f"loop={loop}", "model=linear", "data=seed_line",
                f"train.steps={settings.long_sweep_steps}",
                *([] if pictures else ["log.landscape=false"])]  # fmt: skip
        sweep_cmd = [*runner, "-m", f"optimizer.lr={','.join(rates)}", *args,
                     "hydra/launcher=vectorized"]  # fmt: skip
        single_cmd = [*runner, "optimizer.lr=0.01", *args]
        s = interleaved({"sweep": sweep_cmd, "single": single_cmd}, settings.sweep_reps, False,
                        work / f"{loop}_{'pictures' if pictures else 'none'}")  # fmt: skip
        label = " ".join(args)
        row = measurement(
            "s",
            f"runner -m optimizer.lr=<{n} rates> {label} hydra/launcher=vectorized",
            s["sweep"],
            f"runner optimizer.lr=0.01 {label}",
            s["single"],
            TARGET_LONG_SWEEP[loop] if pictures else None,
            fast,
        )
        row["jobs"] = n
        rows[f"sweep/linear_{loop}_vectorized_{n}{'' if pictures else '_no_landscape'}"] = row
    return rows


# -- results --------------------------------------------------------------------------------


def measurement(
    unit: str,
    runner_label: str,
    runner_samples: list[float],
    baseline_label: str,
    baseline_samples: list[float],
    target: float | None,
    fast: bool,
) -> dict[str, Any]:
    """One row: medians of both sides, their ratio, and whether it meets `target` (an upper
    bound); a fast run's numbers are not measurements, so it judges nothing."""
    runner_median = statistics.median(runner_samples)
    baseline_median = statistics.median(baseline_samples)
    ratio = runner_median / baseline_median
    return {
        "status": "measured",
        "runner_run": runner_label,
        "baseline_run": baseline_label,
        "unit": unit,
        "runner": runner_median,
        "baseline": baseline_median,
        "ratio": ratio,
        "target": target,
        "met": None if fast or target is None else ratio <= target,
        "runner_samples": runner_samples,
        "baseline_samples": baseline_samples,
    }


def environment(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    """What the numbers depend on, and the command line (script path relative to the repo)."""
    script = Path(argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else Path(script.name)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "mode": settings.mode,
        "command": shlex.join(["python", str(shown), *argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "hydra": hydra.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        # Without cached bytecode every process compiles its modules again: slower start-ups.
        "dont_write_bytecode": bool(sys.flags.dont_write_bytecode),
        "settings": asdict(settings),
    }


def _value(seconds: float, unit: str) -> str:
    return f"{seconds * 1e6:.1f} us" if unit == "s/step" else f"{seconds:.3f} s"


def table(measurements: dict[str, dict[str, Any]], fast: bool) -> str:
    """One line per measurement: runner, baseline, ratio, target and whether it is met."""
    header = ("measurement", "runner", "baseline", "ratio", "target", "met")
    lines = []
    for name, m in measurements.items():
        if m["status"] != "measured":
            lines.append((name, m["status"], "", "", "", ""))
            continue
        target = "" if m["target"] is None else f"<= {m['target']:.2f}"
        met = "-" if m["target"] is None else {None: "n/a", True: "yes", False: "NO"}[m["met"]]
        lines.append(
            (
                name,
                _value(m["runner"], m["unit"]),
                _value(m["baseline"], m["unit"]),
                f"{m['ratio']:.3f}",
                target,
                met,
            )
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *lines]
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    if fast:
        out.append("(fast mode: checks that each measurement runs; the numbers mean nothing)")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every measurement, writes the results file and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="results file")
    args = parser.parse_args(argv)
    settings = FAST if args.fast else FULL
    env = environment(settings, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        work = Path(tmp)
        measurements = {
            **measure_steps(settings, work / "steps"),
            **measure_clipped(settings, work / "clipped"),
            **measure_mlp(settings, work / "mlp"),
            **measure_mlflow(settings, work / "mlflow"),
            **measure_startup(settings, work / "startup"),
            **measure_sweep(settings, work / "sweep"),
            **measure_long_sweeps(settings, work / "long_sweep"),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {"environment": env, "measurements": measurements}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(measurements, settings.mode == "fast"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
