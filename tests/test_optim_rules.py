"""The shared update rules against torch.optim, the oracle, with numpy and with torch as `xp`."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runner import optim_rules
from runner.optim_rules import (
    ASGD,
    LBFGS,
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    NAdam,
    RAdam,
    Rates,
    RMSprop,
    Rprop,
    for_jobs,
)

STEPS = 120
SHAPES = {"scalar": (), "row": (1, 3), "single": (1,)}
RTOL = {np.float64: 1e-10, np.float32: 1e-5}
# Relative errors are measured against max(|expected|, FLOOR). The params start O(1) and move by
# O(lr) steps, so an entry near zero is the cancellation of O(0.1..1) terms and inherits their
# absolute rounding error, about ulp(1): 1.2e-7 in float32, which is 1e-5 of only 0.012. Below
# FLOOR the check therefore turns absolute, rtol * FLOOR (1e-6 in float32, 1e-11 in float64;
# the observed worst cases are 1.8e-7 and 2.8e-16), rather than demanding sub-ulp agreement.
FLOOR = 0.1

# Every option that changes a rule, one at a time, plus a few combinations.
RULES = [
    pytest.param(SGD(lr=0.05), id="sgd"),
    pytest.param(SGD(lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(SGD(lr=0.05, momentum=0.9, dampening=0.3), id="sgd-dampening"),
    pytest.param(SGD(lr=0.05, momentum=0.9, nesterov=True), id="sgd-nesterov"),
    pytest.param(SGD(lr=0.05, weight_decay=0.1), id="sgd-weight_decay"),
    pytest.param(SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1), id="sgd-nesterov-wd"),
    pytest.param(Adam(lr=0.05), id="adam"),
    pytest.param(Adam(lr=0.05, weight_decay=0.1), id="adam-weight_decay"),
    pytest.param(Adam(lr=0.05, amsgrad=True), id="adam-amsgrad"),
    # beta1 < 0.5 takes torch.lerp's other formula; betas arrive as a list from configs
    pytest.param(Adam(lr=0.05, betas=[0.3, 0.9]), id="adam-small-betas"),
    pytest.param(AdamW(lr=0.05), id="adamw"),
    pytest.param(AdamW(lr=0.05, weight_decay=0.2), id="adamw-weight_decay"),
    pytest.param(AdamW(lr=0.05, amsgrad=True), id="adamw-amsgrad"),
    pytest.param(RMSprop(lr=0.01), id="rmsprop"),
    pytest.param(RMSprop(lr=0.01, momentum=0.5), id="rmsprop-momentum"),
    pytest.param(RMSprop(lr=0.01, centered=True), id="rmsprop-centered"),
    pytest.param(RMSprop(lr=0.01, centered=True, momentum=0.5), id="rmsprop-centered-momentum"),
    pytest.param(RMSprop(lr=0.01, weight_decay=0.1), id="rmsprop-weight_decay"),
    pytest.param(Adagrad(lr=0.1), id="adagrad"),
    pytest.param(Adagrad(lr=0.1, lr_decay=0.05), id="adagrad-lr_decay"),
    pytest.param(Adagrad(lr=0.1, initial_accumulator_value=0.5), id="adagrad-initial_acc"),
    pytest.param(Adagrad(lr=0.1, weight_decay=0.1), id="adagrad-weight_decay"),
    pytest.param(NAdam(lr=0.05), id="nadam"),
    pytest.param(NAdam(lr=0.05, momentum_decay=0.05, weight_decay=0.1), id="nadam-weight_decay"),
    pytest.param(
        NAdam(lr=0.05, weight_decay=0.2, decoupled_weight_decay=True), id="nadam-decoupled"
    ),
    # rho_t passes 5 at step 6: the first steps are unrectified, the later ones rectified
    pytest.param(RAdam(lr=0.05), id="radam"),
    pytest.param(RAdam(lr=0.05, weight_decay=0.1), id="radam-weight_decay"),
    pytest.param(
        RAdam(lr=0.05, weight_decay=0.2, decoupled_weight_decay=True), id="radam-decoupled"
    ),
    pytest.param(RAdam(lr=0.05, betas=[0.3, 0.9]), id="radam-small-betas"),
    pytest.param(Adamax(lr=0.05), id="adamax"),
    pytest.param(Adamax(lr=0.05, betas=[0.3, 0.9], weight_decay=0.1), id="adamax-options"),
    pytest.param(Adadelta(), id="adadelta"),
    pytest.param(Adadelta(lr=0.5, rho=0.5, eps=1e-4, weight_decay=0.1), id="adadelta-options"),
    pytest.param(Rprop(), id="rprop"),
    # a small largest step size: the clamp from above is hit, and etas other than torch's
    pytest.param(Rprop(lr=0.02, etas=[0.3, 1.5], step_sizes=[1e-3, 0.05]), id="rprop-options"),
    pytest.param(ASGD(lr=0.05), id="asgd"),
    # averaging from step 31 on, a strong lambd and weight decay
    pytest.param(ASGD(lr=0.05, lambd=0.05, alpha=0.5, t0=30, weight_decay=0.1), id="asgd-t0"),
    # maximize: every rule that has it negates the gradient first; lr and weights keep the
    # ascent on the quartic bowl finite over the steps
    pytest.param(SGD(lr=0.002, momentum=0.5, maximize=True), id="sgd-maximize"),
    pytest.param(Adam(lr=0.05, maximize=True), id="adam-maximize"),
    pytest.param(AdamW(lr=0.05, amsgrad=True, maximize=True), id="adamw-maximize"),
    pytest.param(RMSprop(lr=0.01, maximize=True), id="rmsprop-maximize"),
    pytest.param(Adagrad(lr=0.1, maximize=True), id="adagrad-maximize"),
    pytest.param(NAdam(lr=0.05, maximize=True), id="nadam-maximize"),
    pytest.param(RAdam(lr=0.05, maximize=True), id="radam-maximize"),
    pytest.param(Adamax(lr=0.05, maximize=True), id="adamax-maximize"),
    pytest.param(Adadelta(maximize=True), id="adadelta-maximize"),
    pytest.param(Rprop(lr=0.001, step_sizes=[1e-6, 0.01], maximize=True), id="rprop-maximize"),
    pytest.param(ASGD(lr=0.003, t0=50, maximize=True), id="asgd-maximize"),
]
MANUAL_CLASSES = (SGD, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax, Adadelta, Rprop, ASGD)
# torch's per-parameter scalar state that a rule derives from the step instead of keeping it
DERIVED_STATE = {ASGD: {"mu"}}


# --- a small problem with a gradient that keeps changing ---------------------------------------
def make_problem(dtype):
    """Initial params and the gradient of sum(a/2 (w-t)^2 + b/4 w^4) plus per-step noise.

    The gradient is elementwise, so numpy and torch compute it bit for bit alike and the
    comparison sees only the optimizers; the noise keeps it from settling to zero.
    """
    rng = np.random.default_rng(1234)
    init, consts = {}, {}
    for name, shape in SHAPES.items():
        init[name] = rng.uniform(-1, 1, shape).astype(dtype)
        consts[name] = {
            "a": rng.uniform(0.5, 2.0, shape).astype(dtype),
            "t": rng.uniform(-1, 1, shape).astype(dtype),
            "noise": rng.uniform(-0.3, 0.3, (STEPS, *shape)).astype(dtype),
        }
    return init, consts


def gradients(params, consts, step, as_array):
    """The problem's gradient at `params` for 0-based `step`; `as_array` converts constants."""
    grads = {}
    for name, w in params.items():
        c = consts[name]
        a, t, noise = as_array(c["a"]), as_array(c["t"]), as_array(c["noise"][step, ...])
        grads[name] = a * (w - t) + 0.1 * w * w * w + noise
    return grads


