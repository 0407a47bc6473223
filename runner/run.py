"""The training driver: builds everything from the config, drives the loop, feeds the sinks,
sums up. `run(cfg)` trains one run; `run_jobs` trains K jobs that differ only in their learning
rate side by side (the vectorized launcher). A single run is a sweep of one: the same
code drives both, so signals, the flush timer, the progress bar, checkpoints and resume exist
once.

DictConfig stops here: below this module everything takes plain values and small dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from runner.build import build_optimizer, build_parts, loop_class
from runner.clipping import grad_clip
from runner.data import BatchSchedule, hold_out
from runner.device import resolve_device
from runner.errors import ConfigError
from runner.loops import ACCURACY, VAL_ACCURACY, VAL_LOSS, Problem
from runner.losses import check_targets
from runner.metrics import Layout, flat
from runner.schema import LogConf, TrainConf, validate
from runner.signals import Interrupted, StopSignals
from runner.sinks import summary as summary_file
from runner.sinks.csv_sink import CsvSink, logged_rows_end
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
    checkpoints (which must be at one step) or from step 1; without it, a directory that
    already holds a run is refused. SIGINT or SIGTERM stops every job after the current step;
    once everything logged is on disk, checkpointed, and every summary says `interrupted`,
    `Interrupted` (a KeyboardInterrupt) is raised. Any other error is re-raised after the
    summaries say `failed`.
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
    rules = [build_optimizer(job.cfg.optimizer) for job in jobs]  # each job's, checked
    problem = build_problem(cfg, train, device, rules)
    loop_cls = loop_class(cfg.loop)
    shapes = {k: np.shape(v) for k, v in problem.init.items()}
    layout = Layout(shapes, log.max_elements, problem.extras)

    runs = [_JobRun(job, problem, layout, train, log) for job in jobs]
    results: dict[int, JobResult] = {}
    saved: dict[int, checkpoint.Checkpoint] = {}
    for j, job_run in enumerate(runs):
        if not train.resume:
            check_new_run_dir(job_run.out_dir)
            continue
        state = checkpoint.load(job_run.checkpoint_dir, loop_cls.backend, device)
        if state is not None:
            _check_same_settings(state.meta, job_run.fingerprint)
            saved[j] = state
        finished = _finished(job_run.summary_path, train.steps)
        if finished is not None:
            results[j] = JobResult(finished)
    active = [j for j in range(len(runs)) if j not in results]
    if not active:
        return [results[j] for j in range(len(runs))]
    _align_resume_steps(saved, active, runs, loop_cls.backend, device)
    resume_steps = {saved[j].step if j in saved else None for j in active}
    if len(resume_steps) > 1:
        steps = ", ".join(sorted(str(s) for s in resume_steps))
        raise MixedResumeSteps(f"their checkpoints are at different steps ({steps})")
    resume_at = resume_steps.pop()
    if len(active) < len(runs):
        problem = dataclasses.replace(problem, lrs=problem.lrs[active])
        runs = [runs[j] for j in active]

    loop = loop_cls(problem)
    if resume_at is not None:
        for j, job_run in enumerate(runs):
            job_run.restore(saved[active[j]], loop, j)  # checked before anything changes
    for job_run in runs:
        job_run.start(problem, loop_cls, device)

    every = train.checkpoint_every
    # A run that may stop early moves each step to the host as it comes: a job then stops at
    # that very step, with the loop's state still there for its last checkpoint.
    chunk = 1 if watch_of(train, layout).stops else CHUNK
    # A finished step waits at most half of log.flush_secs to reach the host, and logged rows
    # at most the other half to reach the disk: on disk within log.flush_secs of their step.
    half = log.flush_secs / 2
    first = (resume_at or 0) + 1
    failed: dict = getattr(loop, "failed", {})  # job -> (step, error): a step that raised
    live = list(range(len(runs)))  # jobs still training
    pending: list = []
    raising = False
    train_started = time.perf_counter()
    moved = flushed = time.monotonic()
    # Divergence is the runner's to detect and report, so NumPy's overflow warnings are noise.
    with StopSignals() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            for job_run in runs:
                job_run.open_sinks(problem.dtype)
            with _progress(train.steps, first - 1, log.progress) as bar:
                for record in loop.steps(first, train.steps):
                    pending.append(record)
                    due = every > 0 and record.step % every == 0
                    last = record.step == train.steps or stop.signum is not None
                    now = time.monotonic()
                    if not (len(pending) >= chunk or last or due or now - moved >= half):
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
                        if job_run.tracker.stop_reason is not None:  # stopped early, at its step
                            live.remove(j)
                            if every > 0:
                                job_run.save_checkpoint(loop.state(j))
                        elif job_run.tracker.diverged_at is not None:
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
                ended = "completed" if stop.signum is None else "interrupted"
                job_run.summary.update(
                    status=ended, stop_reason="steps" if stop.signum is None else ended
                )
                if every > 0 and job_run.tracker.steps_completed % every != 0:
                    # resume (or a longer train.steps) continues from here
                    job_run.save_checkpoint(loop.state(j))
            for job_run in runs:
                tracker = job_run.tracker
                if tracker.diverged_at is not None:
                    job_run.summary.update(status="diverged", stop_reason="diverged")
                elif tracker.stop_reason is not None:
                    job_run.summary.update(status="completed", stop_reason=tracker.stop_reason)
        except BaseException as err:
            # A second Ctrl-C or a crash: the steps that finished are still logged.
            interrupted = isinstance(err, KeyboardInterrupt)
            raising = True
            rows = None
            if pending:
                with contextlib.suppress(Exception):
                    rows = loop.to_host(pending)
            for j in live:
                job_run = runs[j]
                ended = "interrupted" if interrupted else "failed"
                job_run.summary.update(status=ended, stop_reason=ended)
                next_step = job_run.tracker.steps_completed + 1
                if rows is not None and pending[0].step == next_step:
                    with contextlib.suppress(Exception):
                        job_run.consume(rows[j])
            raise
        finally:
            train_s = time.perf_counter() - train_started
            wall_s = time.perf_counter() - started
            for job_run in runs:
                job_run.finish(train_s, wall_s, resume_at, quiet=raising)
    if stop.signum is not None and live:
        raise Interrupted(stop.signum)
    for j, job_run in enumerate(runs):
        results[active[j]] = JobResult(job_run.summary, job_run.error)
    return [results[j] for j in sorted(results)]


class _JobRun:
    """One job's side of run_jobs: its directory, tracker, sinks, checkpoint and summary."""

    def __init__(
        self, job: Job, problem: Problem, layout: Layout, train: TrainConf, log: LogConf
    ) -> None:
        self.job, self.log, self.problem = job, log, problem
        self.out_dir = Path(job.out_dir)
        self.summary_path = self.out_dir / "summary.json"
        self.checkpoint_dir = self.out_dir / "checkpoint"
        self.fingerprint = settings_fingerprint(job.cfg, problem, job.choices)
        self.layout = layout
        self.tracker = Tracker(
            layout, train.steps, log.every_n_steps, flat(problem.init), watch_of(train, layout)
        )
        self.sinks: list = []
        self.summary: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.resume_at: int | None = None
        self.csv_keep: int | None = None  # bytes of metrics.csv a resume keeps

    def restore(self, saved: checkpoint.Checkpoint, loop: Any, job: int) -> None:
        """Continues this job (row `job` of `loop`) from its checkpoint, once metrics.csv is
        known to hold every row up to it."""
        _restore(saved, loop, job, self.tracker)
        self.resume_at = saved.step
        if self.log.csv:
            self.csv_keep = logged_rows_end(
                self.out_dir / "metrics.csv", self.layout.columns, saved.step,
                self.tracker.rows_logged,
            )  # fmt: skip

    def start(self, problem: Problem, loop: type, device: str) -> None:
        self.backend = loop.backend
        _remove_leftovers(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary = initial_summary(problem, loop.name, device, self.job.overrides, self.tracker)
        write_summary(self.summary_path, self.summary)

    def open_sinks(self, dtype: str) -> None:
        job = self.job
        self.sinks = open_sinks(
            job.cfg, self.log, self.layout, self.out_dir, dtype, job.overrides, job.choices,
            self.resume_at, self.csv_keep, self.problem,
        )  # fmt: skip

    def consume(self, rows: np.ndarray) -> None:
        self.tracker.consume(rows, self.sinks)

    def fail(self, error: BaseException) -> None:
        self.summary.update(status="failed", stop_reason="failed")
        self.error = error

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def save_checkpoint(self, state: dict) -> None:
        save_state(self.checkpoint_dir, self.backend, state, self.tracker, self.sinks,
                   self.fingerprint)  # fmt: skip

    def finish(self, train_s: float, wall_s: float, resume_at: int | None, quiet: bool) -> None:
        """Sums up and closes the job's outputs. A failure to write them (a full disk) fails
        the job (its `error`), unless `quiet`: the run is already raising one."""
        summary = self.summary
        summary.update(self.tracker.results(), wall_s=wall_s)
        done = summary["steps_completed"] - (resume_at or 0)
        summary["steps_per_s"] = done / train_s if train_s > 0 else 0.0
        error = _close(self.sinks, summary, self.summary_path)
        if error is not None and self.error is None and not quiet:
            self.error = error


class Finished(dict):
    """The summary of a run that resume found finished: returned as it was, nothing trained."""


def check_new_run_dir(directory: Path) -> None:
    """Refuses a directory that already holds a run: starting over there would delete it."""
    if holds_run(directory):
        raise ConfigError(
            "hydra.run.dir",
            str(directory),
            "a directory that holds no run yet (add train.resume=true to continue the run "
            "there, or choose another directory)",
        )


def holds_run(directory: Path) -> bool:
    """Whether `directory` holds (part of) a run's outputs; .hydra/ alone is no run."""
    return any(
        (directory / name).exists() for name in ("summary.json", "metrics.csv", "checkpoint")
    )


def _align_resume_steps(
    saved: dict, active: list[int], runs: list, backend: str, device: str
) -> None:
    """Brings jobs a kill left one checkpoint apart (a sweep trained side by side writes each
    job's checkpoint in turn) back to the same step, so they resume side by side as they ran:
    a job ahead takes its previous checkpoint, or starts over when the others have none yet."""
    steps = {saved[j].step if j in saved else 0 for j in active}
    if len(steps) < 2:
        return
    target = min(steps)
    for j in active:
        if j not in saved or saved[j].step == target:
            continue
        if target == 0:
            del saved[j]  # the others start over: so does this one, to the same rows
            continue
        older = checkpoint.load(runs[j].checkpoint_dir, backend, device, previous=True)
        if older is not None and older.step == target:
            _check_same_settings(older.meta, runs[j].fingerprint)
            saved[j] = older


def _restore(saved: checkpoint.Checkpoint, loop: Any, job: int, tracker: Tracker) -> None:
    try:
        loop.load_state(job, saved.state)
        tracker.load_state(saved.meta["tracker"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(
            "train.resume",
            True,
            f"a checkpoint this run can continue from; {saved.path} holds other contents "
            "(start a new run directory instead)",
        ) from err


def _remove_leftovers(out_dir: Path) -> None:
    """Deletes the temporary files of writes that a kill cut short (each the size of what it
    was writing: a checkpoint, or the summary)."""
    for directory, module in ((out_dir, summary_file), (out_dir / "checkpoint", checkpoint)):
        for leftover in directory.glob(f"{module.TEMP_PREFIX}*{module.TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def _close(sinks: list, summary: dict[str, Any], summary_path: Path) -> BaseException | None:
    """Closes every sink and then writes the summary, each tried even after one failed (a full
    disk may still take the small summary); the summary then says `failed`, and the first
    failure is returned."""
    failures = []
    for sink in sinks:
        try:
            sink.close(summary)
        except Exception as err:
            failures.append(err)
    if failures:
        summary.update(status="failed", stop_reason="failed")
    try:
        write_summary(summary_path, summary)
    except Exception as err:
        failures.append(err)
    return failures[0] if failures else None


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
        "stop_reason": None,
        "steps_completed": 0,
        "final_loss": None,
        "best_loss": None,
        "params": {k: v.tolist() for k, v in problem.init.items()},
        "diverged_at_step": None,
        "best_step": None,
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


def _finished(summary_path: Path, steps: int) -> Finished | None:
    """The summary of a run that resume has nothing left to do for, else None."""
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    done = summary.get("status") == "completed" and (
        summary.get("steps_completed", 0) >= steps or summary.get("stop_reason") in EARLY_STOPS
    )
    return Finished(summary) if done or summary.get("status") == "diverged" else None


# What a resumed run must share with the run it continues; log.*, train.steps and the device
# may change (a longer run, other logging), but not what would make the result meaningless.
# The scheduler counts once it is not `none` (checkpoints from before schedules resume as they
# were), and so does train.steps when the schedule depends on it (cosine's T_max: null).
_FINGERPRINT_KEYS = ("model", "data", "loss", "optimizer", "scheduler", "loop")
_FINGERPRINT_TRAIN = ("seed", "batch_size", "dtype")
# ... and these, only when they are not their default: a checkpoint written before they existed
# (which never had them on) still resumes.
_FINGERPRINT_TRAIN_IF_SET = {"clip_grad_norm": None, "clip_grad_value": None, "accumulate": 1}
_NO_SCHEDULE = "none"


# The data's contents, under the same data.path or not (a CSV file may change between runs).
_DATA_DIGEST = "data.sha256"


def settings_fingerprint(
    cfg: DictConfig, problem: Problem, choices: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """{"fingerprint": ..., "choices": ...}: the settings a resumed run must share with its
    checkpoint, flat, with a digest of the problem's data; and the options picked in their
    groups, which name a changed group as the user typed it."""
    scheduled = problem.schedule is not None
    keys = [k for k in _FINGERPRINT_KEYS if scheduled or k != "scheduler"]
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in keys}
    train_keys = list(_FINGERPRINT_TRAIN)
    if scheduled and _follows_steps(cfg, problem):
        train_keys.append("steps")
    settings["train"] = {
        k: str(cfg.train[k].value if k == "dtype" else cfg.train[k]) for k in train_keys
    }
    for k, default in _FINGERPRINT_TRAIN_IF_SET.items():
        if cfg.train[k] != default:
            settings["train"][k] = str(cfg.train[k])
    flat = _flat(settings)
    digest = hashlib.sha256()
    for values in (problem.x, problem.y):
        digest.update(repr(values.shape).encode())
        digest.update(values.tobytes())
    flat[_DATA_DIGEST] = digest.hexdigest()
    picked = {g: choices[g] for g in keys if choices and g in choices}
    return {"fingerprint": flat, "choices": picked}


def _follows_steps(cfg: DictConfig, problem: Problem) -> bool:
    """Whether the run's schedule depends on train.steps (cosine with T_max: null, or
    warmup_cosine): a resume with another train.steps would then change its rates."""
    from runner.build import build_scheduler

    steps = cfg.train.steps
    return build_scheduler(cfg.scheduler, steps + 1).resolved(steps + 1) != problem.schedule


def _flat(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        return {
            k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): repr(tree)}


# A setting a checkpoint predates (optimizer.maximize, say) at these values changes nothing.
_OFF = (repr(False), repr(None))
# ... nor these newer keys at the value every run before them had.
_NEWER_KEYS = {
    "model.out_features": repr(1),
    "data.task": repr("regression"),
    "data.n_classes": repr(2),
}


def _check_same_settings(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuses a resume whose settings differ from its checkpoint's (`saved`, its meta),
    naming the first difference: a group by its options, other keys by their values."""
    before, current = saved["fingerprint"], now["fingerprint"]
    for key in sorted(set(before) | set(current)):
        if before.get(key) == current.get(key):
            continue
        if key not in before and (current[key] in _OFF or _NEWER_KEYS.get(key) == current[key]):
            continue  # a key newer than the checkpoint, at the value that leaves it off
        group = key.split(".")[0]
        was, is_now = saved.get("choices", {}).get(group), now["choices"].get(group)
        if group == "scheduler":  # left out of the fingerprint when it is none
            was = was or (_NO_SCHEDULE if _unscheduled(before) else None)
            is_now = is_now or (_NO_SCHEDULE if _unscheduled(current) else None)
        if was and is_now and was != is_now:
            change = f"{group} was {was}, now {is_now}"
        elif key == _DATA_DIGEST:
            change = "the data changed since the run began (its values differ)"
        else:
            change = f"{key} was {before.get(key, 'unset')}, now {current.get(key, 'unset')}"
            if key == "train.steps":
                change += ", and the schedule's length follows it"
        raise ConfigError(
            "train.resume",
            True,
            f"the settings of the run being resumed; {change} (start a new run directory instead)",
        )


def _unscheduled(fingerprint: Mapping[str, Any]) -> bool:
    return not any(key.startswith("scheduler.") for key in fingerprint)


def build_problem(
    cfg: DictConfig, train: TrainConf, device: str, rules: Sequence[Any] | None = None
) -> Problem:
    """The loops' Problem: data and initial weights from the config, in the run's dtype, for
    jobs with update rules `rules` that differ only in their rates (default: the config's)."""
    parts = build_parts(cfg, rules[0] if rules else None)
    rules = rules or [parts["optimizer"]]
    model, loss = parts["model"], parts["loss"]
    check_targets(
        loss, parts["data"].y, getattr(model, "out_features", None), parts["data"].n_classes
    )
    data, held_out = hold_out(
        parts["data"], cfg.data.val_fraction, cfg.data.get("seed", train.seed)
    )
    dtype = train.dtype.value
    y_dtype = np.int64 if loss.class_targets else dtype  # class ids stay whole numbers
    with np.errstate(over="ignore"):
        x, y = data.x.astype(dtype), data.y.astype(y_dtype)
        val = None if held_out is None else (held_out.x.astype(dtype), held_out.y.astype(y_dtype))
    if not all(np.isfinite(a).all() for a in (x, y, *(val or ()))):
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
            cfg.model.get("init"),
            f"a finite number that {dtype} holds (|init| <= {np.finfo(dtype).max:.3g}), or null",
        )
    batches = BatchSchedule(len(data.y), train.batch_size, train.seed)
    check_accumulate(train.accumulate, batches)
    return Problem(
        x=x,
        y=y,
        init=init,
        model=model,
        loss=loss,
        optimizer=parts["optimizer"],
        batches=batches,
        dtype=dtype,
        device=device,
        lrs=np.array([float(rule.lr) for rule in rules], dtype=np.float64),
        val_x=None if val is None else val[0],
        val_y=None if val is None else val[1],
        clip=grad_clip(train.clip_grad_norm, train.clip_grad_value),
        accumulate=train.accumulate,
        schedule=parts["scheduler"].resolved(train.steps),
        monitor=train.early_stop.monitor,
    )


# How a run that stopped before train.steps can have completed: it is over, and resume leaves it.
EARLY_STOPS = ("early_stop", "target_loss")


@dataclass(frozen=True)
class Watch:
    """What the tracker watches in each job's rows: the monitored value (`name`) at its column
    in the host row, and when it stops the run."""

    name: str = "loss"  # train.early_stop.monitor
    column: int = 0
    patience: int | None = None  # steps without an improvement of more than min_delta
    min_delta: float = 0.0
    target: float | None = None  # stop once the monitored value is at or below it

    @property
    def stops(self) -> bool:
        return self.patience is not None or self.target is not None


def watch_of(train: TrainConf, layout: Layout) -> Watch:
    """What the tracker watches, as train.early_stop and train.target_loss say."""
    early = train.early_stop
    return Watch(
        name=early.monitor,
        column=layout.row_index(early.monitor),
        patience=early.patience,
        min_delta=early.min_delta,
        target=train.target_loss,
    )


def check_accumulate(accumulate: int, batches: BatchSchedule) -> None:
    """Refuses train.accumulate beyond the mini-batches of one epoch (the data's size is known
    only now): a step would average some batches twice."""
    if accumulate <= batches.batches_per_epoch:
        return
    if batches.full_batch:
        allowed = (
            "1 with full-batch training (one batch is the whole data); set train.batch_size "
            "to accumulate mini-batches"
        )
    else:
        allowed = (
            f"at most {batches.batches_per_epoch}, the mini-batches in one epoch "
            f"({batches.n_samples} samples in batches of {batches.batch_size})"
        )
    raise ConfigError("train.accumulate", accumulate, allowed)


class Tracker:
    """Follows the host rows: divergence, best and last values, the monitored value and when it
    stops the run, and which steps get logged.

    The best step is the last one whose monitored value improved on the best before it by more
    than `min_delta` (as Keras' EarlyStopping counts); its parameters are those the value was
    measured at: the parameters before that step's update.
    """

    def __init__(
        self, layout: Layout, last_step: int, every: int, init: np.ndarray, watch: Watch
    ) -> None:
        self.layout, self.last_step, self.every, self.watch = layout, last_step, every, watch
        self.init = init  # the initial parameters, flat, float64: before step 1's update
        self.diverged_at: int | None = None
        self.stop_reason: str | None = None  # one of EARLY_STOPS, once the watch stops the run
        self.steps_completed = 0
        self.rows_logged = 0  # how many rows the sinks were given: a resume checks metrics.csv
        self.best_loss = self.best_val_loss = math.inf
        # where val_loss sits in a host row, when the run holds rows out
        self.val_column = layout.row_index(VAL_LOSS) if VAL_LOSS in layout.extras else None
        # accuracy and val_accuracy of a classification run: where they sit, and the best seen
        self.accuracy_columns = {
            name: layout.row_index(name)
            for name in (ACCURACY, VAL_ACCURACY)
            if name in layout.extras
        }
        self.best_accuracy = dict.fromkeys(self.accuracy_columns, -math.inf)
        self.best_value = math.inf  # of the monitored value
        self.best_step: int | None = None
        self.best_params: np.ndarray | None = None  # flat, float64
        self.wait = 0  # steps since the monitored value last improved
        self.last_row: np.ndarray | None = None

    def consume(self, rows: np.ndarray, sinks: list) -> None:
        steps = np.arange(self.steps_completed + 1, self.steps_completed + 1 + len(rows))
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        first_bad = int(bad[0]) if bad.size else len(rows)
        stop = self._watch(rows[: first_bad + 1], first_bad)
        if stop is not None:
            rows, steps = rows[: stop + 1], steps[: stop + 1]
        elif bad.size:  # stop at the first non-finite loss, parameter or gradient
            rows, steps = rows[: first_bad + 1], steps[: first_bad + 1]
            self.diverged_at = int(steps[-1])
        for column, best in ((0, "best_loss"), (self.val_column, "best_val_loss")):
            finite = rows[np.isfinite(rows[:, column]), column] if column is not None else ()
            if len(finite):
                setattr(self, best, min(getattr(self, best), float(finite.min())))
        for name, column in self.accuracy_columns.items():
            finite = rows[np.isfinite(rows[:, column]), column]
            if len(finite):
                self.best_accuracy[name] = max(self.best_accuracy[name], float(finite.max()))
        self.steps_completed = int(steps[-1])
        self.last_row = rows[-1]
        logged = (steps % self.every == 0) | (steps == self.last_step) | (steps == self.diverged_at)
        if stop is not None:
            logged[-1] = True  # the step a run stops at is always logged
        self.rows_logged += int(np.count_nonzero(logged))
        if sinks and logged.any():
            rows, steps = rows[logged], steps[logged]
            table = self.layout.table(rows)
            for sink in sinks:
                sink.write(steps, table, rows)

    def _watch(self, rows: np.ndarray, checked: int) -> int | None:
        """Follows the monitored value through `rows` (consecutive steps from the next one);
        returns the index of the row whose step stops the run, among the first `checked` (the
        rows before a divergence), and notes why in `stop_reason`."""
        watch = self.watch
        values = rows[:, watch.column]
        index = np.arange(len(values))
        if watch.min_delta == 0:
            # An improvement is a value below every one before it (NaN never is): all at once.
            before = np.minimum.accumulate(np.concatenate([[self.best_value], values]))[:-1]
            improved = values < before
            last = np.maximum.accumulate(np.where(improved, index, -1))
            waits = np.where(last >= 0, index - last, self.wait + index + 1)
        else:
            improved = np.zeros(len(values), dtype=bool)
            waits = np.empty(len(values), dtype=np.int64)
            best, wait = self.best_value, self.wait
            for i, value in enumerate(values.tolist()):
                if value < best - watch.min_delta:
                    best, wait, improved[i] = value, 0, True
                else:
                    wait += 1
                waits[i] = wait
        stop = None
        if watch.stops and checked:
            hits = np.zeros(checked, dtype=bool)
            if watch.target is not None:
                reached = values[:checked] <= watch.target
                hits |= reached
            if watch.patience is not None:
                hits |= waits[:checked] >= watch.patience
            if hits.any():
                stop = int(np.flatnonzero(hits)[0])
                target_hit = watch.target is not None and values[stop] <= watch.target
                self.stop_reason = "target_loss" if target_hit else "early_stop"
        end = len(values) if stop is None else stop + 1
        improvements = np.flatnonzero(improved[:end])
        if improvements.size:
            i = int(improvements[-1])
            self.best_value = float(values[i])
            self.best_step = self.steps_completed + 1 + i
            before = rows[i - 1] if i else self.last_row
            n = self.layout.n_values
            self.best_params = self.init if before is None else before[2 : 2 + n].copy()
        self.wait = int(waits[end - 1])
        return stop

    def state(self) -> dict[str, Any]:
        """JSON-able running values, for a checkpoint."""
        return {
            "steps_completed": self.steps_completed,
            "best_loss": _finite_or_none(self.best_loss),
            "best_val_loss": _finite_or_none(self.best_val_loss),
            "last_row": None if self.last_row is None else self.last_row.tolist(),
            "rows_logged": self.rows_logged,
            "best_value": _finite_or_none(self.best_value),
            "best_step": self.best_step,
            "best_params": None if self.best_params is None else self.best_params.tolist(),
            "wait": self.wait,
        } | (
            {"best_accuracy": {k: _finite_or_none(v) for k, v in self.best_accuracy.items()}}
            if self.best_accuracy
            else {}
        )

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.steps_completed = int(state["steps_completed"])
        best = state["best_loss"]
        self.best_loss = math.inf if best is None else float(best)
        best_val = state.get("best_val_loss")
        self.best_val_loss = math.inf if best_val is None else float(best_val)
        row = state["last_row"]
        self.last_row = None if row is None else np.array(row, dtype=np.float64)
        self.rows_logged = int(state["rows_logged"])
        value = state["best_value"]
        self.best_value = math.inf if value is None else float(value)
        self.best_step = state["best_step"]
        params = state["best_params"]
        self.best_params = None if params is None else np.array(params, dtype=np.float64)
        self.wait = int(state["wait"])
        for name, value in state.get("best_accuracy", {}).items():
            self.best_accuracy[name] = -math.inf if value is None else float(value)

    def results(self) -> dict[str, Any]:
        if self.last_row is None:
            return {"steps_completed": 0}
        params = self.layout.tensors(self.last_row, "param")
        results = {
            "steps_completed": self.steps_completed,
            "final_loss": float(self.last_row[0]),
            "best_loss": _finite_or_none(self.best_loss),
            "params": {k: v.tolist() for k, v in params.items()},
            "diverged_at_step": self.diverged_at,
            "best_step": self.best_step,
        }
        if VAL_LOSS in self.layout.extras:
            results["best_val_loss"] = _finite_or_none(self.best_val_loss)
        # final_accuracy, best_accuracy (and final_val_accuracy, best_val_accuracy)
        for name, column in self.accuracy_columns.items():
            results[f"final_{name}"] = _finite_or_none(float(self.last_row[column]))
            results[f"best_{name}"] = _finite_or_none(self.best_accuracy[name])
        if self.best_params is not None:
            best = self.layout.tensors(np.concatenate([[0.0, 0.0], self.best_params]), "param")
            results["best_params"] = {k: v.tolist() for k, v in best.items()}
        return results


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def open_sinks(
    cfg: DictConfig,
    log: LogConf,
    layout: Layout,
    out_dir: Path,
    dtype: str,
    overrides: Sequence[str],
    choices: Mapping[str, str] | None,
    resume_at: int | None,
    csv_keep: int | None = None,
    problem: Problem | None = None,
) -> list:
    """The sinks log.* asks for, in out_dir; after a resume they continue from resume_at, and
    metrics.csv from its first `csv_keep` bytes (runner.sinks.csv_sink.logged_rows_end).
    landscape.png (log.landscape) needs the `problem`; it closes before TensorBoard, which
    gets its picture."""
    sinks: list = []
    if log.csv:
        sinks.append(CsvSink(out_dir / "metrics.csv", layout.columns, dtype, csv_keep))
    # the resolved config, for the sinks that record it (TensorBoard's text, MLflow's params)
    config = (
        OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        if log.tensorboard or log.mlflow
        else None
    )
    tensorboard = None
    if log.tensorboard:
        from runner.sinks.tensorboard_sink import TensorBoardSink, hparams_of

        tensorboard = TensorBoardSink(
            out_dir / "tensorboard",
            layout,
            config=config,
            hparams=hparams_of(cfg, overrides, choices),
            resume_at=resume_at,
        )
    if log.landscape and problem is not None:
        from runner.landscape import LossFunction
        from runner.sinks.landscape_sink import LandscapeSink

        f = LossFunction.of(problem.x, problem.y, problem.model, problem.loss, problem.init)
        writer = tensorboard.writer if tensorboard is not None else None
        sinks.append(LandscapeSink(out_dir, layout, f, flat(problem.init), writer, resume_at))
    if tensorboard is not None:
        sinks.append(tensorboard)
    if log.mlflow:  # last: it uploads the files the sinks before it have closed
        from runner.sinks.mlflow_sink import MlflowSink

        sinks.append(
            MlflowSink(
                out_dir,
                layout,
                config,
                dtype,
                log.mlflow_uri,
                overrides,
                resume_at,
            )
        )
    return sinks


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: shown on a terminal only, so logs and CI output stay clean.
    return tqdm(
        total=total, initial=done, disable=None if enabled else True, unit="step", leave=False
    )
