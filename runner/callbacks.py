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

            write_report(Path(sweep_dir), sweep_ended=True, warn=_warn)
        except Exception as err:
            message = " ".join(str(err).split()) or type(err).__name__
            print(f"runner: no sweep report in {sweep_dir}: {message}", file=sys.stderr, flush=True)


def _warn(line: str) -> None:
    # what the report could not read or write, said by the command the user ran
    print(f"runner: warning: {line}", file=sys.stderr, flush=True)


class FailedJobs(Callback):
    """Makes `runner -m` exit non-zero when a job failed, whichever launcher ran it: a job that
    raised in another process (joblib, submitit, Ray) reports it only in its summary.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runner.cli import note_failed_job
        from runner.report import job_statuses

        statuses = job_statuses(Path(str(config.hydra.sweep.dir)), sweep_ended=True)
        if any(status not in ("completed", "diverged") for status in statuses):
            note_failed_job(1)


class QuietOptuna(Callback):
    """Keeps Optuna's per-study log line off the console; it resets its logger after Hydra has
    configured logging, so the level has to be set once the sweep starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
