"""The training driver: builds everything from the config, drives the loop, feeds the sinks,
sums up. `run(cfg)` trains one run; `run_jobs` trains K jobs that differ only in their learning
rate as one batched problem (the vectorized launcher). A single run is a sweep of one: the same
code drives both, so signals, the flush timer, the progress bar, checkpoints and resume exist
once.

DictConfig stops here: below this module everything takes plain values and small dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner import checkpoint
from runner.build import build_parts, loop_class
from runner.data import BatchSchedule
from runner.device import resolve_device
from runner.errors import ConfigError
from runner.loops import Problem
from runner.metrics import Layout
from runner.schema import LogConf, TrainConf, validate
from runner.signals import Interrupted, StopSignals
from runner.sinks.csv_sink import CsvSink
from runner.sinks.summary import write_summary

# Records stay in the loop's arrays (on its device) and move to the host this many at a time, or
# sooner when a step is slow: one transfer and one round of bookkeeping per chunk, and on a GPU
# one synchronisation. A divergence found in a chunk ends the run at its step; the few steps
# computed past it are never logged.
CHUNK = 64


class MixedResumeSteps(ValueError):
    """Jobs resumed together whose checkpoints are at different steps (raised before anything
    is written): they resume one by one instead."""


@dataclass(frozen=True)
class Job:
    """One run to train: its task config, its output directory, and how the command line named
    it (`overrides`, and `choices`: config group -> option), which label it in summary.json and
    TensorBoard's HParams."""

    cfg: DictConfig
    out_dir: Path
    overrides: Sequence[str] = ()
    choices: Mapping[str, str] | None = None


@dataclass
class JobResult:
    """What one job left: its summary (as written to summary.json) and, for a job that failed,
    what it raised."""

    summary: dict[str, Any]
    error: BaseException | None = None


