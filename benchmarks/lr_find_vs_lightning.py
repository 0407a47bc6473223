"""runner-lr-find against Lightning's learning-rate finder on the problem whose answer is known.

Seed notebook 000's problem: w*x on x = 1..4, y = 2x, MSE, SGD from w = 0, float32, full batch.
The loss is 7.5 (w - 2)^2 (Hessian 15): lr = 1/15 reaches w = 2 in one step, every rate below
2/15 lowers the loss and every rate above raises it.

- runner: `find_lr` trains 32 log-spaced rates from 1e-5 to 10 for 100 steps each, side by side
  (the shared driver, K = 32; the default loop=optim, and loop=numpy, which finds the same rates);
  it reports the best rate and the largest stable one.
- Lightning: `Tuner.lr_find` over the same range, 100 steps of one run whose rate grows
  exponentially, stopping once the loss exceeds 4x its best; it suggests the rate of the steepest
  loss decrease.

Lightning is not a dependency of the runner: `pip install lightning` first. Prints a table and
writes benchmarks/lr_find_lightning.json. Times are wall times in this process, each the median
of `--repeat` runs after one untimed run (imports and torch._dynamo's first load not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIN_LR, MAX_LR, NUM, STEPS = 1e-5, 10.0, 32, 100
EDGE = 2 / 15  # the largest stable rate of this problem
EXACT = 1 / 15  # the rate that solves it in one step


def runner_lr_find(*overrides: str) -> dict:
    from runner.commands import compose
    from runner.lr_find import find_lr, rates_of

    cfg = compose(["log.progress=false", *overrides]).cfg
    result = find_lr(cfg, rates_of(MIN_LR, MAX_LR, NUM), STEPS)
    best = result.best
    return {
        "best_lr": None if best is None else best[0],
        "largest_stable_lr": result.largest_stable,
        "optimizer_steps": NUM * STEPS,
    }


def lightning_lr_find() -> dict:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.tuner import Tuner
    from torch.utils.data import DataLoader, TensorDataset

    class WX(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor(0.0))
            self.lr = 0.01

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.weight * x, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    # Lightning reports through loggers, warnings and a progress bar of its own: all kept quiet
    logging.disable(logging.CRITICAL)
    x = torch.arange(1.0, 5.0)
    loader = DataLoader(TensorDataset(x, 2 * x), batch_size=4)  # the full batch, every step
    quiet = open(os.devnull, "w")  # noqa: SIM115
    with (
        tempfile.TemporaryDirectory() as root,
        contextlib.redirect_stderr(quiet),
        contextlib.redirect_stdout(quiet),
    ):
        trainer = pl.Trainer(
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        finder = Tuner(trainer).lr_find(
            WX(), train_dataloaders=loader, min_lr=MIN_LR, max_lr=MAX_LR, num_training=STEPS
        )
        suggested = finder.suggestion()
    quiet.close()
    lrs, losses = finder.results["lr"], finder.results["loss"]
    # where its ramp's smoothed loss was lowest: the nearest it has to our largest stable rate
    lowest = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    return {
        "suggested_lr": suggested,
        "lowest_loss_lr": lrs[lowest],
        "last_lr": lrs[-1],
        "optimizer_steps": len(lrs),
    }


def timed(fn, repeat: int) -> tuple[dict, list[float]]:
    result = fn()  # untimed: imports and first loads
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    ours, ours_s = timed(runner_lr_find, args.repeat)
    numpy, numpy_s = timed(lambda: runner_lr_find("loop=numpy"), args.repeat)
    assert numpy == ours, (numpy, ours)  # the loops agree: the same rates come out
    theirs, theirs_s = timed(lightning_lr_find, args.repeat)
    import lightning
    import torch

    rows = [
        ("runner-lr-find best lr", ours["best_lr"], ours_s, ours["optimizer_steps"]),
        ("runner-lr-find largest stable lr", ours["largest_stable_lr"], ours_s, None),
        ("runner-lr-find, loop=numpy", ours["best_lr"], numpy_s, ours["optimizer_steps"]),
        (
            "Lightning lr_find suggestion",
            theirs["suggested_lr"],
            theirs_s,
            theirs["optimizer_steps"],
        ),
        ("Lightning: lr at its lowest loss", theirs["lowest_loss_lr"], theirs_s, None),
        ("Lightning: lr where its ramp ended", theirs["last_lr"], theirs_s, None),
    ]
    print(f"w*x on x = 1..4, SGD from w = 0: exact rate 1/15 = {EXACT:.4g}, stable below 2/15 = "
          f"{EDGE:.4g}")  # fmt: skip
    print(f"{'finder':<34}{'lr':>10}{'wall s (median)':>18}{'optimizer steps':>18}")
    for name, lr, times, steps in rows:
        shown = "none" if lr is None else f"{lr:.4g}"
        steps_text = "" if steps is None else str(steps)
        print(f"{name:<34}{shown:>10}{statistics.median(times):>18.3f}{steps_text:>18}")
    out = {
        "problem": "w*x, x=1..4, y=2x, MSE, SGD from w=0, float32, full batch",
        "range": [MIN_LR, MAX_LR],
        "runner": ours | {"rates": NUM, "steps_per_rate": STEPS, "wall_s": ours_s},
        "runner_numpy_loop": {"wall_s": numpy_s},
        "lightning": theirs | {"num_training": STEPS, "wall_s": theirs_s},
        "exact_lr": EXACT,
        "largest_stable_lr_exact": EDGE,
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__,
                     "numpy": np.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    (REPO / "benchmarks" / "lr_find_lightning.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
