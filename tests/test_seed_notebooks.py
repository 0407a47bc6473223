"""The seed notebooks' experiments, against values derived by hand.

Notebook 000: w*x on x = 1..4, y = 2x, w0 = 0, SGD lr 0.01. The MSE gradient is
dL/dw = mean(2x(wx - y)) = 15 (w - 2), so w_k - 2 = -2 * 0.85^k and the loss before step k is
L_k = 7.5 (w_{k-1} - 2)^2 = 30 * 0.7225^(k-1): 30.0, 21.675, 15.6601875, ...; w_10 = 1.60625119...
Notebook 002: theta^2 from theta = 1 with lr 0.2: theta_k = (1 - 0.4)^k = 0.6^k.
"""

from __future__ import annotations

import numpy as np
import pytest

LOOPS = ["numpy", "autograd", "optim"]


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-6)])
@pytest.mark.parametrize("loop", LOOPS)
def test_notebook_000_trajectory(runs, loop, dtype, rtol):
    summary, metrics = runs(f"experiment={loop}_gd", f"train.dtype={dtype}")
    k = np.arange(1, 11)
    np.testing.assert_allclose(metrics["step"], k)
    np.testing.assert_allclose(metrics["loss"], 30.0 * 0.7225 ** (k - 1), rtol=rtol)
    np.testing.assert_allclose(metrics["param/weight"], 2 - 2 * 0.85**k, rtol=rtol)
    np.testing.assert_allclose(metrics["grad/weight"], -30 * 0.85 ** (k - 1), rtol=rtol)
    assert metrics["loss"][:3].tolist() == pytest.approx([30.0, 21.675, 15.6601875], rel=rtol)
    assert summary["params"]["weight"] == pytest.approx(1.6062511913, rel=max(rtol, 1e-10))
    assert summary["status"] == "completed" and summary["steps_completed"] == 10
    assert summary["loop"] == loop


def test_numpy_preset_uses_the_mean_gradient_not_the_notebooks_sum(runs):
    # The notebook's np.dot(2*x, y_pred - y).mean() is 4x the MSE gradient: 120 at w = 0.
    _, metrics = runs("experiment=numpy_gd")
    assert metrics["grad/weight"][0] == pytest.approx(-30.0)


@pytest.mark.parametrize("loop", LOOPS)
def test_notebook_002_quadratic_bowl(runs, loop):
    summary, metrics = runs("experiment=quadratic_bowl", f"loop={loop}", "train.dtype=float64")
    k = np.arange(1, 21)
    np.testing.assert_allclose(metrics["param/weight"], 0.6**k, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss"], 0.6 ** (2 * (k - 1)), rtol=1e-12)
    assert summary["params"]["weight"] == pytest.approx(3.656158440062973e-05, rel=1e-12)


def test_notebook_000_linear_regression_fits_the_line(runs):
    summary, metrics = runs("experiment=linear_regression")
    assert len(metrics) == 1000
    assert list(metrics.columns[:5]) == ["step", "loss", "lr", "param/weight", "param/bias"]
    # the notebook reached loss ~3.6e-4 and w ~ 2.016 from a random init
    assert summary["final_loss"] < 0.05
    assert summary["params"]["weight"][0][0] == pytest.approx(2.0, abs=0.15)
    assert metrics["loss"].iloc[-1] < metrics["loss"].iloc[0] / 100
