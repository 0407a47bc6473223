"""What a job reports, whoever ran it, and what its directory is called.

The CLI (a single run, or a sweep's jobs under Hydra's launchers), the vectorized launcher and
the sweep callbacks all end a job the same way: its final line, the value a sweeper minimises,
and for a job that failed, one line on stderr, its exit code for the command, and `failed.json`
in a sweep job's directory (its launcher may have run it in another process). This module sits
below all of them and imports none of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from runner.errors import describe_error

# Exit codes of the jobs this process saw fail, first one first: the command exits with it.
_FAILED: list[int] = []

# What a failed sweep job leaves in its directory: {"exit_code": 2, "error": "..."}.
FAILED_JOB_FILE = "failed.json"


# What the final line says of a run that stopped before train.steps (summary.json's stop_reason).
_EARLY_STOP_WORDS = {"early_stop": "early stop", "target_loss": "target loss reached"}


def final_line(summary: dict, out_dir: Path, max_values: int = 16, finished: bool = False) -> str:
    """The run's last word: status, loss, parameters, speed and where the outputs are. A run
    that resume found already finished (`finished`) says so instead of giving a speed."""
    status = summary["status"]
    if status == "diverged":
        status = f"diverged at step {summary['diverged_at_step']}"
    why = _EARLY_STOP_WORDS.get(summary.get("stop_reason"))
    if status == "completed" and why:
        status = f"completed ({why} at step {summary['steps_completed']})"
    params = _params(summary["params"], max_values)
    loss = summary["final_loss"]
    result = (
        f"{summary['steps_completed']} steps, final loss "
        f"{'nan' if loss is None else f'{loss:.6g}'}, {params}"
    )
    if finished:
        return f"already {status}: {result} -> {out_dir} (nothing to resume)"
    return f"{status}: {result}, {summary['steps_per_s']:.0f} steps/s -> {out_dir}"


def _params(params: dict, max_values: int) -> str:
    sizes = {k: np.size(v) for k, v in params.items()}
    if sum(sizes.values()) <= max_values:
        return " ".join(f"{k}={_short(v)}" for k, v in params.items())
    # Thousands of values would bury the line: a parameter of several shows its norm, named as
    # in metrics.csv. None is how summary.json writes NaN.
    return " ".join(
        f"{k}={_short(v)}"
        if sizes[k] == 1
        else f"param_norm/{k}={_short(float(np.linalg.norm(np.array(v, dtype=float))))}"
        for k, v in params.items()
    )


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return "nan" if value is None else f"{value:.6g}"


def sweeper_value(summary: dict) -> float:
    """What a job returns for a sweeper (e.g. Optuna) to minimise: its final loss, and inf for a
    diverged run (a NaN would abort Optuna's study)."""
    loss = summary["final_loss"]
    return math.inf if loss is None or math.isnan(loss) else loss


def report_failed_job(err: BaseException, out_dir: Path, *, in_sweep: bool) -> int:
    """One line on stderr for a job that raised; returns its exit code (2 for bad input, else
    1), which the command then exits with. A sweep's job leaves it in failed.json too."""
    message, code = describe_error(err)
    print(f"runner: error: {message}", file=sys.stderr, flush=True)
    note_failed_job(code)
    if in_sweep:
        with contextlib.suppress(OSError):
            text = json.dumps({"exit_code": code, "error": message})
            (out_dir / FAILED_JOB_FILE).write_text(text + "\n")
    return code


def note_failed_job(code: int) -> None:
    """The command exits with the first code noted (a sweep's other jobs still run)."""
    _FAILED.append(code)


def exit_code() -> int:
    """The exit code of the jobs this process saw end: the first failure's, else 0."""
    return _FAILED[0] if _FAILED else 0


def first_exit_code(sweep_dir: Path) -> int:
    """The exit code that the sweep's first failed job left in its failed.json (2 for bad
    input), so that every launcher ends the sweep as the basic one does; 1 when none did."""

    def number(path: Path) -> int:
        head = path.parent.name.partition("_")[0]
        return int(head) if head.isdigit() else -1

    for path in sorted(sweep_dir.glob(f"*/{FAILED_JOB_FILE}"), key=number):
        try:
            return int(json.loads(path.read_text())["exit_code"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 1


# The keys a sweep varies, as the command line gave them (set by the CLI); job directories are
# named after those alone. Passed by environment so that launchers' worker processes see it too.
SWEPT_KEYS_ENV = "RUNNER_SWEPT_KEYS"

# Bytes of a job directory's name past its number: file systems allow 255 in all.
MAX_DIRNAME_BYTES = 200


def swept_keys() -> set[str] | None:
    """The keys the sweep this process runs a job of varies on its command line (none for a
    search that draws its values); None outside a sweep."""
    swept = os.environ.get(SWEPT_KEYS_ENV)
    return None if swept is None else {key for key in swept.split(",") if key}


def job_dirname(num: int, overrides: list[str]) -> str:
    """`<job number>_<swept key=value,...>`: readable run names in `tensorboard --logdir`.

    A name too long for a directory (a swept list of many values) keeps its start and gains a
    digest of the whole, so that it stays the same for the same values and differs otherwise."""
    keys = swept_keys()
    chosen = [o for o in overrides if keys is None or o.lstrip("+~").split("=")[0] in keys]
    # a value may hold a path; a job directory must stay one directory
    name = ",".join(chosen).replace("/", "%2F")
    encoded = name.encode()
    if len(encoded) > MAX_DIRNAME_BYTES:
        digest = hashlib.sha256(encoded).hexdigest()[:12]
        start = encoded[: MAX_DIRNAME_BYTES - len(digest) - 3].decode(errors="ignore")
        name = f"{start}...{digest}"
    return f"{num}_{name}" if name else str(num)
