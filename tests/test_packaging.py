"""A regular (non-editable) install works: the wheel carries conf/ and experiments/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_wheel_carries_configs_and_presets_and_runs_without_the_source_tree(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in [
        "runner/conf/config.yaml",
        "runner/conf/optimizer/adam.yaml",
        "runner/conf/experiment/linear_regression.yaml",
        "runner/conf/experiment/quadratic_bowl.yaml",
    ]:
        assert shipped in names, shipped
    # every module of the source tree, the loops the run below does not use included
    modules = [p.relative_to(REPO).as_posix() for p in (REPO / "runner").rglob("*.py")]
    modules += [p.relative_to(REPO).as_posix() for p in (REPO / "hydra_plugins").rglob("*.py")]
    assert "runner/loops/optim_loop.py" in modules
    assert sorted(set(modules) - names) == []

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import runner; print(runner.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(site))  # the installed copy, not the clone
    # loop=numpy: the preset and the configs come from the wheel all the same, without a torch
    # import (a second or two) that shows nothing about packaging
    result = subprocess.run(
        [sys.executable, "-m", "runner", "experiment=quadratic_bowl", "loop=numpy",
         "hydra.run.dir=run"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["params"]["weight"] == pytest.approx(0.6**20, rel=1e-5)
