"""run(cfg): builds everything from the config, drives the loop, feeds the sinks, sums up.

DictConfig stops here: below this module everything takes plain values and small dataclasses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner.build import build_parts, loop_class
from runner.data import BatchSchedule
from runner.device import resolve_device
from runner.loops import Problem
from runner.metrics import Layout
from runner.schema import LogConf, TrainConf, validate
from runner.signals import Interrupted, StopSignals
from runner.sinks.csv_sink import CsvSink
from runner.sinks.summary import write_summary

# On a GPU, records stay on the device and move to the host this many at a time (one sync per
# chunk); on the CPU a transfer is free, so every step is checked for divergence at once.
DEVICE_CHUNK = 64


def run(
    cfg: DictConfig,
    out_dir: Path,
    overrides: Sequence[str] = (),
    choices: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Trains as `cfg` says, writing outputs into `out_dir`; returns the summary it wrote.

    `overrides` (the command line's) and `choices` (config group -> option) label the run in
    summary.json and TensorBoard's HParams. SIGINT or SIGTERM stops the run after the current
    step; once everything logged is on disk and the summary says `interrupted`, `Interrupted`
    (a KeyboardInterrupt) is raised. Any other error is re-raised after the summary says `failed`.
    """
    started = time.perf_counter()
    loop_cls = loop_class(cfg.loop)
    validate(cfg, loop_cls.name)
    train: TrainConf = OmegaConf.to_object(cfg.train)
    log: LogConf = OmegaConf.to_object(cfg.log)
    device = resolve_device(cfg.device.name.value, loop_cls.name)
    problem = _problem(cfg, train, device)
    loop = loop_cls(problem)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = Layout({k: np.shape(v) for k, v in problem.init.items()}, log.max_elements)
    summary: dict[str, Any] = {
        "status": "running",
        "steps_completed": 0,
        "final_loss": None,
        "best_loss": None,
        "params": {k: v.tolist() for k, v in problem.init.items()},
        "diverged_at_step": None,
        "wall_s": 0.0,
        "steps_per_s": 0.0,
        "loop": loop_cls.name,
        "device": device,
        "overrides": list(overrides),
    }
    summary_path = out_dir / "summary.json"
    write_summary(summary_path, summary)
    tracker = _Tracker(layout, train.steps, log.every_n_steps)
    chunk = 1 if device == "cpu" else DEVICE_CHUNK
    sinks: list = []
    pending: list = []
    train_started = time.perf_counter()
    # Divergence is the runner's to detect and report, so NumPy's overflow warnings are noise.
    with StopSignals() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            sinks = _open_sinks(cfg, log, layout, out_dir, problem.dtype, overrides, choices)
            with _progress(train.steps, log.progress) as bar:
                for record in loop.steps(1, train.steps):
                    pending.append(record)
                    last = record.step == train.steps or stop.signum is not None
                    if len(pending) >= chunk or last:
                        tracker.consume(loop.to_host(pending), sinks)
                        bar.set_postfix_str(f"loss={tracker.last_row[0]:.4g}", refresh=False)
                        bar.update(len(pending))
                        pending.clear()
                        if tracker.diverged_at is not None or stop.signum is not None:
                            break
            if tracker.diverged_at is not None:
                summary["status"] = "diverged"
            else:
                summary["status"] = "completed" if stop.signum is None else "interrupted"
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, keep what reached the host
            summary["status"] = "interrupted"
            raise
        except BaseException:
            summary["status"] = "failed"
            raise
        finally:
            train_s = time.perf_counter() - train_started
            summary.update(tracker.results(), wall_s=time.perf_counter() - started)
            summary["steps_per_s"] = summary["steps_completed"] / train_s if train_s > 0 else 0.0
            for sink in sinks:
                sink.close(summary)
            write_summary(summary_path, summary)
    if summary["status"] == "interrupted":
        raise Interrupted(stop.signum)
    return summary


def _problem(cfg: DictConfig, train: TrainConf, device: str) -> Problem:
    parts = build_parts(cfg)
    data, model = parts["data"], parts["model"]
    dtype = train.dtype.value
    init = model.init_params(data.n_features, np.random.default_rng(train.seed))
    return Problem(
        x=data.x.astype(dtype),
        y=data.y.astype(dtype),
        init={k: np.asarray(v, dtype=dtype) for k, v in init.items()},
        model=model,
        loss=parts["loss"],
        optimizer=parts["optimizer"],
        batches=BatchSchedule(len(data.y), train.batch_size, train.seed),
        dtype=dtype,
        device=device,
    )


class _Tracker:
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


def _open_sinks(
    cfg: DictConfig,
    log: LogConf,
    layout: Layout,
    out_dir: Path,
    dtype: str,
    overrides: Sequence[str],
    choices: Mapping[str, str] | None,
) -> list:
    sinks: list = []
    if log.csv:
        sinks.append(CsvSink(out_dir / "metrics.csv", layout.columns, dtype, log.flush_secs))
    if log.tensorboard:
        from runner.sinks.tensorboard_sink import TensorBoardSink, hparams_of

        sinks.append(
            TensorBoardSink(
                out_dir / "tensorboard",
                layout,
                config_yaml=OmegaConf.to_yaml(cfg),
                hparams=hparams_of(cfg, overrides, choices),
                flush_secs=log.flush_secs,
            )
        )
    return sinks


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: shown on a terminal only, so logs and CI output stay clean.
    return tqdm(total=total, disable=None if enabled else True, unit="step", leave=False)
