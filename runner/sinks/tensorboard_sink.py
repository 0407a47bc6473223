"""tensorboard/: the metric table as scalars (same keys as metrics.csv), histograms of
multi-element parameters and gradients, the resolved config as text, and an HParams session
written into the run's own directory. Built on runner.tb_writer, so it never imports torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from runner.metrics import Layout
from runner.tb_writer import EventWriter

METRICS = ("hparams/final_loss", "hparams/best_loss")
GROUPS = ("model", "data", "loss", "optimizer", "loop", "device")


class TensorBoardSink:
    def __init__(
        self,
        log_dir: Path,
        layout: Layout,
        config_yaml: str,
        hparams: Mapping[str, Any],
        resume_at: int | None = None,
    ) -> None:
        self.layout = layout
        if resume_at is None:
            for stale in log_dir.glob("events.out.tfevents.*"):  # from an attempt started over
                stale.unlink()
        self.writer = EventWriter(log_dir)
        if resume_at is None:
            self.writer.add_text("config", f"```yaml\n{config_yaml}```")
            # No experiment summary: TensorBoard then joins all runs of a logdir (a sweep) into
            # one HParams table, with the swept values marked as differing.
            self.writer.add_hparams(hparams)
        else:  # the earlier files keep config and HParams; hide what they logged past resume_at
            self.writer.continue_hparams_session()
            self.writer.add_restart(resume_at + 1)
        self._histograms = [n for n, s in layout.shapes.items() if int(np.prod(s)) > 1]
        self.writer.flush()

    def write(self, steps: np.ndarray, table: np.ndarray, rows: np.ndarray) -> None:
        self.writer.add_scalar_rows(steps, self.layout.columns, table)
        for name in self._histograms:
            for kind in ("param", "grad"):
                values = self.layout.block(rows, kind, name)
                self.writer.add_histogram_rows(f"{kind}/{name}", steps, values)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, summary: dict | None = None) -> None:
        if summary is not None and summary.get("steps_completed"):
            final, best = summary.get("final_loss"), summary.get("best_loss")
            self.writer.add_scalars(
                summary["steps_completed"],
                list(METRICS),
                [np.nan if v is None else v for v in (final, best)],
            )
            status = {"completed": "success", "running": "running"}.get(summary["status"])
            self.writer.end_hparams_session(status or "failure")
        self.writer.close()


def hparams_of(
    cfg: DictConfig, overrides: Sequence[str], choices: Mapping[str, str] | None
) -> dict[str, Any]:
    """The run's label in the HParams table: its group choices, key settings and overrides."""
    hparams: dict[str, Any] = {g: choices[g] for g in GROUPS if choices and g in choices}
    hparams["optimizer.lr"] = cfg.optimizer.lr
    hparams["train.steps"] = cfg.train.steps
    hparams["train.seed"] = cfg.train.seed
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        hparams[key] = _hparam_value(value)
    return hparams


def _hparam_value(text: str) -> Any:
    # HParams values are numbers, booleans or strings; anything else is shown as typed.
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