def run_oracle(rule, init, consts):
    """Trajectory of params, and the final state, under torch.optim."""
    params = {name: torch.tensor(value, requires_grad=True) for name, value in init.items()}
    optimizer = rule.torch_optimizer(list(params.values()))
    assert optimizer.defaults["foreach"] is False
    trajectory = []
    for step in range(STEPS):
        with torch.no_grad():
            grads = gradients(params, consts, step, torch.from_numpy)
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()
        trajectory.append({name: p.detach().numpy().copy() for name, p in params.items()})
    state = {
        name: {
            key: value.numpy().copy() if isinstance(value, torch.Tensor) else value
            for key, value in optimizer.state[p].items()
            if value is not None
        }
        for name, p in params.items()
    }
    return trajectory, state


def run_rule(rule, init, consts, xp):
    """Trajectory of params, and the final state, under the shared rule with `xp`."""
    if xp is torch:
        params = {name: torch.from_numpy(value.copy()) for name, value in init.items()}
        as_array, to_numpy = torch.from_numpy, lambda x: x.numpy().copy()
    else:
        params = {name: value.copy() for name, value in init.items()}
        as_array, to_numpy = (lambda x: x), np.copy
    state = rule.init_state(params, xp)
    trajectory = []
    with torch.no_grad():
        for step in range(STEPS):
            grads = gradients(params, consts, step, as_array)
            params, state = rule.update(params, grads, state, xp)
            trajectory.append({name: to_numpy(p) for name, p in params.items()})
    return trajectory, state


