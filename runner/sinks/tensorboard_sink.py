"""tensorboard/: the metric table as scalars (same keys as metrics.csv), a custom-scalars layout
that opens on loss, histograms of large parameters and gradients, the resolved config as text,
and an HParams session and experiment written into the run's own directory. Built on
runner.tb_writer, so it never imports torch."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig
from omegaconf._utils import get_omega_conf_dumper

from runner.jobs import swept_keys
from runner.metrics import Layout
from runner.tb_writer import HISTOGRAM_BUCKETS, EventWriter

GROUPS = ("model", "data", "loss", "optimizer", "scheduler", "loop", "device")

# Histograms only of parameters (and their gradients) of at least one element per bucket: fewer
# make a few lone spikes, and a small parameter's elements are scalar curves already.
HISTOGRAM_MIN_ELEMENTS = HISTOGRAM_BUCKETS

# The summary values that become HParams metrics (hparams/<key>, last value at the final step):
# final_loss, best_loss, best_val_loss, final_accuracy, ... whichever the summary holds.
_METRIC_KEY = re.compile(r"(final|best)_(\w+_)?(loss|accuracy)")

# The curves the Custom Scalars tab opens on, as (chart, tags), in this order; the tags present
# in a run are drawn, those it lacks are left out (val_loss with held-out rows, the norm before
# clipping with train.clip_grad_norm).
_LEADING_CHARTS = (
    ("loss", ("loss", "val_loss")),
    ("lr", ("lr",)),
    ("grad_norm", ("grad_norm", "grad_norm_before_clip")),
)


@dataclass(frozen=True)
class HParams:
    """A run's row in TensorBoard's HParams table: its `values`, and the keys marked as
    differing between runs (`differing`), which the table shows as its first columns."""

    values: dict[str, Any]
    differing: frozenset[str] = frozenset()


class TensorBoardSink:
    def __init__(
        self,
        log_dir: Path,
        layout: Layout,
        config: Mapping[str, Any],
        hparams: HParams,
        resume_at: int | None = None,
    ) -> None:
        self.layout = layout
        self.hparams = hparams
        if resume_at is None:
            for stale in log_dir.glob("events.out.tfevents.*"):  # from an attempt started over
                stale.unlink()
        self.writer = EventWriter(log_dir)
        if resume_at is None:
            self.writer.add_text("config", f"```yaml\n{config_text(config, hparams)}```")
            self.writer.add_custom_scalars(scalars_layout(layout.columns))
            self.writer.add_hparams(hparams.values)
        else:  # the earlier files keep config, layout and HParams; hide what they logged later
            self.writer.continue_hparams_session()
            self.writer.add_restart(resume_at + 1)
        self._histograms = [
            n for n, s in layout.shapes.items() if math.prod(s) >= HISTOGRAM_MIN_ELEMENTS
        ]
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
            metrics = hparams_metrics(summary)
            # Written at the end, when the summary says which metrics the run has; until then
            # TensorBoard lists every scalar tag as a metric.
            self.writer.add_hparams_experiment(
                self.hparams.values, list(metrics), self.hparams.differing
            )
            if metrics:
                step = summary["steps_completed"]
                self.writer.add_scalars(step, list(metrics), list(metrics.values()))
            status = {"completed": "success", "running": "running"}.get(summary["status"])
            self.writer.end_hparams_session(status or "failure")
        self.writer.close()


def hparams_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The HParams metrics of a run, from its summary: `hparams/<key>` for each loss or accuracy
    it holds as final_* or best_* (final_loss, best_loss, best_val_loss, ...); NaN for null."""
    return {
        f"hparams/{key}": math.nan if value is None else float(value)
        for key, value in summary.items()
        if _METRIC_KEY.fullmatch(key) and (value is None or isinstance(value, (int, float)))
    }


def scalars_layout(columns: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """The Custom Scalars tab for a run logging `columns`: loss (with val_loss), lr and
    grad_norm first (category "loss"), then one chart per parameter (all its elements, or its
    norm) in "param", the same per gradient in "grad", then any other tag. Every chart names
    its tags exactly (anchored regexes)."""
    charts: dict[str, list[str]] = {}
    for chart, tags in _LEADING_CHARTS:
        if present := [t for t in tags if t in columns]:
            charts[chart] = present
    drawn = {t for tags in charts.values() for t in tags}
    for column in columns:
        if column not in drawn:  # param/weight/0, param/weight/1 -> chart param/weight
            charts.setdefault(re.sub(r"/\d+$", "", column), []).append(column)
    layout: dict[str, dict[str, list[str]]] = {}
    for chart, tags in charts.items():
        # param/bias and param_norm/weight in one category "param", and so on
        category = "loss" if chart in dict(_LEADING_CHARTS) else chart.split("/")[0]
        category = category.removesuffix("_norm")
        layout.setdefault(category, {})[chart] = [f"^{re.escape(t)}$" for t in tags]
    return layout


def config_text(config: Mapping[str, Any], hparams: HParams | None = None) -> str:
    """The resolved config as YAML, without `_target_` keys (which class builds a part is the
    code's business, and so is model=module's `_recursive_`), under a comment naming the option
    picked in each config group."""
    text = yaml.dump(_plain(config), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    picked = [f"{g}: {hparams.values[g]}" for g in GROUPS if hparams and g in hparams.values]
    return f"# {', '.join(picked)}\n{text}" if picked else text


_BUILD_KEYS = ("_target_", "_recursive_")


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # without libyaml: slower
    """OmegaConf.to_yaml's text, strings quoted as it quotes them ('y' and '1e-3' stay strings
    when OmegaConf reads them back), emitted by libyaml: a tenth of OmegaConf.to_yaml's time,
    which was a fifth of a short run's."""


_Dumper.add_representer(str, get_omega_conf_dumper().str_representer)


def _plain(node: Any) -> Any:
    """`node` in YAML's plain types, without _BUILD_KEYS; an enum (train.dtype) by its name."""
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items() if k not in _BUILD_KEYS}
    if isinstance(node, Sequence) and not isinstance(node, str):
        return [_plain(v) for v in node]
    return node.name if isinstance(node, Enum) else node


def hparams_of(
    cfg: DictConfig, overrides: Sequence[str], choices: Mapping[str, str] | None
) -> HParams:
    """The run's label in the HParams table: its group choices, key settings and overrides.
    Marked as differing: the keys its sweep varies, or for a single run (or a search that draws
    its values) the keys its command line sets."""
    values: dict[str, Any] = {g: choices[g] for g in GROUPS if choices and g in choices}
    values["optimizer.lr"] = cfg.optimizer.lr
    values["train.steps"] = cfg.train.steps
    values["train.seed"] = cfg.train.seed
    keys = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        values[key] = _hparam_value(value)
        keys.append(key)
    swept = swept_keys()
    return HParams(values, frozenset(k for k in keys if not swept or k in swept))


def _hparam_value(text: str) -> Any:
    # HParams values are numbers, booleans or strings; anything else is shown as typed.
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
