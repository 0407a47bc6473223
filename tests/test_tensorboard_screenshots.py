"""benchmarks/tensorboard_screenshots.py: TensorBoard, served over a run and a sweep, drawn by
headless Chromium (slow; skipped where no Chromium is installed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image

from tests.helpers import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "benchmarks" / "tensorboard_screenshots.py"
ORANGE = (245, 124, 0)  # TensorBoard's header bar


def load_script():
    spec = importlib.util.spec_from_file_location("tensorboard_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshots_of_the_tabs_a_user_opens(tmp_path):
    script = load_script()
    if script.find_chromium(None) is None:
        pytest.skip(f"no Chromium ({', '.join(script.CHROMIUMS)}) to draw with")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    # exit 0: the server said every session shows hparams/final_loss and the layout opens on loss
    assert done.returncode == 0, done.stderr
    expected = {
        f"{name}_{tab}.png": size for name, tabs in script.TABS.items() for tab, size in tabs
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    assert done.stdout.splitlines() == [f"wrote {tmp_path / name}" for name in expected]
    for name, (width, height) in expected.items():
        pixels = np.round(image.imread(tmp_path / name)[..., :3] * 255).astype(np.uint8)
        assert pixels.shape == (height, width, 3), name
        assert (pixels[10, : width // 2] == ORANGE).all(), name  # TensorBoard drew its page
        colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
        assert colours > 50, name  # text and charts, not an empty page


def test_no_chromium_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--chromium", str(tmp_path / "none"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"tensorboard_screenshots: no Chromium ({tmp_path / 'none'})"
    ]
    assert list(tmp_path.iterdir()) == []
