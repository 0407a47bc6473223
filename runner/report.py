"""The sweep report: which setting won, and whether the loops agree.

`write_report(path)` reads a sweep directory (or one run's directory) as the runner left it, that
is each job's summary.json, metrics.csv and .hydra/, and writes next to the jobs:

- `summary.csv`: one row per job (job number, swept values, status, losses, steps, wall time,
  final parameters named like metrics.csv's columns, the job's directory; and each job's `lr`
  when the sweep varies the optimizer);
- `loss.png`: loss against step for every job, log scale (over seeds: each group's mean with a
  band of +-1 std);
- `final_loss.png`: final loss against the swept key, when exactly one numeric key is swept;
- `parity.csv`: when jobs differ only in `loop`, how far apart their loss, parameters and
  gradients get, and the first step where the gap exceeds the dtype's tolerance;
- `trajectories.png`: every job's path on one picture of their loss, when they share a problem
  of one or two parameter elements (runner.landscape);
- `aggregate.csv`: when train.seed or data.seed is swept, each group of the other swept values
  with the mean and std of its final and best losses.

Hydra calls it when a sweep ends (runner.callbacks.SweepReport); `runner-report DIR` rebuilds it
from the shell, for instance for a sweep that was killed half-way. What it cannot read or write
(a hand-edited summary.json, a read-only archive) is a one-line warning, and the report is made
of the rest.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:  # imported lazily below: pandas and matplotlib take a second to load
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# SPEC: how closely the three loops agree, relative, for each dtype.
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
FIGSIZE = (8.0, 5.0)  # inches; 800 x 500 pixels at landscape.DPI, as every picture
# loss.png names each job in a legend up to this many jobs, and shows a colour bar beyond.
MAX_LEGEND = 20
# A legend label longer than this many characters is wrapped; the legend sits inside the plot
# for at most INSIDE_LEGEND labels none of which was wrapped, else below it in as many columns
# as fit: runs that differ in many settings would otherwise cover the curves.
LABEL_WIDTH = 32
INSIDE_LEGEND = 10
# Lines that coincide (the loops agree): thick solid, dashed, dotted, so each one shows.
_COINCIDING_STYLES = ("-", "--", ":")
# Swept keys whose jobs are repeats of one setting: aggregate.csv groups over them.
SEED_KEYS = ("train.seed", "data.seed")
# final_loss.png gets a log x axis once the swept values span two decades (0.001 ... 0.1).
LOG_X_RATIO = 100.0
# Columns of summary.csv after the job number and the swept keys (final parameters follow).
SUMMARY_COLUMNS = ["status", "final_loss", "best_loss", "steps_completed", "wall_s"]
PARITY_COLUMNS = [
    "setting",
    "loop_a",
    "loop_b",
    "job_a",
    "job_b",
    "dtype",
    "tolerance",
    "steps_compared",
    "loss_gap",
    "param_gap",
    "grad_gap",
    "first_step_over_tolerance",
]


class NotARunDirectory(ValueError):
    """The directory holds neither a run nor a sweep; `reason` says what was found instead."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class Job:
    """One run as found on disk. Anything it did not get to write is empty."""

    path: Path
    num: int | None
    overrides: list[str]
    status: str  # summary.json's, or `crashed` / `failed` when it never finished (load_job)
    summary: dict[str, Any]
    metrics: pd.DataFrame | None
    config: dict[str, Any]  # .hydra/config.yaml
    loop: str | None
    # what could not be read as the runner writes it: (file, what), one warning each
    problems: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def dtype(self) -> str:
        return str(self.config.get("train", {}).get("dtype") or _default_dtype())

    @property
    def max_elements(self) -> int:
        return int(self.config.get("log", {}).get("max_elements") or 16)

    def value(self, key: str) -> str | None:
        """The value this job's overrides give `key` (as typed), or None."""
        for override in self.overrides:
            k, _, v = override.partition("=")
            if k.lstrip("+~") == key:
                return v
        return None


# --- collecting ------------------------------------------------------------------------------
def load_job(path: Path, *, sweep_ended: bool = False) -> Job:
    """Reads one run directory. A run whose summary.json is missing or still says `running`
    never finished: it is `crashed`, except that a missing summary.json after a sweep ended in
    this process means the job stopped before training (a bad value: `failed`). A value that
    is not what the runner writes (a summary.json loss that is no number, a metrics.csv row
    that is no numbers) is left out and noted in `problems`."""
    problems: list[tuple[Path, str]] = []
    summary = _checked_summary(path / "summary.json", problems)
    hydra = _read_yaml(path / ".hydra" / "hydra.yaml").get("hydra", {})
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml", default=None)
    if not isinstance(overrides, list):
        overrides = summary.get("overrides", [])
    status = job_status(summary, sweep_ended=sweep_ended)
    num = hydra.get("job", {}).get("num")
    if not isinstance(num, int):  # a single run's hydra.yaml has none
        match = re.match(r"(\d+)(_|$)", path.name)
        num = int(match.group(1)) if match else None
    return Job(
        path=path,
        num=num,
        overrides=[str(o) for o in overrides],
        status=status,
        summary=summary,
        metrics=_read_metrics(path / "metrics.csv", problems),
        config=_read_yaml(path / ".hydra" / "config.yaml"),
        loop=hydra.get("runtime", {}).get("choices", {}).get("loop") or summary.get("loop"),
        problems=problems,
    )


