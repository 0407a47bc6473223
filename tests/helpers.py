"""Test helpers: compose the real config, run it in tmp dirs, run the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from runner import schema
from runner.run import run

schema.register()

REPO = Path(__file__).resolve().parents[1]


def compose_config(*overrides: str) -> DictConfig:
    """The config `runner OVERRIDES...` would run, composed from the shipped conf/."""
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def train(out_dir: Path, *overrides: str) -> tuple[dict, pd.DataFrame | None]:
    """Runs run(cfg) in `out_dir` (progress bar off); returns its summary and metrics.csv."""
    summary = run(compose_config("log.progress=false", *overrides), out_dir, overrides)
    csv = out_dir / "metrics.csv"
    return summary, (pd.read_csv(csv) if csv.exists() else None)


def run_cli(*args: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """`python -m runner ARGS...` in a subprocess, as a user would run it."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | env
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )
