"""runner-check: the hand-derived gradients against autograd and finite differences, the loss's
autograd graph and the Jacobian of the predictions, on problems whose answers are known by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runner.check import Gap, check, main
from runner.commands import compose
from runner.models import LinearModel, ScalarModel
from runner.overrides import group_options

POINTS = ("model=linear", "data=points", "data.x=[[1,2],[3,4],[5,6]]", "data.y=[1,2,3]")


def run_check(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def data_for(model: str, loss: str = "mse") -> tuple[str, ...]:
    # the scalar model takes one feature; the others get three. The classification losses get
    # class ids: two classes for bce_logits, three (and three logits) for cross_entropy.
    if model == "module":  # a user's module: a test helper's, built for three features
        classes = ("data.task=classification",) if loss in ("bce_logits", "cross_entropy") else ()
        # cross_entropy: two logits for the two classes
        target = "TwoOutputs" if loss == "cross_entropy" else "TinyMLP"
        module = (f"model.target=tests.user_modules.{target}", "model.kwargs={n_features: 3}")
        return (*module, "data=synthetic", "data.n_features=3", *classes)
    features = () if model == "scalar" else ("data=synthetic", "data.n_features=3")
    if loss == "bce_logits":
        return ("data=synthetic", "data.task=classification", *features[1:])
    if loss == "cross_entropy":
        return (
            "data=synthetic", "data.task=classification", "data.n_classes=3",
            "data.n_features=3", "model.out_features=3",
        )  # fmt: skip
    return features


@pytest.mark.parametrize("loss", group_options("loss"))
@pytest.mark.parametrize("model", group_options("model"))
def test_every_shipped_model_and_loss_passes(capsys, model, loss):
    if model == "scalar" and loss == "cross_entropy":  # one output cannot hold 3 logits
        code, _, err = run_check(capsys, "model=scalar", "loss=cross_entropy", "data=points",
                                 "data.x=[1,2,3]", "data.y=[0,1,2]")  # fmt: skip
        assert code == 2
        assert "model.out_features=1: expected 3, one logit per class" in err
        return
    code, lines, err = run_check(capsys, f"model={model}", f"loss={loss}", *data_for(model, loss))
    assert code == 0, "\n".join(lines) + err
    # a user's module has no hand-derived gradient: autograd against finite differences
    verdict = "ok: autograd agrees" if model == "module" else "ok: hand-derived gradients agree"
    assert lines[-1].startswith(verdict)


def test_a_linear_model_without_bias_passes(capsys):
    code, lines, _ = run_check(capsys, "model=linear", "model.bias=false", *data_for("linear"))
    assert code == 0
    assert not any(line.startswith("bias") for line in lines)


def test_a_hand_gradient_off_by_a_factor_fails_naming_the_parameter(capsys, monkeypatch):
    backward = LinearModel.backward

    def bias_off(self, params, x, dpred):
        grads = backward(self, params, x, dpred)
        return grads | {"bias": grads["bias"] * 1.001}

    monkeypatch.setattr(LinearModel, "backward", bias_off)
    code, lines, _ = run_check(capsys, "model=linear", *data_for("linear"))
    assert code == 1
    verdict = lines[-1]
    assert verdict.startswith("FAILED: bias: hand vs autograd rel 0.000999")
    assert "bias: hand vs finite differences rel 0.000999" in verdict
    assert "weight" not in verdict and "loss value" not in verdict
    weight_row = next(line for line in lines if line.startswith("weight "))
    assert float(weight_row.split()[2]) < 1e-12  # its relative gap from autograd


def test_a_hand_gradient_of_another_shape_fails(capsys, monkeypatch):
    backward = LinearModel.backward

    def flat(self, params, x, dpred):  # (F,) where the weight is (1, F): it would broadcast
        grads = backward(self, params, x, dpred)
        return grads | {"weight": grads["weight"][0]}

    monkeypatch.setattr(LinearModel, "backward", flat)
    code, lines, _ = run_check(capsys, "model=linear", *data_for("linear"))
    assert code == 1
    assert lines[-1] == ("FAILED: weight: hand gradient of shape (3,), the parameter's is (1, 3)")


def test_a_wrong_loss_value_fails_against_torch(capsys, monkeypatch):
    # a value that disagrees with its own gradient: finite differences see it too
    from runner.losses import MSE

    value_and_grad = MSE.value_and_grad
    monkeypatch.setattr(
        MSE,
        "value_and_grad",
        lambda self, p, y: (lambda v, g: (v * 2, g))(*value_and_grad(self, p, y)),
    )
    code, lines, _ = run_check(capsys)
    assert code == 1
    assert lines[-1].startswith("FAILED: loss value: hand vs autograd rel 0.5 > 1e-08")
    assert "weight: hand vs finite differences rel 0.5 > 1e-05" in lines[-1]


def test_default_problem_graph_and_jacobian(capsys):
    code, lines, _ = run_check(capsys)
    assert code == 0
    # w*x on x = 1..4: d(pred_i)/dw = x_i; MSELoss over MulBackward0 over the leaf w
    assert "  weight: MseLossBackward0 -> MulBackward0 -> AccumulateGrad" in lines
    assert "  weight: shape (4,) [1, 2, 3, 4]" in lines
    assert lines[0] == "model=scalar loss=mse data=seed_line: 4 rows, float64, the full data"


def test_linear_models_jacobian_is_the_data_and_its_graph_has_two_paths():
    result = check(compose(POINTS).cfg, points=0)
    x = np.array([[1, 2], [3, 4], [5, 6]], dtype=float)
    assert result.jacobian["weight"].shape == (3, 1, 2)
    np.testing.assert_array_equal(result.jacobian["weight"][:, 0, :], x)
    np.testing.assert_array_equal(result.jacobian["bias"], np.ones((3, 1)))
    assert result.graph == {
        "weight": ["MseLossBackward0", "AddBackward0", "MvBackward0", "SelectBackward0",
                   "AccumulateGrad"],
        "bias": ["MseLossBackward0", "AddBackward0", "SelectBackward0", "AccumulateGrad"],
    }  # fmt: skip
    assert result.points == 1


def test_large_jacobians_are_a_shape_and_a_norm(capsys):
    code, lines, _ = run_check(capsys, *POINTS, "log.max_elements=4", "--points", "1")
    assert code == 0
    x = np.array([[1, 2], [3, 4], [5, 6]], dtype=float)
    norm = np.linalg.norm(x)
    assert f"  weight: shape (3, 1, 2), norm {norm:.6g} (more than log.max_elements=4 values)" in (
        lines
    )
    assert "  bias: shape (3, 1) [1, 1, 1]" in lines


def test_gaps_are_relative_to_the_larger_gradient_with_a_floor():
    assert Gap.between([1.0, -2.0], [1.0, -2.5]) == Gap(0.5, 0.5 / 2.5)
    assert Gap.between(0.0, 1e-9) == Gap(1e-9, 1e-9 / 1e-6)
    assert Gap.between(0.0, 0.0) == Gap(0.0, 0.0)
    nan = Gap(0.0, 0.0).worst(Gap.between(np.nan, 1.0))
    assert np.isnan(nan.rel)


def test_random_points_move_the_scalar_weight(capsys, monkeypatch):
    seen = []
    backward = ScalarModel.backward

    def spy(params, inputs, dpred):
        seen.append(float(params["weight"]))
        return backward(params, inputs, dpred)

    monkeypatch.setattr(ScalarModel, "backward", staticmethod(spy))
    code, _, _ = run_check(capsys, "--points", "2", "train.seed=5")
    assert code == 0
    rng = np.random.default_rng(5)
    assert seen == pytest.approx([0.0, rng.standard_normal(), rng.standard_normal()])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=foo"], "model=foo: expected one of linear, mlp, module, scalar"),
        (["--points", "-1"], "--points=-1: expected an integer >= 0"),
        (["train.dtype=float16"], "train.dtype=float16: expected one of float32, float64"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, _, err = run_check(capsys, *args)
    assert code == 2
    assert err == f"runner-check: error: {message}\n"


@pytest.mark.slow
def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "runner-check"
    assert script.exists(), "pip install -e . installs runner-check"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: runner-check [-h] [--points N] [OVERRIDES ...]")