def job_status(summary: dict[str, Any], *, sweep_ended: bool = False) -> str:
    """A job's status from its summary.json (empty when missing), as load_job explains."""
    status = summary.get("status")
    if status is None:
        return "failed" if sweep_ended else "crashed"
    return "crashed" if status == "running" else str(status)


def job_statuses(sweep_dir: Path, *, sweep_ended: bool = False) -> list[str]:
    """The status of every job directory in `sweep_dir`, from its summary.json alone."""
    if not sweep_dir.is_dir():
        return []
    return [
        job_status(_read_json(p / "summary.json"), sweep_ended=sweep_ended)
        for p in sweep_dir.iterdir()
        if p.is_dir() and _is_run_dir(p)
    ]


def running_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories in `sweep_dir` whose summary.json says `running` right now."""
    if not sweep_dir.is_dir():
        return []
    return [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and _read_json(p / "summary.json").get("status") == "running"
    ]


def collect_jobs(sweep_dir: Path, *, sweep_ended: bool = False) -> list[Job]:
    """Every job directory in `sweep_dir` (one holding summary.json, metrics.csv or .hydra/),
    by job number. Jobs that never started have no directory and are simply absent."""
    found = [p for p in sweep_dir.iterdir() if p.is_dir() and _is_run_dir(p)]
    jobs = [load_job(p, sweep_ended=sweep_ended) for p in found]
    return sorted(jobs, key=lambda j: (j.num is None, j.num or 0, j.path.name))


def swept_keys(sweep_dir: Path, jobs: Sequence[Job]) -> list[str]:
    """The keys the sweep varied: from the command line Hydra saved in multirun.yaml (sweep
    overrides and `hydra.sweeper.params`), else the keys whose values differ between jobs."""
    multirun = _read_yaml(sweep_dir / "multirun.yaml").get("hydra", {})
    task = multirun.get("overrides", {}).get("task")
    if isinstance(task, list):
        from runner.overrides import parse
        from runner.overrides import swept_keys as parsed_swept_keys

        try:
            keys = parsed_swept_keys(parse(list(map(str, task))))
        except Exception:  # not Hydra's own overrides after all: guess from the jobs below
            keys = None
        if keys is not None:
            params = (multirun.get("sweeper") or {}).get("params") or {}
            return list(dict.fromkeys([*keys, *map(str, params)]))
    seen = dict.fromkeys(o.partition("=")[0].lstrip("+~") for job in jobs for o in job.overrides)
    return [key for key in seen if len({job.value(key) for job in jobs}) > 1]


# --- summary.csv -----------------------------------------------------------------------------
def summary_table(jobs: Sequence[Job], swept: Sequence[str], root: Path) -> pd.DataFrame:
    """One row per job: number, swept values, status, losses, steps, wall time, final parameters
    (`param/<name>[/<i>]` as in metrics.csv) and the job directory relative to `root`.

    A job that never finished is described by the last row of its metrics.csv.
    """
    import pandas as pd

    rows, param_columns = [], {}
    for job in jobs:
        row: dict[str, Any] = {"job": job.num}
        row.update({key: job.value(key) for key in swept})
        row.update(_results(job))
        params = _final_params(job)
        param_columns.update(dict.fromkeys(params))
        row.update(params)
        row["dir"] = job.path.relative_to(root).as_posix() if job.path != root else "."
        rows.append(row)
    columns = ["job", *swept, *SUMMARY_COLUMNS, *param_columns, "dir"]
    table = pd.DataFrame(rows, columns=columns)
    if "optimizer" in swept:  # each optimizer's own rate (Adam's 0.001 beside SGD's 0.01)
        table["lr"] = [_number(job.config.get("optimizer", {}).get("lr")) for job in jobs]
    table["job"] = table["job"].astype("Int64")
    table["steps_completed"] = table["steps_completed"].astype("Int64")
    for key in swept:  # numbers stay numbers, so the CSV sorts and plots as users expect
        numeric = pd.to_numeric(table[key], errors="coerce")
        if numeric.notna().sum() == table[key].notna().sum():
            table[key] = numeric
    return table


def _results(job: Job) -> dict[str, Any]:
    s, m = job.summary, job.metrics
    if job.status == "crashed" and m is not None and len(m):
        losses = m["loss"].to_numpy(float)
        finite = losses[np.isfinite(losses)]
        return {
            "status": job.status,
            "final_loss": float(losses[-1]),
            "best_loss": float(finite.min()) if finite.size else math.nan,
            "steps_completed": int(m["step"].iloc[-1]),
            "wall_s": math.nan,  # the run never measured it
        }
    return {
        "status": job.status,
        "final_loss": _number(s.get("final_loss")),
        "best_loss": _number(s.get("best_loss")),
        "steps_completed": s.get("steps_completed"),
        "wall_s": _number(s.get("wall_s")) if job.status != "crashed" else math.nan,
    }


def _final_params(job: Job) -> dict[str, float]:
    """Final parameters flattened and named as metrics.csv names them."""
    m = job.metrics
    if job.status == "crashed" and m is not None and len(m):
        return {c: float(m[c].iloc[-1]) for c in m.columns if c.startswith(("param/", "param_"))}
    params = job.summary.get("params")
    if job.status == "crashed" or not params:  # a crashed summary only holds the initial values
        return {}
    from runner.metrics import Layout

    # JSON null stands for NaN; float arrays read it back as such
    arrays = {name: np.asarray(v, dtype=float) for name, v in params.items()}
    layout = Layout({name: a.shape for name, a in arrays.items()}, job.max_elements)
    flat = [a.reshape(-1) for a in arrays.values()]
    row = np.concatenate([[math.nan, math.nan], *flat, np.zeros(layout.n_values)])
    values = layout.table(row[None, :])[0]
    return {
        c: float(v) for c, v in zip(layout.columns, values, strict=True) if c.startswith("param")
    }


# --- parity.csv ------------------------------------------------------------------------------
def parity_table(jobs: Sequence[Job]) -> pd.DataFrame | None:
    """For each pair of jobs whose overrides are equal but for `loop`: the largest relative gap
    in loss, parameters and gradients over their common logged steps, and the first step where
    any gap exceeds the tolerance of their dtype (empty when none does). None without pairs."""
    import pandas as pd

    groups: dict[tuple[str, ...], list[Job]] = defaultdict(list)
    for job in jobs:
        if job.loop is not None:
            setting = tuple(
                sorted(o for o in job.overrides if o.split("=")[0].lstrip("+~") != "loop")
            )
            groups[setting].append(job)
    rows = []
    for setting, members in groups.items():
        for a, b in combinations(members, 2):
            if a.loop != b.loop:
                rows.append({"setting": " ".join(setting), **compare_runs(a, b)})
    if not rows:
        return None
    table = pd.DataFrame(rows, columns=PARITY_COLUMNS)
    for column in ("job_a", "job_b", "steps_compared", "first_step_over_tolerance"):
        table[column] = table[column].astype("Int64")
    return table


def compare_runs(a: Job, b: Job) -> dict[str, Any]:
    """The parity row of two runs (see parity_table)."""
    tolerance = max(TOLERANCE.get(a.dtype, 1e-5), TOLERANCE.get(b.dtype, 1e-5))
    row: dict[str, Any] = {
        "loop_a": a.loop,
        "loop_b": b.loop,
        "job_a": a.num,
        "job_b": b.num,
        "dtype": a.dtype if a.dtype == b.dtype else f"{a.dtype}/{b.dtype}",
        "tolerance": tolerance,
        "steps_compared": 0,
        "loss_gap": math.nan,
        "param_gap": math.nan,
        "grad_gap": math.nan,
        "first_step_over_tolerance": None,
    }
    if a.metrics is None or b.metrics is None:
        return row
    both = a.metrics.merge(b.metrics, on="step", suffixes=("@a", "@b"))
    row["steps_compared"] = len(both)
    if not len(both):
        return row
    over = np.zeros(len(both), dtype=bool)
    worst: dict[str, float] = {}
    for column in a.metrics.columns:
        kind = _column_kind(column)
        if kind is None or column not in b.metrics.columns:
            continue
        gap = relative_gap(both[f"{column}@a"].to_numpy(float), both[f"{column}@b"].to_numpy(float))
        worst[kind] = max(worst.get(kind, 0.0), float(gap.max()))
        over |= gap > tolerance
    row.update({f"{kind}_gap": value for kind, value in worst.items()})
    if over.any():
        row["first_step_over_tolerance"] = int(both["step"].to_numpy()[over][0])
    return row


def relative_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| at each step over the largest |value| either run has reached so far.

    The running scale judges a value near zero (a gradient at convergence) by the size the
    column has had, not by itself; and, unlike the column's overall maximum, it does not let a
    later blow-up hide an early gap. Equal values (inf == inf, NaN and NaN) are no gap; a
    non-finite value against a different one is an infinite gap.
    """
    size = np.fmax(np.abs(np.where(np.isfinite(a), a, 0)), np.abs(np.where(np.isfinite(b), b, 0)))
    scale = np.maximum.accumulate(size) if size.size else size
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(a - b) / scale
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    gap[same] = 0.0
    gap[~same & ~np.isfinite(gap)] = math.inf
    return gap