def assert_close(actual, expected, rtol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    err = np.abs(actual - expected) / np.maximum(np.abs(expected), FLOOR)
    assert err.max(initial=0.0) <= rtol, f"{what}: relative error {err.max():.3g} > {rtol:g}"


# --- agreement with torch.optim -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("rule", RULES)
def test_rule_matches_torch_optim_step_for_step(rule, dtype):
    init, consts = make_problem(dtype)
    expected, expected_state = run_oracle(rule, init, consts)
    moved = max(np.abs(expected[-1][n] - init[n]).max() for n in init)
    assert moved > 0.05, "the problem should move the params noticeably"

    for xp in (np, torch):
        trajectory, state = run_rule(rule, init, consts, xp)
        for step, (got, want) in enumerate(zip(trajectory, expected, strict=True), start=1):
            for name in init:
                label = f"{xp.__name__} step {step} {name}"
                assert_close(got[name], want[name], RTOL[dtype], label)

        for name, param in init.items():
            ours, theirs = state[name], expected_state[name]
            assert ours["step"] == STEPS and isinstance(ours["step"], int)
            derived = DERIVED_STATE.get(type(rule), set())
            assert set(ours) - {"step"} == set(theirs) - {"step"} - derived
            if "step" in theirs:
                assert theirs["step"] == STEPS
            for key in set(ours) - {"step"}:
                value = ours[key]
                array = value.numpy() if xp is torch else value
                assert isinstance(value, torch.Tensor if xp is torch else np.ndarray), key
                assert array.dtype == param.dtype and array.shape == param.shape, key
                # torch's per-parameter scalars (NAdam's mu_product, ASGD's eta) are 0-d
                want = np.broadcast_to(theirs[key], param.shape)
                assert_close(array, want, RTOL[dtype], f"{xp.__name__} state {name}.{key}")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_params_keep_their_dtype_shape_and_array_type(rule, dtype):
    for xp in (np, torch):
        params = {name: xp.asarray(np.full(shape, 0.5, dtype)) for name, shape in SHAPES.items()}
        grads = {name: p * 0.25 - 1 for name, p in params.items()}
        state = rule.init_state(params, xp)
        for _ in range(2):
            params, state = rule.update(params, grads, state, xp)
        for name, shape in SHAPES.items():
            p = params[name]
            assert isinstance(p, torch.Tensor if xp is torch else np.ndarray), (xp, name)
            assert tuple(p.shape) == shape
            assert str(p.dtype).endswith(np.dtype(dtype).name), (xp, name, p.dtype)


# --- a few values worked out by hand -----------------------------------------------------------
def test_sgd_momentum_first_two_steps_by_hand():
    rule = SGD(lr=0.1, momentum=0.9, dampening=0.5)
    params = {"w": np.array(1.0)}
    state = rule.init_state(params, np)
    # step 1: the buffer is the gradient itself (no dampening): buf = 2, w = 1 - 0.1 * 2
    params, state = rule.update(params, {"w": np.array(2.0)}, state, np)
    assert state["w"]["momentum_buffer"] == pytest.approx(2.0, abs=0)
    assert params["w"] == pytest.approx(0.8, rel=1e-15)
    # step 2: buf = 0.9 * 2 + (1 - 0.5) * (-1) = 1.3, w = 0.8 - 0.1 * 1.3
    params, state = rule.update(params, {"w": np.array(-1.0)}, state, np)
    assert state["w"]["momentum_buffer"] == pytest.approx(1.3, rel=1e-15)
    assert params["w"] == pytest.approx(0.67, rel=1e-15)


@pytest.mark.parametrize(
    "rule", [Adam(lr=0.01), AdamW(lr=0.01, weight_decay=0.0), Adagrad(lr=0.01)]
)
def test_first_step_moves_each_param_by_lr_times_sign_of_grad(rule):
    # Adam: m_hat = g and v_hat = g^2 after bias correction; Adagrad: sum = g^2.
    params = {"w": np.array([[0.5, -0.2, 3.0]])}
    grads = {"w": np.array([[2.0, -0.03, 5e-3]])}
    new, _ = rule.update(params, grads, rule.init_state(params, np), np)
    np.testing.assert_allclose(params["w"] - new["w"], 0.01 * np.sign(grads["w"]), rtol=1e-5)


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_beta1_zero_makes_exp_avg_exactly_the_gradient(xp):
    # torch.lerp switches formulas so that weight 1 returns `end` exactly; so must the rule.
    rule = Adam(betas=[0.0, 0.999])
    params = {"w": xp.asarray(np.array([0.3, -0.7, 1e-3]))}
    state = rule.init_state(params, xp)
    for grad in ([0.1, 0.2, 0.3], [-1 / 3, 2 / 7, 1e-9]):
        grads = {"w": xp.asarray(np.array(grad))}
        params, state = rule.update(params, grads, state, xp)
        assert (state["w"]["exp_avg"] == grads["w"]).all()


def test_adamw_decays_weights_by_one_minus_lr_times_weight_decay():
    rule = AdamW(lr=0.1, weight_decay=0.5)
    params = {"w": np.array([1.0, -2.0])}
    zero = {"w": np.zeros(2)}  # a zero gradient leaves only the decoupled decay
    new, _ = rule.update(params, zero, rule.init_state(params, np), np)
    np.testing.assert_array_equal(new["w"], params["w"] * (1 - 0.1 * 0.5))


def test_adagrad_lr_decay_divides_the_rate_from_the_second_step():
    rule = Adagrad(lr=0.1, lr_decay=0.5)
    params = {"w": np.array(0.0)}
    state = rule.init_state(params, np)
    one = {"w": np.array(1.0)}
    params, state = rule.update(params, one, state, np)  # clr = 0.1, sum = 1
    assert params["w"] == pytest.approx(-0.1, rel=1e-9)
    params, state = rule.update(params, one, state, np)  # clr = 0.1 / 1.5, sum = 2
    assert params["w"] == pytest.approx(-0.1 - 0.1 / 1.5 / math.sqrt(2), rel=1e-9)


# --- purity ------------------------------------------------------------------------------------
def snapshot(tree):
    """A deep copy of a dict tree of arrays, as numpy, to compare against later."""
    if isinstance(tree, dict):
        return {k: snapshot(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.numpy().copy()
    return copy.deepcopy(tree)


def assert_same(tree, snap):
    if isinstance(tree, dict):
        assert tree.keys() == snap.keys()
        for k in tree:
            assert_same(tree[k], snap[k])
    else:
        np.testing.assert_array_equal(snapshot(tree), snap)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_update_does_not_mutate_its_inputs_nor_alias_them(rule, xp):
    params = {name: xp.asarray(np.full(shape, 0.5)) for name, shape in SHAPES.items()}
    state = rule.init_state(params, xp)
    for _ in range(2):  # the first step has special cases (SGD's buffer), so check two
        grads = {name: xp.asarray(p * 0.5 - 1) for name, p in params.items()}
        before = snapshot({"params": params, "grads": grads, "state": state})
        new_params, new_state = rule.update(params, grads, state, xp)
        assert_same({"params": params, "grads": grads, "state": state}, before)
        assert new_state is not state and all(new_state[n] is not state[n] for n in state)

        # A caller reusing its arrays in place must not reach into the returned ones.
        after = snapshot({"params": new_params, "state": new_state})
        for array in [*params.values(), *grads.values()]:
            array *= 0
        assert_same({"params": new_params, "state": new_state}, after)
        params, state = new_params, new_state


def test_param_without_gradient_is_left_alone():
    rule = Adam()
    params = {"a": np.ones(2), "b": np.ones(2)}
    state = rule.init_state(params, np)
    new, new_state = rule.update(params, {"a": np.ones(2), "b": None}, state, np)
    np.testing.assert_array_equal(new["b"], params["b"])
    assert new_state["b"]["step"] == 0 and new_state["a"]["step"] == 1


# --- the numpy path never needs torch ----------------------------------------------------------
def test_numpy_path_never_imports_torch():
    code = """
import sys
import numpy as np
from runner import optim_rules as r

rules = [
    r.SGD(momentum=0.9, nesterov=True, weight_decay=0.1),
    r.SGD(momentum=0.9, dampening=0.2),
    r.Adam(weight_decay=0.1, amsgrad=True),
    r.AdamW(betas=[0.3, 0.9], amsgrad=True),
    r.RMSprop(momentum=0.5, centered=True, weight_decay=0.1),
    r.Adagrad(lr_decay=0.1, initial_accumulator_value=0.1, weight_decay=0.1, maximize=True),
    r.NAdam(weight_decay=0.1, decoupled_weight_decay=True),
    r.RAdam(weight_decay=0.1),
    r.Adamax(weight_decay=0.1),
    r.Adadelta(weight_decay=0.1),
    r.Rprop(),
    r.ASGD(t0=1, weight_decay=0.1),
]
assert {type(rule) for rule in rules} == {
    cls for cls in vars(r).values() if isinstance(cls, type) and getattr(cls, "manual", False)
    and not cls.__name__.startswith("_")
}
for rule in rules:
    rule.check()
    params = {"w": np.ones((1, 3)), "b": np.array(0.5, dtype=np.float32)}
    state = rule.init_state(params, np)
    for _ in range(3):
        grads = {name: p - 0.25 for name, p in params.items()}
        params, state = rule.update(params, grads, state, np)
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "torch")
assert not loaded, loaded
"""
    # the directory holding the `runner` package under test, wherever it was imported from
    root = Path(optim_rules.__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --- hyperparameter checks ---------------------------------------------------------------------
# (rule, field, value, whether torch.optim's constructor rejects it too)
INVALID = [
    (SGD(lr=0.0), "lr", 0.0, False),  # torch accepts lr=0; it cannot train, so we refuse it
    (SGD(lr=-0.1), "lr", -0.1, True),
    (SGD(momentum=-0.5), "momentum", -0.5, True),
    (SGD(weight_decay=-1.0), "weight_decay", -1.0, True),
    (SGD(nesterov=True), "nesterov", True, True),
    (SGD(nesterov=True, momentum=0.9, dampening=0.1), "nesterov", True, True),
    (Adam(lr=-1.0), "lr", -1.0, True),
    (Adam(lr=math.nan), "lr", math.nan, True),
    (Adam(eps=-1e-8), "eps", -1e-8, True),
    (Adam(betas=[1.0, 0.999]), "betas", [1.0, 0.999], True),
    (Adam(betas=[0.9, -0.1]), "betas", [0.9, -0.1], True),
    (Adam(weight_decay=-0.1), "weight_decay", -0.1, True),
    (AdamW(betas=(0.9, 1.0)), "betas", [0.9, 1.0], True),
    (AdamW(eps=-1.0), "eps", -1.0, True),
    (AdamW(weight_decay=-0.01), "weight_decay", -0.01, True),
    (RMSprop(lr=0.0), "lr", 0.0, False),
    (RMSprop(alpha=-0.1), "alpha", -0.1, True),
    (RMSprop(eps=-1.0), "eps", -1.0, True),
    (RMSprop(momentum=-0.1), "momentum", -0.1, True),
    (RMSprop(weight_decay=-0.1), "weight_decay", -0.1, True),
    (Adagrad(lr=-0.01), "lr", -0.01, True),
    (Adagrad(lr_decay=-0.1), "lr_decay", -0.1, True),
    (Adagrad(eps=-1.0), "eps", -1.0, True),
    (Adagrad(weight_decay=-0.1), "weight_decay", -0.1, True),
    (Adagrad(initial_accumulator_value=-0.1), "initial_accumulator_value", -0.1, True),
    (NAdam(lr=-1.0), "lr", -1.0, True),
    (NAdam(betas=[0.9, 1.0]), "betas", [0.9, 1.0], True),
    (NAdam(eps=-1.0), "eps", -1.0, True),
    (NAdam(weight_decay=-0.1), "weight_decay", -0.1, True),
    (NAdam(momentum_decay=-0.1), "momentum_decay", -0.1, True),
    (RAdam(lr=0.0), "lr", 0.0, False),
    (RAdam(betas=[-0.1, 0.9]), "betas", [-0.1, 0.9], True),
    (RAdam(eps=-1.0), "eps", -1.0, True),
    (RAdam(weight_decay=-0.1), "weight_decay", -0.1, True),
    (Adamax(lr=-0.1), "lr", -0.1, True),
    (Adamax(betas=[1.0, 0.9]), "betas", [1.0, 0.9], True),
    (Adamax(eps=-1.0), "eps", -1.0, True),
    (Adamax(weight_decay=-0.1), "weight_decay", -0.1, True),
    (Adadelta(lr=0.0), "lr", 0.0, False),
    (Adadelta(rho=1.5), "rho", 1.5, True),
    (Adadelta(rho=-0.1), "rho", -0.1, True),
    (Adadelta(eps=-1.0), "eps", -1.0, True),
    (Adadelta(weight_decay=-0.1), "weight_decay", -0.1, True),
    (Rprop(lr=-0.01), "lr", -0.01, True),
    (Rprop(etas=[2, 0.5]), "etas", [2, 0.5], True),
    (Rprop(etas=[0.5, 1.0]), "etas", [0.5, 1.0], True),
    (Rprop(etas=[0.0, 1.2]), "etas", [0.0, 1.2], True),
    (Rprop(etas=[0.5]), "etas", [0.5], False),  # torch fails with an IndexError
    # torch does not check step sizes
    (Rprop(step_sizes=[1.0, 0.1]), "step_sizes", [1.0, 0.1], False),
    (Rprop(step_sizes=[-1.0, 50]), "step_sizes", [-1.0, 50], False),
    (ASGD(lr=-0.1), "lr", -0.1, True),
    (ASGD(weight_decay=-0.1), "weight_decay", -0.1, True),
    (ASGD(lambd=-0.1), "lambd", -0.1, False),  # torch does not check lambd
    (LBFGS(lr=0.0), "lr", 0.0, False),
    (LBFGS(max_iter=0), "max_iter", 0, False),
    (LBFGS(history_size=0), "history_size", 0, False),
    (LBFGS(line_search_fn="armijo"), "line_search_fn", "armijo", False),  # torch fails in step()
]


@pytest.mark.parametrize(("rule", "field", "value", "torch_rejects"), INVALID)
def test_check_reports_each_invalid_field(rule, field, value, torch_rejects):
    problems = rule.check()
    assert [p[0] for p in problems] == [field]
    (_, reported, allowed), *_ = problems
    assert reported == value or (isinstance(value, float) and math.isnan(value))
    assert isinstance(allowed, str) and allowed
    if torch_rejects:
        with pytest.raises(ValueError):
            rule.torch_optimizer([torch.zeros(1, requires_grad=True)])


@pytest.mark.parametrize("cls", [*MANUAL_CLASSES, LBFGS])
def test_defaults_are_valid_and_equal_torch_except_sgd_lr(cls):
    rule = cls()
    assert rule.check() == []
    torch_defaults = inspect.signature(getattr(torch.optim, cls.__name__)).parameters
    for field in dataclasses.fields(cls):
        ours, theirs = getattr(rule, field.name), torch_defaults[field.name].default
        if cls is SGD and field.name == "lr":
            assert (ours, theirs) == (0.01, 1e-3)
        else:
            assert ours == theirs, field.name


def test_valid_non_default_settings_pass_check():
    assert SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1).check() == []
    assert Adam(betas=[0.0, 0.5], eps=0.0).check() == []
    assert RMSprop(alpha=0.0, momentum=0.9, centered=True).check() == []
    assert Adadelta(rho=0.0).check() == [] and Adadelta(rho=1.0).check() == []
    assert Rprop(etas=[0.01, 10], step_sizes=[0, 0]).check() == []
    assert ASGD(lambd=0.0, alpha=-1.0, t0=-5.0).check() == []
    assert LBFGS(max_iter=1, history_size=1, line_search_fn="strong_wolfe").check() == []


def test_betas_from_a_config_list_become_a_tuple():
    rule = AdamW(betas=[0, 0.99])
    assert rule.betas == (0, 0.99) and hash(rule) == hash(AdamW(betas=(0, 0.99)))
    optimizer = rule.torch_optimizer([torch.zeros(1, requires_grad=True)])  # int 0 is fine too
    assert optimizer.defaults["betas"] == (0.0, 0.99)


def test_manual_flags():
    assert all(cls.manual for cls in MANUAL_CLASSES)
    assert LBFGS.manual is False


# --- LBFGS: the optim loop only ----------------------------------------------------------------
def test_lbfgs_builds_torch_lbfgs_with_its_settings():
    rule = LBFGS(lr=0.5, max_iter=7, history_size=3, line_search_fn="strong_wolfe")
    optimizer = rule.torch_optimizer([torch.zeros(2, requires_grad=True)])
    assert isinstance(optimizer, torch.optim.LBFGS)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["max_iter"], group["history_size"], group["line_search_fn"]) == (
        0.5,
        7,
        3,
        "strong_wolfe",
    )


def test_lbfgs_has_no_manual_rule():
    rule = LBFGS()
    params = {"w": np.zeros(2)}
    with pytest.raises(NotImplementedError, match="optim loop"):
        rule.init_state(params, np)
    with pytest.raises(NotImplementedError, match="optim loop"):
        rule.update(params, {"w": np.ones(2)}, {"w": {"step": 0}}, np)


# --- one rule for K jobs -----------------------------------------------------------------------
# One rule of each class, with the options that use lr in their own ways (decoupled decay,
# Rprop's initial step sizes, ASGD's eta as a power of lr); each job at its own rate.
JOB_RULES = [
    pytest.param(SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1), id="sgd"),
    pytest.param(Adam(lr=0.05, amsgrad=True, weight_decay=0.1), id="adam"),
    pytest.param(AdamW(lr=0.05, weight_decay=0.2), id="adamw"),
    pytest.param(RMSprop(lr=0.01, centered=True, momentum=0.5), id="rmsprop"),
    pytest.param(Adagrad(lr=0.1, lr_decay=0.05), id="adagrad"),
    pytest.param(NAdam(lr=0.05, weight_decay=0.2, decoupled_weight_decay=True), id="nadam"),
    pytest.param(RAdam(lr=0.05, weight_decay=0.2, decoupled_weight_decay=True), id="radam"),
    pytest.param(Adamax(lr=0.05, weight_decay=0.1), id="adamax"),
    pytest.param(Adadelta(weight_decay=0.1), id="adadelta"),
    pytest.param(Rprop(lr=0.02, etas=[0.3, 1.5], step_sizes=[1e-3, 0.05]), id="rprop"),
    pytest.param(ASGD(lr=0.05, lambd=0.05, alpha=0.5, t0=30, weight_decay=0.1), id="asgd"),
]


def run_jobs_side_by_side(rule, lrs, init, consts, xp):
    """Trajectory and final state of K jobs under one rule, params with a leading job axis."""
    stacked = {name: np.stack([value] * len(lrs)) for name, value in init.items()}
    return run_rule(for_jobs(rule, lrs, SHAPES), stacked, consts, xp)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("rule", JOB_RULES)
def test_jobs_side_by_side_equal_each_job_alone(rule, dtype):
    lrs = rule.lr * np.array([1.0, 0.3, 2.5])
    init, consts = make_problem(dtype)
    for xp in (np, torch):
        # NumPy's elementwise arithmetic does not depend on the shape: a job computes exactly
        # what it computes alone. torch's kernels may take another vectorized path for another
        # size, so there the dtype's tolerance holds (in practice they agree exactly too).
        rtol = 0.0 if xp is np else RTOL[dtype]
        together, state = run_jobs_side_by_side(rule, lrs, init, consts, xp)
        for j, lr in enumerate(lrs):
            alone, alone_state = run_rule(dataclasses.replace(rule, lr=float(lr)), init, consts, xp)
            for step, (got, want) in enumerate(zip(together, alone, strict=True), start=1):
                for name in init:
                    label = f"{xp.__name__} job {j} step {step} {name}"
                    assert_close(got[name][j], want[name], rtol, label)
            for name in init:
                for key, value in alone_state[name].items():
                    ours = state[name][key]
                    if key == "step":
                        assert ours == value
                    else:
                        row = ours[j].numpy() if xp is torch else ours[j]
                        assert_close(row, snapshot(value), rtol, f"state {name}.{key}")


def test_rates_compute_each_rate_as_its_python_float_would():
    # ASGD's next eta, lr / (1 + lambd * lr * t) ** alpha, meets the rates twice and raises
    # them to a power: every job's value is the one its own float computes, bit for bit.
    values = np.array([0.05, 0.015, 0.125, 3e-7])
    rates = Rates(values.reshape(4, 1))
    got = rates / (1 + 0.05 * rates * 17.0) ** 0.75
    want = [lr / (1 + 0.05 * lr * 17.0) ** 0.75 for lr in values.tolist()]
    assert got.values.shape == (4, 1) and got.values.ravel().tolist() == want