def run(
    cfg: DictConfig,
    out_dir: Path,
    overrides: Sequence[str] = (),
    choices: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Trains as `cfg` says, writing outputs into `out_dir`; returns the summary it wrote.

    A single run is `run_jobs` with one job. An error that failed the run is raised once its
    summary says `failed`; Ctrl-C and SIGTERM raise `Interrupted` as `run_jobs` says.
    """
    (result,) = run_jobs([Job(cfg, Path(out_dir), tuple(overrides), choices)])
    if result.error is not None:
        raise result.error
    return result.summary


def run_jobs(jobs: Sequence[Job]) -> list[JobResult]:
    """Trains K jobs side by side, one loop for all of them, each writing its own outputs.

    The jobs must differ in nothing but `optimizer.lr` (the vectorized launcher checks that;
    one job always qualifies). Each job has its own tracker, sinks, checkpoint and summary; a job
    that diverges or whose step raises stops there while the others go on. With train.resume,
    a job already finished in its directory is left as it is, and the others continue from their
    checkpoints (which must be at one step) or from step 1. SIGINT or SIGTERM stops every job
    after the current step; once everything logged is on disk, checkpointed, and every summary
    says `interrupted`, `Interrupted` (a KeyboardInterrupt) is raised. Any other error is
    re-raised after the summaries say `failed`.
    """
    started = time.perf_counter()
    cfg = jobs[0].cfg
    loop_name = cfg.loop.name
    for job in jobs:
        validate(job.cfg, loop_name)
    train: TrainConf = OmegaConf.to_object(cfg.train)
    log: LogConf = OmegaConf.to_object(cfg.log)
    device = resolve_device(cfg.device.name.value, loop_name)
    # Data and model come before the loop class: bad input is reported before torch loads.
    problem = build_problem(cfg, train, device, [float(job.cfg.optimizer.lr) for job in jobs])
    loop_cls = loop_class(cfg.loop)
    layout = Layout({k: np.shape(v) for k, v in problem.init.items()}, log.max_elements)

    runs = [_JobRun(job, layout, train, log) for job in jobs]
    results: dict[int, JobResult] = {}
    saved: dict[int, checkpoint.Checkpoint] = {}
    for j, job_run in enumerate(runs):
        if not train.resume:
            continue
        state = checkpoint.load(job_run.checkpoint_dir, loop_cls.backend, device)
        if state is not None:
            _check_same_settings(state.meta["fingerprint"], job_run.fingerprint)
            saved[j] = state
        finished = _finished(job_run.summary_path, train.steps)
        if finished is not None:
            results[j] = JobResult(finished)
    active = [j for j in range(len(runs)) if j not in results]
    if not active:
        return [results[j] for j in range(len(runs))]
    resume_steps = {saved[j].step if j in saved else None for j in active}
    if len(resume_steps) > 1:
        steps = ", ".join(sorted(str(s) for s in resume_steps))
        raise MixedResumeSteps(f"their checkpoints are at different steps ({steps})")
    resume_at = resume_steps.pop()
    if len(active) < len(runs):
        problem = dataclasses.replace(problem, lrs=problem.lrs[active])
        runs = [runs[j] for j in active]

    loop = loop_cls(problem)
    for j, job_run in enumerate(runs):
        if resume_at is not None:
            state = saved[active[j]]
            loop.load_state(j, state.state)
            job_run.tracker.load_state(state.meta["tracker"])
        job_run.start(problem, loop_cls, device)

    every = train.checkpoint_every
    # A finished step waits at most half of log.flush_secs to reach the host, and logged rows
    # at most the other half to reach the disk: on disk within log.flush_secs of their step.
    half = log.flush_secs / 2
    first = (resume_at or 0) + 1
    failed: dict = getattr(loop, "failed", {})  # job -> (step, error): a step that raised
    live = list(range(len(runs)))  # jobs still training
    pending: list = []
    train_started = time.perf_counter()
    moved = flushed = time.monotonic()
    # Divergence is the runner's to detect and report, so NumPy's overflow warnings are noise.
    with StopSignals() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            for job_run in runs:
                job_run.open_sinks(problem.dtype, resume_at)
            with _progress(train.steps, first - 1, log.progress) as bar:
                for record in loop.steps(first, train.steps):
                    pending.append(record)
                    due = every > 0 and record.step % every == 0
                    last = record.step == train.steps or stop.signum is not None
                    now = time.monotonic()
                    if not (len(pending) >= CHUNK or last or due or now - moved >= half):
                        continue
                    moved = now
                    rows = loop.to_host(pending)  # (K, T, D)
                    chunk_start = pending[0].step
                    pending.clear()
                    for j in list(live):
                        job_run = runs[j]
                        if j in failed:  # its run stops before the step that raised
                            failed_at = failed[j][0]
                            if failed_at > chunk_start:
                                job_run.consume(rows[j][: failed_at - chunk_start])
                            job_run.fail(failed[j][1])
                            live.remove(j)
                            continue
                        job_run.consume(rows[j])
                        if job_run.tracker.diverged_at is not None:
                            live.remove(j)
                        elif due:
                            job_run.save_checkpoint(loop.state(j))
                    if now - flushed >= half:
                        flushed = now
                        for job_run in runs:
                            job_run.flush()
                    shown = runs[live[0]] if live else runs[0]
                    if shown.tracker.last_row is not None:
                        bar.set_postfix_str(f"loss={shown.tracker.last_row[0]:.4g}", refresh=False)
                    bar.update(len(rows[0]))
                    if not live or stop.signum is not None:
                        break
            for j in live:
                job_run = runs[j]
                job_run.summary["status"] = "completed" if stop.signum is None else "interrupted"
                if every > 0 and job_run.tracker.steps_completed % every != 0:
                    # resume (or a longer train.steps) continues from here
                    job_run.save_checkpoint(loop.state(j))
            for job_run in runs:
                if job_run.tracker.diverged_at is not None:
                    job_run.summary["status"] = "diverged"
        except BaseException as err:
            # A second Ctrl-C or a crash: the steps that finished are still logged.
            interrupted = isinstance(err, KeyboardInterrupt)
            rows = None
            if pending:
                with contextlib.suppress(Exception):
                    rows = loop.to_host(pending)
            for j in live:
                job_run = runs[j]
                job_run.summary["status"] = "interrupted" if interrupted else "failed"
                next_step = job_run.tracker.steps_completed + 1
                if rows is not None and pending[0].step == next_step:
                    with contextlib.suppress(Exception):
                        job_run.consume(rows[j])
            raise
        finally:
            train_s = time.perf_counter() - train_started
            wall_s = time.perf_counter() - started
            for job_run in runs:
                job_run.finish(train_s, wall_s, resume_at)
    if stop.signum is not None and live:
        raise Interrupted(stop.signum)
    for j, job_run in enumerate(runs):
        results[active[j]] = JobResult(job_run.summary, job_run.error)
    return [results[j] for j in sorted(results)]


class _JobRun:
    """One job's side of run_jobs: its directory, tracker, sinks, checkpoint and summary."""

    def __init__(self, job: Job, layout: Layout, train: TrainConf, log: LogConf) -> None:
        self.job, self.log = job, log
        self.out_dir = Path(job.out_dir)
        self.summary_path = self.out_dir / "summary.json"
        self.checkpoint_dir = self.out_dir / "checkpoint"
        self.fingerprint = settings_fingerprint(job.cfg)
        self.layout = layout
        self.tracker = Tracker(layout, train.steps, log.every_n_steps)
        self.sinks: list = []
        self.summary: dict[str, Any] = {}
        self.error: BaseException | None = None

    def start(self, problem: Problem, loop: type, device: str) -> None:
        self.backend = loop.backend
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary = initial_summary(problem, loop.name, device, self.job.overrides, self.tracker)
        write_summary(self.summary_path, self.summary)

    def open_sinks(self, dtype: str, resume_at: int | None) -> None:
        job = self.job
        self.sinks = open_sinks(
            job.cfg, self.log, self.layout, self.out_dir, dtype, job.overrides, job.choices,
            resume_at,
        )  # fmt: skip

    def consume(self, rows: np.ndarray) -> None:
        self.tracker.consume(rows, self.sinks)

    def fail(self, error: BaseException) -> None:
        self.summary["status"] = "failed"
        self.error = error

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def save_checkpoint(self, state: dict) -> None:
        save_state(self.checkpoint_dir, self.backend, state, self.tracker, self.sinks,
                   self.fingerprint)  # fmt: skip

    def finish(self, train_s: float, wall_s: float, resume_at: int | None) -> None:
        summary = self.summary
        summary.update(self.tracker.results(), wall_s=wall_s)
        done = summary["steps_completed"] - (resume_at or 0)
        summary["steps_per_s"] = done / train_s if train_s > 0 else 0.0
        for sink in self.sinks:
            sink.close(summary)
        write_summary(self.summary_path, summary)


def initial_summary(
    problem: Problem,
    loop: str,
    device: str,
    overrides: Sequence[str],
    tracker: Tracker,
) -> dict[str, Any]:
    """summary.json as a run starts (status `running`), carrying what a resume restored."""
    summary: dict[str, Any] = {
        "status": "running",
        "steps_completed": 0,
        "final_loss": None,
        "best_loss": None,
        "params": {k: v.tolist() for k, v in problem.init.items()},
        "diverged_at_step": None,
        "wall_s": 0.0,
        "steps_per_s": 0.0,
        "loop": loop,
        "device": device,
        "overrides": list(overrides),
    }
    summary.update(tracker.results())
    return summary


def save_state(
    directory: Path,
    backend: str,
    state: dict,
    tracker: Tracker,
    sinks: list,
    fingerprint: dict[str, Any],
) -> None:
    """A checkpoint of `state` at the tracker's step; the sinks are flushed first, so the rows
    up to that step are on disk before the checkpoint claims them."""
    for sink in sinks:
        sink.flush()
    meta = {"step": tracker.steps_completed, "tracker": tracker.state()}
    checkpoint.save(directory, backend, state, meta | fingerprint)


def _finished(summary_path: Path, steps: int) -> dict[str, Any] | None:
    """The summary of a run that resume has nothing left to do for, else None."""
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    done = summary.get("status") == "completed" and summary.get("steps_completed") == steps
    return summary if done or summary.get("status") == "diverged" else None


# What a resumed run must share with the run it continues; log.*, train.steps and the device
# may change (a longer run, other logging), but not what would make the result meaningless.
_FINGERPRINT_KEYS = ("model", "data", "loss", "optimizer", "loop")
_FINGERPRINT_TRAIN = ("seed", "batch_size", "dtype")


def settings_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """{"fingerprint": ...}: the settings a resumed run must share with its checkpoint, flat."""
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in _FINGERPRINT_KEYS}
    settings["train"] = {
        k: str(cfg.train[k].value if k == "dtype" else cfg.train[k]) for k in _FINGERPRINT_TRAIN
    }
    return {"fingerprint": _flat(settings)}