def _column_kind(column: str) -> str | None:
    if column == "loss":
        return "loss"
    if column.startswith(("param/", "param_norm/")):
        return "param"
    if column.startswith(("grad/", "grad_norm")):
        return "grad"
    return None  # step; lr is the schedule, the same by construction


# --- plots -----------------------------------------------------------------------------------
def loss_figure(
    jobs: Sequence[Job],
    labels: Sequence[str],
    title: str,
    legend_title: str = "",
    note: str = "",
):
    """Loss against step for every job that logged any, on a log scale. `note`, when given, is
    written on the plot (the lines of loops that agree coincide: it says so, and each loop's
    line gets its own dash pattern so that the ones beneath still show).

    The y range is that of the jobs that did not diverge (and where diverged ones started), so
    a blow-up to 1e30 does not flatten the comparison; a diverged job ends in an X, on the top
    edge when it left the range. A loss of exactly 0, which a log scale cannot show, is a
    triangle on the bottom edge at the step it was reached.
    """
    fig, ax = _figure()
    curves = []
    for i, (job, label, color) in enumerate(zip(jobs, labels, _colors(len(jobs)), strict=True)):
        if job.metrics is None or not len(job.metrics):
            continue
        step = job.metrics["step"].to_numpy()
        loss = job.metrics["loss"].to_numpy(float)
        positive = np.isfinite(loss) & (loss > 0)
        zeros = np.flatnonzero(loss == 0)
        notes = [_status_note(job)] if job.status != "completed" else []
        if zeros.size:
            notes.append(f"loss 0 from step {step[zeros[0]]}")
        ax.plot(
            step,
            np.where(positive, loss, np.nan),
            color=color,
            lw=1.5 + (1.5 if note and i % 3 == 0 else 0.0),
            ls=_COINCIDING_STYLES[i % 3] if note else "-",
            marker="o" if len(step) == 1 else None,
            label=textwrap.fill(f"{label} ({', '.join(notes)})" if notes else label, LABEL_WIDTH),
        )
        if zeros.size:
            _edge_marker(ax, step[zeros[0]], "bottom", color)
        curves.append((job, step, loss, positive, color))

    shown = [loss[positive] for _, _, loss, positive, _ in curves]
    kept = [
        loss[positive][:1] if job.status == "diverged" else loss[positive]
        for job, _, loss, positive, _ in curves
    ]
    top = None
    if any(v.size for v in shown):
        ax.set_yscale("log")
        low = min(v.min() for v in shown if v.size)
        top = max(v.max() for v in (kept if any(v.size for v in kept) else shown) if v.size) * 10
        ax.set_ylim(low / 2, top)
    for job, step, loss, positive, color in curves:
        if job.status != "diverged" or not positive.any():
            continue
        last = np.flatnonzero(positive)[-1]
        if top is not None and loss[last] > top:
            _edge_marker(ax, step[last], "top", color, marker="X")
        else:
            ax.plot(step[last], loss[last], "X", color=color, ms=10, mec="black")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)" if top is not None else "loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if note:
        box = {"fc": "white", "ec": "0.6", "alpha": 0.9}
        ax.text(0.98, 0.97, textwrap.fill(note, 48), transform=ax.transAxes, ha="right",
                va="top", fontsize="small", bbox=box)  # fmt: skip
    if len(jobs) <= MAX_LEGEND:
        _legend(fig, ax, legend_title)
    else:  # one legend entry per job would bury the plot: a colour bar keyed to the jobs
        _job_colorbar(fig, ax, labels, legend_title)
    return fig


