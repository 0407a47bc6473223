"""`runner-lr-find [OVERRIDES...]`: which learning rates train the configured problem, found by
training log-spaced rates exactly, side by side.

fastai's and Lightning's finders raise one rate step by step during a single short run and read a
rate off that curve. Here every rate trains on its own from the same initial parameters for
`--steps` steps, as a run at that rate alone would (bit for bit: the driver's K jobs,
runner.run.run_jobs, in one batched loop), so each row is what that run's summary would say.

A rate is stable when its final loss ended below the initial loss: finite is not enough, a rate
that climbs slowly diverges later. The initial loss is the loss at the initial parameters on step
1's batch (the full data without mini-batches), which every rate logs at step 1.

The jobs' own outputs (summary.json of each rate) go to a temporary directory that is removed at
the end: the rows are the result, and `runner -m optimizer.lr=... hydra/launcher=vectorized` is
the command that keeps every rate's metrics. lr_find.csv and lr_find.png go to `hydra.run.dir`
(outputs/DATE/TIME_TOKEN, as a run's, unless the overrides name one).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner.commands import compose, end_process, overrides_help, run_command
from runner.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

PROG = "runner-lr-find"
CSV_NAME, PNG_NAME = "lr_find.csv", "lr_find.png"
COLUMNS = ["lr", "final_loss", "best_loss", "diverged_at_step", "stable"]
# Six decades cover every sensible rate of these optimizers; 32 rates put about 2.4 per octave.
DEFAULT_MIN, DEFAULT_MAX, DEFAULT_NUM = 1e-5, 10.0, 32


@dataclass(frozen=True)
class LrFind:
    """The rates tried and what each did (`table`: COLUMNS, one row per rate, rates ascending)."""

    table: pd.DataFrame
    initial_loss: float
    steps: int

    @property
    def best(self) -> tuple[float, float] | None:
        """(rate, final loss) of the lowest final loss (the smallest rate on a tie), or None when
        no rate lowered the loss: the lowest final loss is then no better than not training."""
        stable = self.table[self.table["stable"]]
        if stable.empty:
            return None
        row = stable.loc[stable["final_loss"].idxmin()]
        return float(row["lr"]), float(row["final_loss"])

    @property
    def largest_stable(self) -> float | None:
        stable = self.table.loc[self.table["stable"], "lr"]
        return float(stable.max()) if len(stable) else None


def find_lr(cfg: DictConfig, rates: Sequence[float], steps: int) -> LrFind:
    """Trains the config's problem at every rate of `rates` for `steps` steps, side by side."""
    import pandas as pd

    from runner.run import Job, build_problem, run_jobs

    train = OmegaConf.to_object(cfg.train)
    initial = initial_loss(build_problem(cfg, train, "cpu"))
    rates = sorted(float(r) for r in rates)
    with tempfile.TemporaryDirectory(prefix="lr_find_") as tmp:
        jobs = [Job(_job_config(cfg, lr, steps), Path(tmp) / str(k)) for k, lr in enumerate(rates)]
        results = run_jobs(jobs)
    for result in results:
        if result.error is not None:
            raise result.error
    rows = []
    for lr, result in zip(rates, results, strict=True):
        summary = result.summary
        final = _number(summary.get("final_loss"))
        diverged = summary.get("diverged_at_step")
        rows.append({
            "lr": lr,
            "final_loss": final,
            "best_loss": _number(summary.get("best_loss")),
            "diverged_at_step": diverged,
            "stable": diverged is None and bool(final < initial),
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"diverged_at_step": "Int64"})
    return LrFind(table, initial, steps)


def initial_loss(problem) -> float:
    """The loss at the initial parameters on step 1's batch (runner.loops.Problem), as the
    NumPy loop computes it: what every rate logs at step 1."""
    idx = problem.batches.indices(1)
    x, y = (problem.x, problem.y) if idx is None else (problem.x[idx], problem.y[idx])
    model = problem.model
    with np.errstate(all="ignore"):
        value, _ = problem.loss.value_and_grad(model.forward(problem.init, model.inputs(x), np), y)
    return float(value)


