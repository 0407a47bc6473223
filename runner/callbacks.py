"""Hydra callbacks: the sweep report, written into the sweep directory when a multirun ends, and
the exit code of a sweep with a failed job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    """Writes summary.csv, the plots and parity.csv (runner.report) when a sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Reports on `hydra.sweep.dir`. Never raises: the jobs have run and their outputs are on
        disk whatever happens here, so a problem is one line on stderr (and `runner-report DIR`
        can try again)."""
        sweep_dir = "the sweep directory"
        try:
            sweep_dir = str(config.hydra.sweep.dir)
            # imported here: Hydra builds this callback for every single run too, which must not
            # pay for pandas and matplotlib
            from runner.report import write_report

            write_report(Path(sweep_dir), sweep_ended=True)
        except Exception as err:
            message = " ".join(str(err).split()) or type(err).__name__
            print(f"runner: no sweep report in {sweep_dir}: {message}", file=sys.stderr, flush=True)


class FailedJobs(Callback):
    """Makes `runner -m` exit non-zero when a job failed, whichever launcher ran it: a job that
    raised in another process (joblib, submitit, Ray) reports it only in its summary.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runner.cli import note_failed_job
        from runner.report import job_statuses

        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = job_statuses(sweep_dir, sweep_ended=True)
        if any(status not in ("completed", "diverged") for status in statuses):
            note_failed_job(first_exit_code(sweep_dir))


def first_exit_code(sweep_dir: Path) -> int:
    """The exit code that the sweep's first failed job left in its failed.json (2 for bad
    input), so that every launcher ends the sweep as the basic one does; 1 when none did."""
    import json

    from runner.cli import FAILED_JOB_FILE

    def number(path: Path) -> int:
        head = path.parent.name.partition("_")[0]
        return int(head) if head.isdigit() else -1

    for path in sorted(sweep_dir.glob(f"*/{FAILED_JOB_FILE}"), key=number):
        try:
            return int(json.loads(path.read_text())["exit_code"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 1


class NewRunDirectory(Callback):
    """Notes, before Hydra creates a single run's directory, the outermost part of its path that
    does not exist yet: what a run stopped by bad input may remove again (runner.cli)."""

    created: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(str(config.hydra.run.dir)).resolve()
        missing = [p for p in (path, *path.parents) if not p.exists()]
        NewRunDirectory.created = missing[-1] if missing else None


class QuietOptuna(Callback):
    """Keeps Optuna's per-study log line off the console; it resets its logger after Hydra has
    configured logging, so the level has to be set once the sweep starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