def _legend(fig: Figure, ax: Axes, title: str) -> None:
    """The jobs' legend: inside the plot for a few short labels; otherwise below it
    (landscape.legend_below)."""
    from runner.landscape import legend_below

    labels = ax.get_legend_handles_labels()[1]
    if not labels:
        return
    if len(labels) <= INSIDE_LEGEND and "\n" not in "".join(labels):
        ax.legend(title=title or None, fontsize="small")
        return
    legend_below(fig, ax, title)


def _job_colorbar(fig: Figure, ax: Axes, labels: Sequence[str], title: str) -> None:
    """The colours of _colors(len(labels)) as a bar, with about eight jobs' labels on it."""
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    n = len(labels)
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, n)))
    fig.set_layout_engine("constrained")
    bar = fig.colorbar(ScalarMappable(Normalize(-0.5, n - 0.5), cmap), ax=ax, label=title or None)
    ticks = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int))
    bar.set_ticks(ticks, labels=[labels[i] for i in ticks])


def final_loss_figure(table: pd.DataFrame, key: str, title: str):
    """Final loss against the one numeric swept `key`, log y, and log x when the values span
    two decades. Completed jobs form the line; a diverged job is a red X on the top edge, a
    loss of exactly 0 a triangle on the bottom edge, other statuses grey squares."""
    fig, ax = _figure()
    rows = table.sort_values(key)
    x, loss, status = rows[key].to_numpy(float), rows["final_loss"].to_numpy(float), rows["status"]
    positive = np.isfinite(loss) & (loss > 0)
    done = (status == "completed").to_numpy()
    ax.plot(x[done & positive], loss[done & positive], "o-", color="C0", label="completed")
    zero = done & (loss == 0)
    if zero.any():
        _edge_marker(ax, x[zero], "bottom", "C0", label="completed, final loss 0")
    diverged = (status == "diverged").to_numpy()
    if diverged.any():
        _edge_marker(ax, x[diverged], "top", "red", marker="X", label="diverged")
    for name in sorted(set(status) - {"completed", "diverged"}):
        mine = (status == name).to_numpy()
        shown = mine & positive
        if shown.any():
            ax.plot(x[shown], loss[shown], "s", color="grey", mfc="none", ms=8, label=name)
        if (mine & ~positive).any():  # no loss to place: on the top edge, one legend entry
            label = None if shown.any() else name
            _edge_marker(ax, x[mine & ~positive], "top", "grey", marker="s", label=label)
    if positive.any():
        ax.set_yscale("log")
    finite_x = x[np.isfinite(x)]
    if finite_x.size and finite_x.min() > 0 and finite_x.max() / finite_x.min() >= LOG_X_RATIO:
        ax.set_xscale("log")
    if 0 < len(finite_x) <= 12:  # ticks at the swept values themselves
        ax.set_xticks(finite_x, [f"{v:g}" for v in finite_x])
        ax.minorticks_off()
    ax.set_xlabel(key)
    ax.set_ylabel("final loss (log scale)" if positive.any() else "final loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _figure() -> tuple[Figure, Axes]:
    # Fixed margins (landscape.figure). A legend below the plot makes the figure taller
    # (landscape.legend_below); only the colour bar of many jobs, whose width their labels
    # decide, hands the figure to constrained layout.
    from runner.landscape import figure

    fig, ax = figure(FIGSIZE)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.93)
    return fig, ax


def _colors(n: int) -> list:
    import matplotlib

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= MAX_LEGEND:  # told apart by the legend: twenty distinct colours
        return list(matplotlib.colormaps["tab20"](np.arange(n)))
    return list(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, n)))


