"""run(cfg): builds everything from the config, drives the loop, feeds the sinks, sums up.

DictConfig stops here: below this module everything takes plain values and small dataclasses.
The vectorized launcher (runner.vectorized) drives K jobs with the same parts: build_problem,
open_sinks, Tracker, initial_summary, save_state and settings_fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
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
from runner.sinks import summary as summary_file
from runner.sinks.csv_sink import CsvSink, logged_rows_end
from runner.sinks.summary import write_summary

# Records stay in the loop's arrays (on its device) and move to the host this many at a time, or
# sooner when a step is slow: one transfer and one round of bookkeeping per chunk, and on a GPU
# one synchronisation. A divergence found in a chunk ends the run at its step; the few steps
# computed past it are never logged.
CHUNK = 64


def run(
    cfg: DictConfig,
    out_dir: Path,
    overrides: Sequence[str] = (),
    choices: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Trains as `cfg` says, writing outputs into `out_dir`; returns the summary it wrote.

    `overrides` (the command line's) and `choices` (config group -> option) label the run in
    summary.json and TensorBoard's HParams. Without train.resume, a directory that already holds
    a run is refused. With it, a run already finished in `out_dir` is left as it is and returned
    as `Finished`, and any other continues from its checkpoint (or from step 1).
    SIGINT or SIGTERM stops the run after the current step; once everything logged is on disk,
    checkpointed, and the summary says `interrupted`, `Interrupted` (a KeyboardInterrupt) is
    raised. Any other error is re-raised after the summary says `failed`.
    """
    started = time.perf_counter()
    loop_name = cfg.loop.name
    validate(cfg, loop_name)
    train: TrainConf = OmegaConf.to_object(cfg.train)
    log: LogConf = OmegaConf.to_object(cfg.log)
    device = resolve_device(cfg.device.name.value, loop_name)
    # Data and model come before the loop class: bad input is reported before torch loads.
    problem = build_problem(cfg, train, device)
    loop_cls = loop_class(cfg.loop)
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    checkpoint_dir = out_dir / "checkpoint"
    fingerprint = settings_fingerprint(cfg, problem, choices)
    if not train.resume:
        check_new_run_dir(out_dir)
    saved = checkpoint.load(checkpoint_dir, loop_cls.backend, device) if train.resume else None
    if saved is not None:
        _check_same_settings(saved.meta, fingerprint)
    if train.resume:
        finished = _finished(summary_path, train.steps)
        if finished is not None:
            return finished
    loop = loop_cls(problem)
    layout = Layout({k: np.shape(v) for k, v in problem.init.items()}, log.max_elements)
    tracker = Tracker(layout, train.steps, log.every_n_steps)
    resume_at = csv_keep = None
    if saved is not None:
        _restore(saved, loop, tracker)
        resume_at = saved.step
        if log.csv:  # checked before anything in out_dir changes
            csv_keep = logged_rows_end(
                out_dir / "metrics.csv", layout.columns, saved.step, tracker.rows_logged
            )

    _remove_leftovers(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = initial_summary(problem, loop_cls.name, device, overrides, tracker)
    write_summary(summary_path, summary)

    def save_checkpoint() -> None:
        save_state(checkpoint_dir, loop_cls.backend, loop.state(), tracker, sinks, fingerprint)

    every = train.checkpoint_every
    # A finished step waits at most half of log.flush_secs to reach the host, and logged rows
    # at most the other half to reach the disk: on disk within log.flush_secs of their step.
    half = log.flush_secs / 2
    first = (resume_at or 0) + 1
    sinks: list = []
    pending: list = []
    train_started = time.perf_counter()
    moved = flushed = time.monotonic()
    failed = False
    # Divergence is the runner's to detect and report, so NumPy's overflow warnings are noise.
    with StopSignals() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            sinks = open_sinks(
                cfg, log, layout, out_dir, problem.dtype, overrides, choices, resume_at, csv_keep
            )
            with _progress(train.steps, first - 1, log.progress) as bar:
                for record in loop.steps(first, train.steps):
                    pending.append(record)
                    due = every > 0 and record.step % every == 0
                    last = record.step == train.steps or stop.signum is not None
                    now = time.monotonic()
                    if len(pending) >= CHUNK or last or due or now - moved >= half:
                        moved = now
                        tracker.consume(loop.to_host(pending), sinks)
                        if now - flushed >= half:
                            flushed = now
                            for sink in sinks:
                                sink.flush()
                        bar.set_postfix_str(f"loss={tracker.last_row[0]:.4g}", refresh=False)
                        bar.update(len(pending))
                        pending.clear()
                        if tracker.diverged_at is not None or stop.signum is not None:
                            break
                        if due:
                            save_checkpoint()
            if tracker.diverged_at is not None:
                summary["status"] = "diverged"
            else:
                summary["status"] = "completed" if stop.signum is None else "interrupted"
                if every > 0 and tracker.steps_completed % every != 0:
                    save_checkpoint()  # resume (or a longer train.steps) continues from here
        except BaseException as err:
            # A second Ctrl-C or a crash: the steps that finished are still logged.
            interrupted = isinstance(err, KeyboardInterrupt)
            summary["status"] = "interrupted" if interrupted else "failed"
            failed = True
            if pending and pending[0].step == tracker.steps_completed + 1:
                with contextlib.suppress(Exception):
                    tracker.consume(loop.to_host(pending), sinks)
            raise
        finally:
            train_s = time.perf_counter() - train_started
            summary.update(tracker.results(), wall_s=time.perf_counter() - started)
            done = summary["steps_completed"] - (resume_at or 0)
            summary["steps_per_s"] = done / train_s if train_s > 0 else 0.0
            _close(sinks, summary, summary_path, quiet=failed)
    if summary["status"] == "interrupted":
        raise Interrupted(stop.signum)
    return summary


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


def _restore(saved: checkpoint.Checkpoint, loop: Any, tracker: Tracker) -> None:
    try:
        loop.load_state(saved.state)
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


def _close(sinks: list, summary: dict[str, Any], summary_path: Path, quiet: bool) -> None:
    """Closes every sink and then writes the summary, each tried even after one failed (a full
    disk may still take the small summary): the summary then says `failed` and the first
    failure is raised, unless `quiet` (the run is already raising one)."""
    failures = []
    for sink in sinks:
        try:
            sink.close(summary)
        except Exception as err:
            failures.append(err)
    if failures:
        summary["status"] = "failed"
    try:
        write_summary(summary_path, summary)
    except Exception as err:
        failures.append(err)
    if failures and not quiet:
        raise failures[0]


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


def _finished(summary_path: Path, steps: int) -> Finished | None:
    """The summary of a run that resume has nothing left to do for, else None."""
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    done = summary.get("status") == "completed" and summary.get("steps_completed", 0) >= steps
    return Finished(summary) if done or summary.get("status") == "diverged" else None


# What a resumed run must share with the run it continues; log.*, train.steps and the device
# may change (a longer run, other logging), but not what would make the result meaningless.
_FINGERPRINT_KEYS = ("model", "data", "loss", "optimizer", "loop")
_FINGERPRINT_TRAIN = ("seed", "batch_size", "dtype")


# The data's contents, under the same data.path or not (a CSV file may change between runs).
_DATA_DIGEST = "data.sha256"


def settings_fingerprint(
    cfg: DictConfig, problem: Problem, choices: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """{"fingerprint": ..., "choices": ...}: the settings a resumed run must share with its
    checkpoint, flat, with a digest of the problem's data; and the options picked in their
    groups, which name a changed group as the user typed it."""
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in _FINGERPRINT_KEYS}
    settings["train"] = {
        k: str(cfg.train[k].value if k == "dtype" else cfg.train[k]) for k in _FINGERPRINT_TRAIN
    }
    flat = _flat(settings)
    digest = hashlib.sha256()
    for values in (problem.x, problem.y):
        digest.update(repr(values.shape).encode())
        digest.update(values.tobytes())
    flat[_DATA_DIGEST] = digest.hexdigest()
    picked = {g: choices[g] for g in _FINGERPRINT_KEYS if choices and g in choices}
    return {"fingerprint": flat, "choices": picked}


def _flat(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        return {
            k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): repr(tree)}


def _check_same_settings(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuses a resume whose settings differ from its checkpoint's (`saved`, its meta),
    naming the first difference: a group by its options, other keys by their values."""
    before, current = saved["fingerprint"], now["fingerprint"]
    for key in sorted(set(before) | set(current)):
        if before.get(key) == current.get(key):
            continue
        group = key.split(".")[0]
        was, is_now = saved.get("choices", {}).get(group), now["choices"].get(group)
        if was and is_now and was != is_now:
            change = f"{group} was {was}, now {is_now}"
        elif key == _DATA_DIGEST:
            change = "the data changed since the run began (its values differ)"
        else:
            change = f"{key} was {before.get(key, 'unset')}, now {current.get(key, 'unset')}"
        raise ConfigError(
            "train.resume",
            True,
            f"the settings of the run being resumed; {change} (start a new run directory instead)",
        )


def build_problem(cfg: DictConfig, train: TrainConf, device: str) -> Problem:
    """The loops' Problem: data and initial weights from the config, in the run's dtype."""
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
    )


class Tracker:
    """Follows the host rows: divergence, best and last values, and which steps get logged."""

    def __init__(self, layout: Layout, last_step: int, every: int) -> None:
        self.layout, self.last_step, self.every = layout, last_step, every
        self.diverged_at: int | None = None
        self.steps_completed = 0
        self.rows_logged = 0  # how many rows the sinks were given: a resume checks metrics.csv
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
        self.rows_logged += int(np.count_nonzero(logged))
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
            "rows_logged": self.rows_logged,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.steps_completed = int(state["steps_completed"])
        best = state["best_loss"]
        self.best_loss = math.inf if best is None else float(best)
        row = state["last_row"]
        self.last_row = None if row is None else np.array(row, dtype=np.float64)
        self.rows_logged = int(state["rows_logged"])

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
    csv_keep: int | None = None,
) -> list:
    """The sinks log.* asks for, in out_dir; after a resume they continue from resume_at, and
    metrics.csv from its first `csv_keep` bytes (runner.sinks.csv_sink.logged_rows_end)."""
    sinks: list = []
    if log.csv:
        sinks.append(CsvSink(out_dir / "metrics.csv", layout.columns, dtype, csv_keep))
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