def _job_config(cfg: DictConfig, lr: float, steps: int) -> DictConfig:
    """The config of one rate's job: the rate and the steps, and no per-job files or MLflow run
    but the summary (the jobs' directories are temporary)."""
    job = copy.deepcopy(cfg)
    job.optimizer.lr = lr
    job.train.steps = steps
    job.train.resume = False
    job.train.checkpoint_every = 0
    job.log.csv = False
    job.log.tensorboard = False
    job.log.landscape = False
    job.log.mlflow = False
    return job


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def write_outputs(result: LrFind, out_dir: Path, title: str) -> None:
    """lr_find.csv and lr_find.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out_dir / CSV_NAME, index=False)
    figure(result, title).savefig(out_dir / PNG_NAME, format="png")


def figure(result: LrFind, title: str):
    """Final loss against lr, log-log (the sweep report's final_loss.png, runner.report):
    stable rates on the line, unstable ones as grey squares, diverged ones as red X on the top
    edge; the initial loss, the best and the largest stable rate drawn across."""
    from runner.report import final_loss_figure

    table = result.table.copy()
    diverged = table["diverged_at_step"].notna().to_numpy()
    table["status"] = np.where(
        diverged, "diverged", np.where(table["stable"], "completed", "unstable")
    )
    fig = final_loss_figure(table, "lr", title)
    ax = fig.axes[0]
    for line in ax.get_lines():  # the report calls the jobs that finished `completed`
        line.set_label(line.get_label().replace("completed", "stable"))
    if np.isfinite(result.initial_loss) and result.initial_loss > 0:
        ax.axhline(result.initial_loss, color="grey", ls="--", lw=1, label="initial loss")
    best, stable = result.best, result.largest_stable
    if best is not None:
        ax.axvline(best[0], color="C2", ls=":", label=f"best lr {best[0]:.4g}")
    if stable is not None:
        ax.axvline(stable, color="C1", ls="-.", label=f"largest stable lr {stable:.4g}")
    ax.set_xscale("log")
    ax.set_xlabel("lr (log scale)")
    ax.legend(fontsize="small")
    return fig


def last_line(result: LrFind) -> str:
    """`best lr: A (final loss L); largest stable lr: B` (`none` where there is no such rate)."""
    best, stable = result.best, result.largest_stable
    best_text = (
        "none (no rate lowered the loss)"
        if best is None
        else f"{best[0]:.6g} (final loss {best[1]:.6g})"
    )
    stable_text = "none" if stable is None else f"{stable:.6g}"
    return f"best lr: {best_text}; largest stable lr: {stable_text}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Trains NUM log-spaced learning rates from MIN to MAX, each for STEPS steps from the\n"
            "same initial parameters, side by side as one batched problem; writes lr_find.csv\n"
            "(lr, final_loss, best_loss, diverged_at_step, stable) and lr_find.png into\n"
            "hydra.run.dir (outputs/DATE/TIME_TOKEN unless given). Its last line names the best\n"
            "rate (lowest final loss) and the largest stable one (final loss below the initial)."
        ),
        epilog=(
            f"{overrides_help()}\n\noptimizer.lr is what this command varies; LBFGS cannot vary it "
            "side by side.\n\nExamples:\n"
            "  runner-lr-find\n"
            "  runner-lr-find model=linear data=synthetic optimizer=adam --num 48\n"
            "  runner-lr-find --min 0.1 --max 0.2 --num 41 hydra.run.dir=outputs/lr"
        ),
    )
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDES", help="KEY=VALUE, as runner")
    parser.add_argument(
        "--min", type=float, default=DEFAULT_MIN, help="smallest rate (%(default)g)"
    )
    parser.add_argument(
        "--max", type=float, metavar="LR", default=DEFAULT_MAX, help="largest rate (%(default)g)"
    )
    parser.add_argument(
        "--num", type=int, metavar="N", default=DEFAULT_NUM, help="how many rates (%(default)d)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="steps each rate trains (default: train.steps, 100 unless set)",
    )
    return parser


def rates_of(low: float, high: float, num: int) -> np.ndarray:
    """`num` log-spaced rates from `low` to `high`, both included; ConfigError if they are not
    a range of positive rates."""
    if not (np.isfinite(low) and low > 0):
        raise ConfigError("--min", low, "a rate > 0")
    if not (np.isfinite(high) and high > low):
        raise ConfigError("--max", high, f"a rate above --min={low:g}")
    if num < 1:
        raise ConfigError("--num", num, "an integer >= 1")
    return np.geomspace(low, high, num)


def main(argv: Sequence[str] | None = None) -> int:
    """`runner-lr-find`: returns its exit code (0; 2 for bad input)."""
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    return run_command(PROG, lambda: _lr_find(args))


def _lr_find(args: argparse.Namespace) -> int:
    from hydra.utils import get_class

    rates = rates_of(args.min, args.max, args.num)
    if args.steps is not None and args.steps < 1:
        raise ConfigError("--steps", args.steps, "an integer >= 1")
    composed = compose(args.overrides)
    cfg = composed.cfg
    if not getattr(get_class(cfg.optimizer._target_), "manual", False):
        raise ConfigError(
            "optimizer",
            composed.choices.get("optimizer"),
            "an optimizer whose rates train side by side (sgd, adam, ...); LBFGS evaluates each "
            "rate's loss apart",
        )
    out_dir = Path(composed.run_dir)
    if (out_dir / CSV_NAME).exists():
        raise ConfigError("hydra.run.dir", str(out_dir), f"a directory without {CSV_NAME} yet")
    steps = cfg.train.steps if args.steps is None else args.steps
    result = find_lr(cfg, rates, steps)
    shown = [o for o in args.overrides if not o.startswith("hydra.")]
    title = f"lr_find: final loss after {steps} steps ({' '.join(shown) or 'defaults'})"
    write_outputs(result, out_dir, title)
    table = result.table
    diverged = int(table["diverged_at_step"].notna().sum())
    stable = int(table["stable"].sum())
    print(
        f"{len(table)} rates from {rates[0]:g} to {rates[-1]:g}, {steps} steps each: "
        f"{stable} stable, {len(table) - stable - diverged} unstable, {diverged} diverged "
        f"(initial loss {result.initial_loss:.6g}) -> {out_dir / CSV_NAME}, {PNG_NAME}"
    )
    print(last_line(result), flush=True)
    return 0


def entry() -> None:
    """Console entry point (`runner-lr-find`)."""
    end_process(main())


if __name__ == "__main__":
    entry()