def _edge_marker(ax: Axes, x, edge: str, color, marker: str = "v", label: str | None = None):
    # x in data coordinates, y on the axes' edge: values a log axis cannot place stay visible
    y = 0.03 if edge == "bottom" else 0.97
    xs = np.atleast_1d(x)
    ax.plot(
        xs,
        np.full(len(xs), y),
        marker,
        color=color,
        ms=10,
        mec="black",
        transform=ax.get_xaxis_transform(),
        clip_on=False,
        label=label,
    )


def _status_note(job: Job) -> str:
    if job.status == "diverged":
        at = job.summary.get("diverged_at_step")
        return f"diverged at step {at}" if at is not None else "diverged"
    return "" if job.status == "completed" else job.status


# --- seeds: aggregate.csv and the mean of each group -------------------------------------------
def seed_keys(swept: Sequence[str]) -> list[str]:
    """The swept keys that repeat a setting with other random draws (train.seed, data.seed)."""
    return [key for key in swept if key in SEED_KEYS]


def setting_keys(swept: Sequence[str]) -> list[str]:
    """The other swept keys: those whose values make the groups the seeds repeat."""
    return [key for key in swept if key not in SEED_KEYS]


def aggregate_table(table: pd.DataFrame, swept: Sequence[str]) -> pd.DataFrame:
    """One row per group of jobs equal in every swept key but the seeds: those keys, `n` (its
    jobs), and the mean and sample standard deviation (ddof=1: NaN for a group of one) of
    final_loss and best_loss over its jobs. A job without a loss (failed, or NaN) is left out
    of its group's mean and std, but counted in `n`."""
    others = setting_keys(swept)
    grouped = table.groupby(others, sort=False, dropna=False) if others else [((), table)]
    rows = []
    for values, group in grouped:
        values = values if isinstance(values, tuple) else (values,)
        row = dict(zip(others, values, strict=True)) | {"n": len(group)}
        for column in ("final_loss", "best_loss"):
            losses = group[column].astype(float)
            row[f"{column}_mean"] = losses.mean()
            row[f"{column}_std"] = losses.std(ddof=1)
        rows.append(row)
    import pandas as pd

    columns = [*others, "n", "final_loss_mean", "final_loss_std", "best_loss_mean", "best_loss_std"]
    return pd.DataFrame(rows, columns=columns)


def group_jobs(jobs: Sequence[Job], swept: Sequence[str]) -> tuple[list[list[Job]], list[str]]:
    """The jobs in groups of equal swept values but the seeds (in order of first appearance),
    and each group's label: its values (`adam, 0.1`, or `optimizer=adam, optimizer.lr=0.1`)."""
    others = setting_keys(swept)
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.value(key) for key in others), []).append(job)
    labels = []
    for values, members in groups.items():
        if len(others) == 1:
            label = values[0] or "-"
        else:
            label = ", ".join(f"{k}={v}" for k, v in zip(others, values, strict=True)) or "all"
        labels.append(f"{label} (n={len(members)})")
    return list(groups.values()), labels


