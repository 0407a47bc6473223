"""Hydra callbacks: the sweep report, written into the sweep directory when a multirun ends (or
is interrupted), the exit code of a sweep with a failed job, and Ctrl-C or SIGTERM passed on to
the worker processes that run a sweep's jobs."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# The directory of the sweep under way in this process: Hydra calls no on_multirun_end for a
# sweep that a signal ended, so report_interrupted_sweep() reports it.
_SWEEP_UNDER_WAY: list[str] = []


class SweepReport(Callback):
    """Writes summary.csv, the plots and parity.csv (runner.report) when a sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _SWEEP_UNDER_WAY[:] = [str(config.hydra.sweep.dir)]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Reports on `hydra.sweep.dir`. Never raises: the jobs have run and their outputs are on
        disk whatever happens here, so a problem is one line on stderr (and `runner-report DIR`
        can try again)."""
        _SWEEP_UNDER_WAY.clear()
        _report(config)


def sweep_under_way() -> str | None:
    """The directory of the sweep this process has under way, if any."""
    return _SWEEP_UNDER_WAY[-1] if _SWEEP_UNDER_WAY else None


def report_interrupted_sweep() -> None:
    """The report of the jobs a sweep got to run, when Ctrl-C or SIGTERM ended it in this
    process (the runner calls this on KeyboardInterrupt); nothing when no sweep was under way.
    Never raises, as on_multirun_end."""
    if _SWEEP_UNDER_WAY:
        sweep_dir = _SWEEP_UNDER_WAY.pop()
        _report({"hydra": {"sweep": {"dir": sweep_dir}}})
    MlflowSweep.end_interrupted()


def _report(config: Any) -> None:
    sweep_dir = "the sweep directory"
    try:
        sweep_dir = str(config["hydra"]["sweep"]["dir"])
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
        from runner.jobs import first_exit_code, note_failed_job
        from runner.report import job_statuses

        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = job_statuses(sweep_dir, sweep_ended=True)
        if any(status not in ("completed", "diverged") for status in statuses):
            note_failed_job(first_exit_code(sweep_dir))


class MlflowSweep(Callback):
    """With log.mlflow=true, a sweep is one MLflow parent run with a child run per job: the
    parent is started before any job (runner.sinks.mlflow_sink names it to the jobs, in this
    process or a launcher's workers, by environment) and ended after the sweep report, with
    its files: FINISHED when every job completed or diverged, KILLED when a signal ended the
    sweep, else FAILED. Listed before sweep_report: Hydra ends callbacks in reverse order."""

    _under_way: tuple[str, Path, str | None] | None = None  # run id, sweep dir, tracking URI

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.log.get("mlflow"):
            return
        from runner.sinks import mlflow_sink

        sweep_dir = Path(str(config.hydra.sweep.dir))
        uri = config.log.mlflow_uri
        mlflow_sink.check_installed()
        run_id = mlflow_sink.start_sweep_run(sweep_dir, uri, resume=bool(config.train.resume))
        os.environ[mlflow_sink.PARENT_RUN_ENV] = run_id
        MlflowSweep._under_way = (run_id, sweep_dir, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if MlflowSweep._under_way is None:
            return
        from runner.report import job_statuses

        sweep_dir = MlflowSweep._under_way[1]
        statuses = job_statuses(sweep_dir, sweep_ended=True)
        ok = all(status in ("completed", "diverged") for status in statuses)
        MlflowSweep._end("FINISHED" if ok else "FAILED")

    @staticmethod
    def end_interrupted() -> None:
        """Ends the parent run of a sweep that a signal ended (no on_multirun_end comes)."""
        MlflowSweep._end("KILLED")

    @staticmethod
    def _end(status: str) -> None:
        under_way, MlflowSweep._under_way = MlflowSweep._under_way, None
        if under_way is None:
            return
        from runner.sinks import mlflow_sink

        os.environ.pop(mlflow_sink.PARENT_RUN_ENV, None)
        run_id, sweep_dir, uri = under_way
        try:
            mlflow_sink.end_sweep_run(run_id, sweep_dir, uri, status)
        except Exception as err:  # the jobs' runs are logged; only the parent's end is missing
            message = " ".join(str(err).split()) or type(err).__name__
            _warn(f"MLflow parent run {run_id} not ended: {message}")


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


class StopWorkers(Callback):
    """Ctrl-C or SIGTERM to `runner -m` stops the jobs that worker processes run (joblib's)
    as it stops a job in this process: each stops after its current step, with every logged
    step on disk and its summary saying `interrupted`.

    A signal sent to this process alone (`kill -TERM`) never reaches the workers, and this
    process would end at once, leaving them training. So, while the sweep runs, the signal is
    passed on to every worker, and this process waits (up to STOP_TIMEOUT seconds) until no
    job's summary.json says `running` before it raises `Interrupted`; the launcher then ends
    the idle workers. Ctrl-C on a terminal reaches the workers by itself, and is not passed on
    a second time, which would stop them at once. A second signal stops everything at once.
    """

    STOP_TIMEOUT = 60.0

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.signum: int | None = None
        self._previous: dict = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can handle signals
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.signum = None
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)
        }

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore()

    def _handle(self, signum: int, frame: Any) -> None:
        from runner.signals import Interrupted

        workers = multiprocessing.active_children()
        if self.signum is not None:  # the second one: the workers stop at once, and so do we
            _send(workers, signum)
            self._restore()
            raise Interrupted(signum)
        self.signum = signum
        if not _terminal_sent(signum):
            _send(workers, signum)
        if workers:
            self._wait_for_jobs()
        self._restore()
        raise Interrupted(signum)

    def _wait_for_jobs(self) -> None:
        from runner.report import running_jobs

        deadline = time.monotonic() + self.STOP_TIMEOUT
        while running_jobs(self.sweep_dir) and time.monotonic() < deadline:
            if not multiprocessing.active_children():
                return
            time.sleep(0.05)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _send(workers: list, signum: int) -> None:
    for worker in workers:
        # a worker may have ended meanwhile
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signum)


def _terminal_sent(signum: int) -> bool:
    """Whether a SIGINT most likely came from Ctrl-C on the terminal, which sends it to every
    process of the foreground process group, workers included."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal
        return False