def _flat(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        return {
            k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): repr(tree)}


def _check_same_settings(saved: Mapping[str, str], now: Mapping[str, Any]) -> None:
    current = now["fingerprint"]
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise ConfigError(
                "train.resume",
                True,
                f"the settings of the run being resumed; {key} was {saved.get(key, 'unset')}, "
                f"now {current.get(key, 'unset')} (start a new run directory instead)",
            )


def build_problem(
    cfg: DictConfig, train: TrainConf, device: str, lrs: Sequence[float] | None = None
) -> Problem:
    """The loops' Problem: data and initial weights from the config, in the run's dtype, for
    jobs at rates `lrs` (default: the config's one rate)."""
    parts = build_parts(cfg)
    data, model = parts["data"], parts["model"]
    dtype = train.dtype.value
    with np.errstate(over="ignore"):
        x, y = data.x.astype(dtype), data.y.astype(dtype)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError(
            "train.dtype",
            dtype,
            f"a dtype that holds the data (|values| > {np.finfo(dtype).max:.3g}"
            " overflow it): train.dtype=float64",
        )
    drawn = model.init_params(data.n_features, np.random.default_rng(train.seed))
    with np.errstate(over="ignore"):
        init = {k: np.asarray(v, dtype=dtype) for k, v in drawn.items()}
    if not all(np.isfinite(v).all() for v in init.values()):
        raise ConfigError(
            "model.init",
            cfg.model.init,
            f"a finite number that {dtype} holds (|init| <= {np.finfo(dtype).max:.3g}), or null",
        )
    return Problem(
        x=x,
        y=y,
        init=init,
        model=model,
        loss=parts["loss"],
        optimizer=parts["optimizer"],
        batches=BatchSchedule(len(data.y), train.batch_size, train.seed),
        dtype=dtype,
        device=device,
        lrs=np.array([cfg.optimizer.lr] if lrs is None else lrs, dtype=np.float64),
    )