def band_figure(groups: Sequence[Sequence[Job]], labels: Sequence[str], title: str,
                legend_title: str = "") -> Figure:  # fmt: skip
    """Each group's mean loss against step, log scale, with a band of +-1 standard deviation
    (ddof=1) over its jobs at each logged step. Where mean - std is not positive the band runs
    to the bottom of the plot: a log scale has no room for it."""
    import pandas as pd

    fig, ax = _figure()
    curves = []
    for members, label, color in zip(groups, labels, _colors(len(groups)), strict=True):
        frames = [j.metrics[["step", "loss"]] for j in members if j.metrics is not None]
        if not frames:
            continue
        # a group with a diverged job sets the y range by where it started only
        diverged = any(j.status == "diverged" for j in members)
        if diverged:
            label += " (diverged)"
        stats = pd.concat(frames).groupby("step")["loss"].agg(["mean", "std"])
        step, mean = stats.index.to_numpy(), stats["mean"].to_numpy(float)
        std = np.nan_to_num(stats["std"].to_numpy(float))  # one job at a step: no band
        ax.plot(step, np.where(mean > 0, mean, np.nan), color=color, lw=1.8,
                label=textwrap.fill(label, LABEL_WIDTH))  # fmt: skip
        curves.append((step, mean, std, color, diverged))
    positive = [m[np.isfinite(m) & (m > 0)] for _, m, _, _, _ in curves]
    kept = [v[:1] if d else v for v, (*_, d) in zip(positive, curves, strict=True)]
    if any(v.size for v in positive):
        ax.set_yscale("log")
        low = min(v.min() for v in positive if v.size) / 10
        top = max(v.max() for v in (kept if any(v.size for v in kept) else positive) if v.size)
        top *= 10
        ax.set_ylim(low, top)
        for step, mean, std, color, _ in curves:
            lower = np.where(mean - std > low, mean - std, low)
            ax.fill_between(step, lower, np.minimum(mean + std, top), color=color, alpha=0.2,
                            lw=0)  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("mean loss +- 1 std (log scale)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    _legend(fig, ax, legend_title)
    return fig


# --- trajectories.png ----------------------------------------------------------------------------
def trajectories(
    jobs: Sequence[Job], labels: Sequence[str], title: str, legend_title: str = ""
) -> Figure | None:
    """Every job's path on one picture of their loss, when all jobs share one problem (model,
    data and loss settings) of at most two parameter elements and logged their parameters;
    else None. The loss is evaluated once, over a range covering every path (see
    runner.landscape)."""
    from runner import landscape
    from runner.metrics import flat

    drawn = [(j, label) for j, label in zip(jobs, labels, strict=True)
             if j.metrics is not None and len(j.metrics)]  # fmt: skip
    if len(drawn) < 2 or len({landscape.problem_key(j.config) for j, _ in drawn}) != 1:
        return None
    f = landscape.from_config(drawn[0][0].config)
    if f.n_values > landscape.MAX_GRID_ELEMENTS:
        return None
    columns = [f"param/{name}" for name in landscape.element_names(f.shapes)]
    paths, steps = [], []
    for job, _ in drawn:
        if not set(columns) <= set(job.metrics.columns):
            return None
        seed = int(job.config.get("train", {}).get("seed", 0))
        init = f.model.init_params(f.x.shape[1], np.random.default_rng(seed))
        start = flat(init)
        paths.append(np.vstack([start, job.metrics[columns].to_numpy(float)]))
        steps.append(np.concatenate([[0], job.metrics["step"].to_numpy()]))
    diverged = [job.status == "diverged" for job, _ in drawn]
    surface, kept = landscape.surfaces(f, paths, diverged)
    names = [label for _, label in drawn]
    return landscape.trajectories_figure(surface, kept, names, title, steps, legend_title)


# --- the report ------------------------------------------------------------------------------
def write_report(
    path: Path,
    *,
    sweep_ended: bool = False,
    out: IO[str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Writes the report of the sweep (or single run) in `path`, prints a table of its jobs,
    best first, and the files written; returns those files.

    For a sweep: summary.csv, loss.png, final_loss.png (one numeric key swept), parity.csv
    (jobs differing only in `loop`), trajectories.png (one shared problem of at most two
    parameter elements) and aggregate.csv (seeds swept). For a single run: its loss.png.
    `sweep_ended` says the sweep has just ended in this process, so that a job without
    summary.json failed rather than crashed. Raises NotARunDirectory when `path` holds neither.

    What cannot be read or written is a warning, one line `<path>: <what>` passed to `warn`
    (default: `runner-report: warning: ...` on stderr), and the report is made of the rest: a
    value the runner would not have written is left out, and in a directory that cannot be
    written (archived results) the table is still printed.
    """
    out = out if out is not None else sys.stdout
    warn = warn if warn is not None else _warn
    path = Path(path).absolute()
    is_sweep = not _is_run_dir(path)
    if not is_sweep:
        jobs, swept = [load_job(path)], []
    elif not path.exists():
        raise NotARunDirectory("no such directory")
    elif not path.is_dir():
        raise NotARunDirectory("not a directory")
    else:
        try:
            jobs = collect_jobs(path, sweep_ended=sweep_ended)
        except OSError as err:
            raise NotARunDirectory(f"cannot list it: {_reason(err)}") from None
        if not jobs and not (path / "multirun.yaml").exists():
            raise NotARunDirectory("no summary.json, metrics.csv, multirun.yaml or job in it")
        swept = swept_keys(path, jobs)
    for job in jobs:
        for file, what in job.problems:
            warn(f"{file}: {what}")

    table = summary_table(jobs, swept, path)
    parity = parity_table(jobs) if is_sweep else None
    outputs = _Outputs(path)
    if is_sweep:
        outputs.save("summary.csv", lambda f: _save(f, lambda t: table.to_csv(t, index=False)))
    seeds = seed_keys(swept) if is_sweep else []
    if seeds:
        aggregate = aggregate_table(table, swept)
        outputs.save(
            "aggregate.csv", lambda f: _save(f, lambda t: aggregate.to_csv(t, index=False))
        )
    labels = _labels(jobs, swept) if is_sweep else [path.name]
    if any(job.metrics is not None and len(job.metrics) for job in jobs):
        legend_title = swept[0] if len(swept) == 1 else ""
        if seeds:
            groups, group_labels = group_jobs(jobs, swept)
            others = setting_keys(swept)
            over = ", ".join(seeds)
            outputs.save(
                "loss.png",
                lambda f: _save_figure(
                    f,
                    band_figure(
                        groups,
                        group_labels,
                        f"mean loss over {over}: {path.name}",
                        others[0] if len(others) == 1 else "",
                    ),
                ),
            )
        else:
            note = _coinciding_note(parity, jobs)
            outputs.save(
                "loss.png",
                lambda f: _save_figure(
                    f,
                    loss_figure(jobs, labels, f"loss per step: {path.name}", legend_title, note),
                ),
            )
    if is_sweep and len(swept) == 1 and len(table) and _is_numeric(table[swept[0]]):
        title = f"final loss against {swept[0]}: {path.name}"
        outputs.save(
            "final_loss.png",
            lambda f: _save_figure(f, final_loss_figure(table, swept[0], title)),
        )
    if parity is not None:
        outputs.save("parity.csv", lambda f: _save(f, lambda t: parity.to_csv(t, index=False)))
    if is_sweep and len(jobs) > 1:  # when they share one problem of one or two elements
        key = swept[0] if len(swept) == 1 else ""
        outputs.save("trajectories.png", lambda f: _save_trajectories(f, jobs, labels, path, key))

    print(_jobs_text(table, jobs, swept), file=out)
    if parity is not None:
        print(_parity_text(parity), file=out)
    for file in outputs.written:
        print(f"wrote {file}", file=out)
    for line in outputs.problems():
        warn(line)
    return outputs.written


class _Outputs:
    """The report's files in one directory: each written whole or not at all. A file that
    cannot be written is one problem; a directory that cannot be written is one problem for
    all of them, and the rest are not even drawn."""

    # what open() says in a directory the user may not (or nobody can) write to
    _READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: list[Path] = []
        self.failed: list[tuple[Path, OSError]] = []
        self.read_only: OSError | None = None
        self.skipped: list[str] = []
        self.not_drawn: list[tuple[Path, str]] = []

    def save(self, name: str, write: Callable[[Path], Path]) -> None:
        if self.read_only is not None:
            self.skipped.append(name)
            return
        file = self.directory / name
        try:
            self.written.append(write(file))
        except _NotDrawn as err:
            if err.args:
                self.not_drawn.append((file, err.args[0]))
        except OSError as err:
            if err.errno in self._READ_ONLY:
                self.read_only = err
                self.skipped.append(name)
            else:
                self.failed.append((file, err))

    def problems(self) -> list[str]:
        lines = [f"{file}: not written ({_reason(err)})" for file, err in self.failed]
        lines += [f"{file}: not drawn ({why})" for file, why in self.not_drawn]
        if self.read_only is not None:
            names = ", ".join(self.skipped)
            lines.append(
                f"{self.directory}: cannot write here ({_reason(self.read_only)}); "
                f"{names} not written"
            )
        return lines


def _warn(line: str) -> None:
    print(f"runner-report: warning: {line}", file=sys.stderr, flush=True)


def _is_numeric(column: pd.Series) -> bool:
    # a swept key of numbers, which final_loss.png can put on an axis
    from pandas.api.types import is_numeric_dtype

    return bool(is_numeric_dtype(column)) and column.notna().any()


def _labels(jobs: Sequence[Job], swept: Sequence[str]) -> list[str]:
    """Each job's swept values as typed on the command line: `0.001`, or `lr=0.1, loop=numpy`.

    Runs that were not one sweep (a folder of single runs) are named by the keys they set among
    those that differ, so a run left at the defaults does not list every other run's keys;
    runs that still look alike get their directory's name.
    """
    labels = []
    for job in jobs:
        values = [(key, job.value(key) or "-") for key in swept]
        if len(values) == 1:
            labels.append(values[0][1])
        elif values:
            labels.append(", ".join(f"{k}={v}" for k, v in values if v != "-") or "defaults")
        else:
            labels.append(f"job {job.num}" if job.num is not None else job.path.name)
    alike = {label for label in labels if labels.count(label) > 1}
    return [
        f"{label} ({job.path.name})" if label in alike and job.num is None else label
        for job, label in zip(jobs, labels, strict=True)
    ]


def _jobs_text(table: pd.DataFrame, jobs: Sequence[Job], swept: Sequence[str]) -> str:
    """The jobs, best first: completed ones by final loss, then the rest by final loss."""
    if not len(table):
        return "no jobs"
    shown = table[["job", "status", "final_loss"]].astype({"job": object}).fillna({"job": "-"})
    for key in swept:  # as typed: 1.0 stays 1.0
        shown[key] = [job.value(key) or "-" for job in jobs]
    shown = shown.assign(
        _unfinished=table["status"] != "completed",
        _loss=table["final_loss"].fillna(math.inf),
    ).sort_values(["_unfinished", "_loss", "job"], kind="stable")
    shown = shown.drop(columns=["_unfinished", "_loss"])
    return shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.6g}")


def _parity_text(parity: pd.DataFrame) -> str:
    bad = parity[parity["first_step_over_tolerance"].notna()]
    empty = parity[parity["steps_compared"] == 0]
    lines = [
        f"parity: {len(parity)} loop pairs, {len(parity) - len(bad) - len(empty)} within "
        f"tolerance over every logged step"
    ]
    for _, row in bad.iterrows():
        lines.append(
            f"  {row['loop_a']} vs {row['loop_b']} [{row['setting'] or 'defaults'}]: apart from "
            f"step {row['first_step_over_tolerance']} (largest gaps: loss {row['loss_gap']:.3g}, "
            f"param {row['param_gap']:.3g}, grad {row['grad_gap']:.3g}; tolerance "
            f"{row['tolerance']:g})"
        )
    for _, row in empty.iterrows():
        lines.append(f"  {row['loop_a']} vs {row['loop_b']}: no common logged steps")
    return "\n".join(lines)


def _save(path: Path, write: Callable[[IO[str]], None]) -> Path:
    with _replacing(path) as tmp, open(tmp, "w", newline="") as f:
        write(f)
    return path


def _save_trajectories(
    file: Path, jobs: Sequence[Job], labels: Sequence[str], path: Path, legend_title: str
) -> Path:
    try:
        fig = trajectories(jobs, labels, f"every job's path: {path.name}", legend_title)
    except Exception as err:  # a config it cannot rebuild (a data file since moved, say)
        raise _NotDrawn(_reason(err)) from None
    if fig is None:  # no shared problem of one or two elements: no picture
        file.unlink(missing_ok=True)  # nor one left from an earlier report
        raise _NotDrawn
    return _save_figure(file, fig)


class _NotDrawn(Exception):
    """A picture the report has no grounds for (see _Outputs.save)."""


def _coinciding_note(parity: pd.DataFrame | None, jobs: Sequence[Job]) -> str:
    """The note loss.png carries when the jobs that differ only in `loop` all agree within
    their dtype's tolerance at every common logged step: their lines coincide, as they should."""
    if parity is None or not len(parity):
        return ""
    if parity["first_step_over_tolerance"].notna().any() or (parity["steps_compared"] == 0).any():
        return ""
    loops = ", ".join(dict.fromkeys(str(j.loop) for j in jobs if j.loop))
    tolerance = f"{parity['tolerance'].max():g}"
    return (
        f"the lines of the loops ({loops}) coincide: they agree within {tolerance} relative "
        "at every logged step (parity.csv)"
    )


def _save_figure(path: Path, fig: Figure) -> Path:
    from runner.landscape import DPI

    with _replacing(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    # Written beside, then renamed into place: a reader (or a second report) never sees half a
    # file. A plain open, unlike mkstemp's 0600, leaves the file as readable as the umask says.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("summary.json", "metrics.csv", ".hydra"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or cut short by a killed process
        return {}
    return value if isinstance(value, dict) else {}


# summary.json's values that are numbers (JSON null for NaN), and those that are step counts
_SUMMARY_NUMBERS = ("final_loss", "best_loss", "wall_s", "steps_per_s")
_SUMMARY_STEPS = ("steps_completed", "diverged_at_step")


def _checked_summary(path: Path, problems: list[tuple[Path, str]]) -> dict[str, Any]:
    """summary.json without the values the runner would not have written, each one noted."""
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        problems.append((path, f"unreadable ({_reason(err)}); the job counts as crashed"))
        return {}
    if not isinstance(summary, dict):
        problems.append((path, "not a JSON object; the job counts as crashed"))
        return {}
    for key in (*_SUMMARY_NUMBERS, *_SUMMARY_STEPS):
        value = summary.get(key)
        if value is None:
            continue
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or (key in _SUMMARY_STEPS and value != int(value)):
            what = "a number" if key in _SUMMARY_NUMBERS else "a step count"
            problems.append((path, f"{key} is {json.dumps(value)}, not {what}; left empty"))
            del summary[key]
    params = summary.get("params")
    if params is not None and not _numeric_tree(params):
        problems.append((path, "params is not a table of numbers; left empty"))
        del summary["params"]
    if not isinstance(summary.get("overrides", []), list):
        problems.append((path, "overrides is not a list; left empty"))
        del summary["overrides"]
    return summary


def _numeric_tree(params: Any) -> bool:
    # {name: number or nested lists of numbers}, JSON null standing for NaN
    if not isinstance(params, dict):
        return False
    try:
        for value in params.values():
            if isinstance(value, str) or np.asarray(value, dtype=float).dtype != float:
                return False
    except (TypeError, ValueError):
        return False
    return True


# libyaml's parser when PyYAML has it (the same safe loading, about ten times faster): a sweep's
# report reads three .hydra files per job.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path, default: Any = dict) -> Any:
    fallback = default() if callable(default) else default
    try:
        value = yaml.load(path.read_text(), Loader=_SafeLoader)
    except (OSError, ValueError, yaml.YAMLError):
        return fallback
    if value is None or (default is dict and not isinstance(value, dict)):
        return fallback
    return value


def _read_metrics(path: Path, problems: list[tuple[Path, str]]) -> pd.DataFrame | None:
    """metrics.csv, less any row that is not all numbers (noted in `problems`); None when
    there is no file, or none with `step` and `loss` columns."""
    import pandas as pd
    from pandas.api.types import is_numeric_dtype

    try:
        frame = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):  # no rows yet: killed at its start
        return None
    except (OSError, ValueError) as err:  # pandas' ParserError and UnicodeDecodeError among them
        problems.append((path, f"unreadable ({_reason(err)}); no loss curve for this job"))
        return None
    if not {"step", "loss"} <= set(frame.columns):
        problems.append((path, "no step and loss columns; no loss curve for this job"))
        return None
    bad = frame["step"].isna()
    text = {c: ~frame[c].map(_is_number) for c in frame.columns if not is_numeric_dtype(frame[c])}
    for cells in text.values():
        bad |= cells
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        column = next((c for c, cells in text.items() if cells.iloc[first]), "step")
        problems.append(
            (
                path,
                f"line {first + 2} holds {frame[column].iloc[first]!r} in column {column}; "
                f"{int(bad.sum())} row(s) of that kind left out",
            )
        )  # line 1 is the header
        frame = frame[~bad].apply(pd.to_numeric).reset_index(drop=True)
        frame["step"] = frame["step"].astype("int64")
    return frame


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _reason(err: BaseException) -> str:
    """An OS or parser error in a few words, without the path the warning names anyway."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split()) or type(err).__name__


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _default_dtype() -> str:
    from runner.schema import TrainConf

    return TrainConf().dtype.value


def main(argv: Sequence[str] | None = None) -> None:
    """`runner-report DIR`: rebuilds the report of a sweep or run directory; exit 2 if DIR is
    neither."""
    parser = argparse.ArgumentParser(
        prog="runner-report",
        description="Rebuild summary.csv, parity.csv, aggregate.csv and plots of a sweep (or a "
        "run's loss.png).",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="a sweep or run directory")
    args = parser.parse_args(argv)
    try:
        write_report(args.dir)
    except NotARunDirectory as err:
        print(
            f"runner-report: error: DIR={args.dir}: expected a run or sweep directory "
            f"({err.reason})",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
