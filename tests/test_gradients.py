"""The NumPy loop's hand-derived gradients against torch autograd (the oracle) and against
central finite differences, for every loss and model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.losses import L1, MSE, Huber
from runner.models import LinearModel, ScalarModel

LOSSES = [MSE(), L1(), Huber(delta=1.0), Huber(delta=0.25)]
MODELS = [ScalarModel(init=None), LinearModel(init=None), LinearModel(init=None, bias=False)]


def problem(model, seed=0):
    rng = np.random.default_rng(seed)
    n_features = 1 if isinstance(model, ScalarModel) else 3
    x = rng.standard_normal((7, n_features))
    y = rng.standard_normal(7) * 2
    return model.init_params(n_features, rng), x, y


def numpy_value_and_grads(model, loss, params, x, y):
    inputs = model.inputs(x)
    value, dpred = loss.value_and_grad(model.forward(params, inputs, np), y)
    return float(value), model.backward(params, inputs, dpred)


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_numpy_gradients_match_torch_autograd(model, loss):
    params, x, y = problem(model)
    value, grads = numpy_value_and_grads(model, loss, params, x, y)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    inputs = model.inputs(torch.tensor(x))
    torch_value = loss.torch_loss()(model.forward(leaves, inputs, torch), torch.tensor(y))
    torch_value.backward()
    assert value == pytest.approx(torch_value.item(), rel=1e-12)
    for name, leaf in leaves.items():
        assert grads[name].shape == leaf.shape
        np.testing.assert_allclose(grads[name], leaf.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_numpy_gradients_match_finite_differences(model, loss):
    params, x, y = problem(model, seed=1)
    _, grads = numpy_value_and_grads(model, loss, params, x, y)
    h = 1e-6
    for name, value in params.items():
        for index in np.ndindex(value.shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][index] += h
            minus[name][index] -= h
            numeric = (
                numpy_value_and_grads(model, loss, plus, x, y)[0]
                - numpy_value_and_grads(model, loss, minus, x, y)[0]
            ) / (2 * h)
            assert grads[name][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8), (name, index)


def test_l1_gradient_is_zero_where_prediction_equals_target():
    # torch's sign(0) = 0; the hand-derived gradient must agree at the kink
    _, dpred = L1().value_and_grad(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    np.testing.assert_array_equal(dpred, [0.0, 0.5])


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    value, dpred = Huber(delta=1.0).value_and_grad(np.array([0.5, 3.0]), np.zeros(2))
    assert value == pytest.approx((0.5 * 0.25 + (3.0 - 0.5)) / 2)
    np.testing.assert_allclose(dpred, [0.25, 0.5])


def test_linear_default_init_follows_nn_linear_bounds():
    # nn.Linear(F, 1) draws weight and bias uniformly within +-1/sqrt(F)
    params = LinearModel(init=None).init_params(16, np.random.default_rng(3))
    assert params["weight"].shape == (1, 16) and params["bias"].shape == (1,)
    assert np.abs(params["weight"]).max() <= 0.25 and np.abs(params["bias"]).max() <= 0.25
    assert np.abs(params["weight"]).max() > 0.15  # spread over the range, not a constant


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", LOSSES, ids=repr)
@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_numpy_values_and_gradients_keep_the_run_dtype(model, loss, dtype):
    # The numpy loop relies on this (it casts nothing): a float32 run stays float32 throughout,
    # for one model and for K models at once.
    params, x, y = problem(model)
    params = {k: np.asarray(v, dtype) for k, v in params.items()}
    x, y = x.astype(dtype), y.astype(dtype)
    value, dpred = loss.value_and_grad(model.forward(params, model.inputs(x), np), y)
    grads = model.backward(params, model.inputs(x), dpred)
    assert value.dtype == dpred.dtype == dtype
    assert all(g.dtype == dtype and g.shape == params[k].shape for k, g in grads.items())
    stacked = {k: np.stack([v, v]) for k, v in params.items()}  # K = 2
    values, dpreds = loss.value_and_grad(model.forward(stacked, model.inputs(x), np), y)
    grads = model.backward(stacked, model.inputs(x), dpreds)
    assert values.dtype == dtype and values.shape == (2,)
    assert all(g.dtype == dtype and g.shape == stacked[k].shape for k, g in grads.items())