class Tracker:
    """Follows the host rows: divergence, best and last values, and which steps get logged."""

    def __init__(self, layout: Layout, last_step: int, every: int) -> None:
        self.layout, self.last_step, self.every = layout, last_step, every
        self.diverged_at: int | None = None
        self.steps_completed = 0
        self.best_loss = math.inf
        self.last_row: np.ndarray | None = None

    def consume(self, rows: np.ndarray, sinks: list) -> None:
        steps = np.arange(self.steps_completed + 1, self.steps_completed + 1 + len(rows))
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if bad.size:  # stop at the first non-finite loss, parameter or gradient
            rows, steps = rows[: bad[0] + 1], steps[: bad[0] + 1]
            self.diverged_at = int(steps[-1])
        finite = rows[np.isfinite(rows[:, 0]), 0]
        if finite.size:
            self.best_loss = min(self.best_loss, float(finite.min()))
        self.steps_completed = int(steps[-1])
        self.last_row = rows[-1]
        logged = (steps % self.every == 0) | (steps == self.last_step) | (steps == self.diverged_at)
        if sinks and logged.any():
            rows, steps = rows[logged], steps[logged]
            table = self.layout.table(rows)
            for sink in sinks:
                sink.write(steps, table, rows)

    def state(self) -> dict[str, Any]:
        """JSON-able running values, for a checkpoint."""
        return {
            "steps_completed": self.steps_completed,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "last_row": None if self.last_row is None else self.last_row.tolist(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.steps_completed = int(state["steps_completed"])
        best = state["best_loss"]
        self.best_loss = math.inf if best is None else float(best)
        row = state["last_row"]
        self.last_row = None if row is None else np.array(row, dtype=np.float64)

    def results(self) -> dict[str, Any]:
        if self.last_row is None:
            return {"steps_completed": 0}
        params = self.layout.tensors(self.last_row, "param")
        return {
            "steps_completed": self.steps_completed,
            "final_loss": float(self.last_row[0]),
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "params": {k: v.tolist() for k, v in params.items()},
            "diverged_at_step": self.diverged_at,
        }


def open_sinks(
    cfg: DictConfig,
    log: LogConf,
    layout: Layout,
    out_dir: Path,
    dtype: str,
    overrides: Sequence[str],
    choices: Mapping[str, str] | None,
    resume_at: int | None,
) -> list:
    """The sinks log.* asks for, in out_dir; after a resume they continue from resume_at."""
    sinks: list = []
    if log.csv:
        sinks.append(CsvSink(out_dir / "metrics.csv", layout.columns, dtype, resume_at))
    if log.tensorboard:
        from runner.sinks.tensorboard_sink import TensorBoardSink, hparams_of

        sinks.append(
            TensorBoardSink(
                out_dir / "tensorboard",
                layout,
                config_yaml=OmegaConf.to_yaml(cfg),
                hparams=hparams_of(cfg, overrides, choices),
                resume_at=resume_at,
            )
        )
    return sinks


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: shown on a terminal only, so logs and CI output stay clean.
    return tqdm(
        total=total, initial=done, disable=None if enabled else True, unit="step", leave=False
    )
