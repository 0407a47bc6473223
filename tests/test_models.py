"""Models, losses and data beyond the regression line (SPEC): linear with several outputs, the
MLP, bce_logits and cross_entropy, classification data. The hand-derived gradients against torch
autograd (the oracle), the three loops step for step, K jobs side by side against their own runs,
seed notebook 001's gradient, and the checks of targets against the loss and the model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from runner.data import points, sklearn_dataset, synthetic
from runner.errors import ConfigError
from runner.loops.autograd_loop import AutogradLoop
from runner.loops.numpy_loop import NumpyLoop
from runner.loops.optim_loop import OptimLoop
from runner.losses import L1, MSE, BCEWithLogits, CrossEntropy, Huber
from runner.metrics import Layout
from runner.models import LinearModel, MLPModel
from runner.run import build_problem
from runner.schema import TrainConf
from tests.helpers import cli_in_process, compose_config, train
from tests.test_parity import assert_loops_agree

LOOPS = {"numpy": NumpyLoop, "autograd": AutogradLoop, "optim": OptimLoop}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch's softmax kernels split even these tiny batches over its threads; on a machine busy
    with other work the threads wait for each other (10-40 ms a step). One thread computes the
    same numbers at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- hand-derived gradients against torch autograd ------------------------------------------
MODELS = {
    "linear-3": LinearModel(out_features=3),
    "linear-3-nobias": LinearModel(out_features=3, bias=False),
    "mlp-tanh-1": MLPModel(hidden=(4, 3), activation="tanh"),
    "mlp-relu-3": MLPModel(hidden=(5,), activation="relu", out_features=3),
    "mlp-sigmoid-3-nobias": MLPModel(hidden=(4,), activation="sigmoid", out_features=3, bias=False),
}
LOSSES = {"mse": MSE(), "l1": L1(), "huber": Huber(delta=0.5), "bce": BCEWithLogits(),
          "ce": CrossEntropy()}  # fmt: skip


def targets(loss, outputs: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Targets `loss` takes from a model of `outputs` outputs, for n rows."""
    if isinstance(loss, CrossEntropy):
        return rng.integers(0, outputs, n)
    shape = (n,) if outputs == 1 else (n, outputs)
    if isinstance(loss, BCEWithLogits):
        return rng.integers(0, 2, shape).astype(float)
    return rng.standard_normal(shape)


CASES = [
    (m, name)
    for m in MODELS
    for name in LOSSES
    if not (name == "ce" and MODELS[m].out_features == 1)  # cross_entropy needs C >= 2 logits
]


@pytest.mark.parametrize(("model_name", "loss_name"), CASES)
def test_hand_gradients_match_torch_autograd_with_and_without_a_job_axis(model_name, loss_name):
    model, loss = MODELS[model_name], LOSSES[loss_name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 4)) * 2
    y = targets(loss, model.out_features, 7, rng)
    jobs = [model.init_params(4, rng) for _ in range(2)]
    stacked = {k: np.stack([p[k] for p in jobs]) for k in jobs[0]}
    value, dpred = loss.value_and_grad(model.forward(stacked, x, np), y)
    grads = model.backward(stacked, x, dpred)
    for j, params in enumerate(jobs):
        leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        out = model.forward(leaves, torch.tensor(x), torch)
        torch_value = loss.torch_loss()(out, torch.tensor(y))
        torch_value.backward()
        assert value[j] == pytest.approx(torch_value.item(), rel=1e-12)
        for name, leaf in leaves.items():
            assert grads[name][j].shape == leaf.shape
            np.testing.assert_allclose(grads[name][j], leaf.grad.numpy(), rtol=1e-10, atol=1e-14)
        # one job alone (no job axis) computes its row of the K jobs
        alone = model.backward(params, x, loss.value_and_grad(model.forward(params, x, np), y)[1])
        for name in params:
            np.testing.assert_allclose(alone[name], grads[name][j], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_the_optim_loops_module_is_the_models_forward_with_its_parameter_names(model_name):
    model = MODELS[model_name]
    params = model.init_params(4, np.random.default_rng(1))
    module = model.module({k: torch.tensor(v) for k, v in params.items()})
    assert [name for name, _ in module.named_parameters()] == list(params)
    x = np.random.default_rng(2).standard_normal((6, 4))
    out = module(torch.tensor(x)).detach().numpy()
    want = model.forward(params, x, np)
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=1e-12)


def test_mlp_init_is_nn_linears_bound_per_layer_drawn_in_order():
    params = MLPModel(hidden=(8, 2), out_features=3).init_params(5, np.random.default_rng(0))
    assert list(params) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert [v.shape for v in params.values()] == [(8, 5), (8,), (2, 8), (2,), (3, 2), (3,)]
    rng = np.random.default_rng(0)  # the same draws, layer by layer, weight before bias
    for name, fan_in in (("0", 5), ("2", 8), ("4", 2)):
        bound = 1 / np.sqrt(fan_in)
        for kind in ("weight", "bias"):
            shape = params[f"{name}.{kind}"].shape
            np.testing.assert_array_equal(
                params[f"{name}.{kind}"], rng.uniform(-bound, bound, shape)
            )
    assert all(abs(v).max() <= 1 / np.sqrt(2) for v in params.values())
    fixed = MLPModel(hidden=(2,), init=0.5).init_params(3, np.random.default_rng(0))
    assert all((v == 0.5).all() for v in fixed.values())


def test_bce_logits_is_stable_for_large_logits():
    z = np.array([800.0, -800.0, 0.0])
    y = np.array([0.0, 1.0, 1.0])
    value, grad = BCEWithLogits().value_and_grad(z, y)
    want = torch.nn.BCEWithLogitsLoss()(torch.tensor(z), torch.tensor(y)).item()
    assert value == pytest.approx(want) == pytest.approx((800 + 800 + np.log(2)) / 3)
    np.testing.assert_allclose(grad, [1 / 3, -1 / 3, -0.5 / 3])


def test_accuracy_counts_signs_and_argmax():
    z = np.array([[2.0, -1.0], [-0.5, 3.0], [0.1, 0.0]])
    assert BCEWithLogits.accuracy(z, np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]), np) == 4 / 6
    assert CrossEntropy.accuracy(z, np.array([0, 1, 1]), np) == pytest.approx(2 / 3)
    assert CrossEntropy.accuracy(torch.tensor(z), torch.tensor([0, 1, 0]), torch).item() == 1.0


# --- the three loops step for step ----------------------------------------------------------
CLASSES3 = ("data=synthetic", "data.task=classification", "data.n_classes=3", "data.n_features=3",
            "data.n_samples=24", "data.noise=0.5", "model.out_features=3")  # fmt: skip
BINARY = ("data=synthetic", "data.task=classification", "data.n_features=3",
          "data.n_samples=24", "data.noise=1.0")  # fmt: skip
# two outputs of inline rows: multi-output regression, and two labels for bce_logits
ROWS_X = "data.x=[[0.5,1],[1,-2],[-1.5,0.3],[2,0.1],[0.2,-0.7],[-0.8,-1.2]]"
MULTI = ("data=points", ROWS_X, "data.y=[[1,0.5],[2,-1],[0,3],[-1,1],[0.5,0.5],[1,-2]]",
         "model.out_features=2")  # fmt: skip
LABELS = ("data=points", ROWS_X, "data.y=[[1,0],[1,1],[0,0],[0,1],[1,0],[0,0]]",
          "model.out_features=2")  # fmt: skip
MLP = ("model=mlp", "model.hidden=[5,3]")
PARITY = {
    "linear-mse-2out": ("model=linear", "loss=mse", *MULTI),
    "linear-l1-2out": ("model=linear", "loss=l1", *MULTI),
    "linear-huber-2out": ("model=linear", "loss=huber", "loss.delta=0.5", *MULTI),
    "linear-bce-2labels": ("model=linear", "loss=bce_logits", *LABELS),
    "linear-ce-val-clip": (
        "model=linear",
        "loss=cross_entropy",
        *CLASSES3,
        "data.val_fraction=0.25",
        "train.clip_grad_norm=0.5",
    ),
    "scalar-bce": ("model=scalar", "loss=bce_logits", *BINARY, "data.n_features=1"),
    "mlp-mse-tanh": (*MLP, "loss=mse", "data=synthetic", "data.n_features=2", "data.n_samples=16"),
    "mlp-l1-relu-2out": (*MLP, "model.activation=relu", "loss=l1", *MULTI),
    "mlp-huber-sigmoid": (
        *MLP,
        "model.activation=sigmoid",
        "loss=huber",
        "data=synthetic",
        "data.n_features=2",
        "data.n_samples=16",
    ),
    "mlp-bce-relu-batches": (
        *MLP,
        "model.activation=relu",
        "loss=bce_logits",
        *BINARY,
        "train.batch_size=8",
        "data.val_fraction=0.25",
    ),
    "mlp-ce-tanh-accumulate": (
        *MLP,
        "loss=cross_entropy",
        *CLASSES3,
        "train.batch_size=6",
        "train.accumulate=2",
    ),
    "mlp-bce-2labels-nobias": (*MLP, "model.bias=false", "loss=bce_logits", *LABELS),
}


def loop_tables(overrides) -> tuple[dict[str, pd.DataFrame], Layout]:
    """Each loop's metric table over one Problem built from the composed config."""
    cfg = compose_config(*overrides)
    train_conf: TrainConf = OmegaConf.to_object(cfg.train)
    problem = build_problem(cfg, train_conf, "cpu")
    layout = Layout({k: np.shape(v) for k, v in problem.init.items()}, 64, problem.extras)
    out = {}
    for name, cls in LOOPS.items():
        records = list(cls(problem).steps(1, train_conf.steps))
        # each record's extras in the order of the columns (clip, val_loss, accuracy, ...)
        assert all(tuple(r.extras) == problem.extras for r in records), name
        rows = cls.to_host(records)[0]
        out[name] = pd.DataFrame(layout.table(rows), columns=layout.columns)
    return out, layout


@pytest.mark.parametrize(
    ("case", "dtype"),
    [(case, "float64") for case in PARITY]
    + [
        (case, "float32") for case in ("linear-ce-val-clip", "mlp-bce-relu-batches", "mlp-mse-tanh")
    ],
)
def test_the_three_loops_agree_step_for_step(case, dtype):
    args = (*PARITY[case], "optimizer=adam", "optimizer.lr=0.01", "train.steps=100")
    frames, layout = loop_tables((*args, f"train.dtype={dtype}"))
    assert_loops_agree(frames, {"float64": 1e-10, "float32": 1e-5}[dtype])
    classifies = "bce_logits" in " ".join(args) or "cross_entropy" in " ".join(args)
    assert ("accuracy" in layout.columns) == classifies
    if classifies:
        accuracy = frames["numpy"]["accuracy"]
        assert accuracy.between(0, 1).all() and accuracy.iloc[-1] > accuracy.iloc[0]
        assert ("val_accuracy" in layout.columns) == ("data.val_fraction=0.25" in args)
    if case == "linear-ce-val-clip":
        tail = layout.columns[layout.columns.index("grad_norm") + 1 :]
        assert tail == ["grad_norm_before_clip", "val_loss", "accuracy", "val_accuracy"]


# --- K jobs side by side ----------------------------------------------------------------------
VECTORIZED = [
    "linear-bce-2labels", "linear-ce-val-clip", "linear-huber-2out", "scalar-bce",
    "mlp-mse-tanh", "mlp-bce-relu-batches", "mlp-ce-tanh-accumulate", "mlp-l1-relu-2out",
]  # fmt: skip


@pytest.mark.parametrize("loop", list(LOOPS))
@pytest.mark.parametrize("case", VECTORIZED)
def test_k_jobs_side_by_side_equal_their_own_runs(loop, case):
    cfg = compose_config(*PARITY[case], "optimizer=adam", "train.steps=12", "train.dtype=float64")
    problem = build_problem(cfg, OmegaConf.to_object(cfg.train), "cpu")
    lrs = np.array([0.001, 0.01, 0.1])
    cls = LOOPS[loop]
    together = cls.to_host(list(cls(dataclasses.replace(problem, lrs=lrs)).steps(1, 12)))
    for j in range(len(lrs)):
        alone = cls.to_host(
            list(cls(dataclasses.replace(problem, lrs=lrs[j : j + 1])).steps(1, 12))
        )
        np.testing.assert_allclose(together[j], alone[0], rtol=1e-12, atol=1e-15)


# --- seed notebook 001 ------------------------------------------------------------------------
def test_seed_001_trains_with_the_notebooks_gradient_in_every_loop():
    # The notebook: x = ones(5), y = zeros(3), w = randn(5, 3), b = randn(3),
    # loss = binary_cross_entropy_with_logits(x @ w + b, y); loss.backward().
    gen = torch.Generator().manual_seed(1)
    x, y = torch.ones(5), torch.zeros(3)
    w = torch.randn(5, 3, generator=gen, requires_grad=True)
    b = torch.randn(3, generator=gen, requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(torch.matmul(x, w) + b, y).backward()

    cfg = compose_config("experiment=autodiff_graph", "train.steps=3")
    problem = build_problem(cfg, OmegaConf.to_object(cfg.train), "cpu")
    assert problem.x.shape == (1, 5) and problem.y.shape == (1, 3)
    # the same starting values: nn.Linear's weight is the notebook's w transposed
    init = {"weight": w.detach().numpy().T.copy(), "bias": b.detach().numpy().copy()}
    problem = dataclasses.replace(problem, init=init)
    for cls in LOOPS.values():
        first = next(iter(cls(problem).steps(1, 3)))
        grads = {k: np.asarray(torch.as_tensor(v).detach()) for k, v in first.grads.items()}
        np.testing.assert_allclose(grads["weight"], w.grad.numpy().T, rtol=1e-6)
        np.testing.assert_allclose(grads["bias"], b.grad.numpy(), rtol=1e-6)
        # by hand: dL/db = (sigmoid(z) - y) / 3, and dL/dW[o, i] = dL/db[o] * x[i]
        z = (x @ w + b).detach().numpy()
        np.testing.assert_allclose(grads["bias"], 1 / (1 + np.exp(-z)) / 3, rtol=1e-6)


def test_the_autodiff_graph_preset_runs_and_its_loss_falls(tmp_path):
    summary, metrics = train(tmp_path, "experiment=autodiff_graph", "log.tensorboard=false")
    assert summary["status"] == "completed" and summary["steps_completed"] == 20
    assert np.shape(summary["params"]["weight"]) == (3, 5) and len(summary["params"]["bias"]) == 3
    assert metrics["loss"].is_monotonic_decreasing
    # one sample, three zero labels: accuracy counts the logits below zero
    assert summary["final_accuracy"] == metrics["accuracy"].iloc[-1] == 1.0
    assert summary["best_accuracy"] == 1.0 and metrics["accuracy"].iloc[0] < 1.0


@pytest.mark.slow
def test_the_tanh_mlp_ends_far_below_the_best_line(tmp_path):
    mlp, _ = train(tmp_path / "mlp", "experiment=tanh_mlp", "log.tensorboard=false")
    line, _ = train(tmp_path / "line", "experiment=tanh_mlp", "model=linear",
                    "log.tensorboard=false")  # fmt: skip
    assert mlp["final_loss"] < 1e-4
    assert line["final_loss"] == pytest.approx(0.1902, abs=1e-4)  # the least-squares line's
    assert line["final_loss"] / mlp["final_loss"] > 1000


# --- outputs of a classification run, and resume --------------------------------------------
def test_a_classification_run_logs_accuracy_to_csv_and_summary(tmp_path):
    summary, metrics = train(tmp_path, *MLP, "loss=cross_entropy", *CLASSES3, "loop=numpy",
                             "optimizer=adam", "optimizer.lr=0.05", "train.steps=60",
                             "data.val_fraction=0.25")  # fmt: skip
    assert list(metrics.columns[-3:]) == ["val_loss", "accuracy", "val_accuracy"]
    assert metrics.columns[-4] == "grad_norm"
    # 18 training rows: every accuracy is a count of 18ths
    assert np.allclose(metrics["accuracy"] * 18, np.round(metrics["accuracy"] * 18), atol=1e-5)
    assert summary["final_accuracy"] == pytest.approx(metrics["accuracy"].iloc[-1])
    assert summary["best_accuracy"] == pytest.approx(metrics["accuracy"].max())
    assert summary["final_val_accuracy"] == pytest.approx(metrics["val_accuracy"].iloc[-1])
    assert summary["best_val_accuracy"] == pytest.approx(metrics["val_accuracy"].max())
    assert summary["best_accuracy"] > 0.8
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["best_accuracy"] == summary["best_accuracy"]
    from tests.test_outputs import events

    tb = events(tmp_path)
    for tag in ("accuracy", "val_accuracy"):
        values = [e.value for e in tb.Scalars(tag)]
        np.testing.assert_allclose(values, metrics[tag], rtol=1e-6)
    best = tb.Scalars("hparams/best_accuracy")[-1].value
    assert best == pytest.approx(summary["best_accuracy"])


@pytest.mark.parametrize("loop", list(LOOPS))
def test_an_mlp_classification_run_resumes_byte_identically(tmp_path, monkeypatch, loop):
    from tests.test_resume import LOOP_CLASSES, _crash_after

    args = [f"loop={loop}", *MLP, "loss=cross_entropy", *CLASSES3, "optimizer=adam",
            "train.steps=30", "train.checkpoint_every=10", "log.tensorboard=false"]  # fmt: skip
    straight, _ = train(tmp_path / "straight", *args)
    with monkeypatch.context() as patch:
        _crash_after(patch, *LOOP_CLASSES[loop], step=15)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tmp_path / "stopped", *args)
    resumed, _ = train(tmp_path / "stopped", *args, "train.resume=true")
    want = (tmp_path / "straight" / "metrics.csv").read_bytes()
    assert (tmp_path / "stopped" / "metrics.csv").read_bytes() == want
    for key in ("params", "final_accuracy", "best_accuracy", "best_loss"):
        assert resumed[key] == straight[key]


def test_large_mlp_parameters_are_logged_as_norms_and_the_final_line_stays_short(tmp_path):
    from runner.jobs import final_line

    summary, metrics = train(tmp_path, "model=mlp", "model.hidden=[32]", "train.steps=3",
                             "loop=numpy", "log.tensorboard=false")  # fmt: skip
    assert "param_norm/0.weight" in metrics.columns and "param/0.bias/0" not in metrics.columns
    assert "param/2.bias" in metrics.columns  # one element: its value
    np.testing.assert_allclose(
        metrics["param_norm/0.weight"].iloc[-1], np.linalg.norm(summary["params"]["0.weight"])
    )
    line = final_line(summary, tmp_path)
    assert "param_norm/0.weight=" in line and len(line) < 250


# --- data -------------------------------------------------------------------------------------
def test_synthetic_binary_labels_follow_the_threshold_of_the_line():
    data = synthetic(50, 2, [1.0, -2.0], 0.5, 0.3, seed=4, task="classification")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 2))
    want = (x @ [1.0, -2.0] + 0.5 + 0.3 * rng.standard_normal(50) > 0).astype(float)
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, want)
    assert data.n_classes == 2 and 10 < data.y.sum() < 40


def test_synthetic_classes_are_the_argmax_of_a_drawn_linear_rule():
    data = synthetic(60, 3, 2.0, 0.5, 0.1, seed=7, task="classification", n_classes=4)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((60, 3))
    scores = x @ rng.standard_normal((3, 4))
    want = np.argmax(scores + 0.1 * rng.standard_normal((60, 4)), axis=1)
    np.testing.assert_array_equal(data.y, want)
    assert data.n_classes == 4 and set(data.y) == {0, 1, 2, 3}
    with pytest.raises(ConfigError, match=r"data\.task=clustering: expected regression \|"):
        synthetic(5, 1, 1.0, 0.0, 0.1, 0, task="clustering")
    with pytest.raises(ConfigError, match=r"data\.n_classes=1: expected an integer >= 2"):
        synthetic(5, 1, 1.0, 0.0, 0.1, 0, task="classification", n_classes=1)


def test_points_take_rows_of_targets():
    data = points([[1, 2], [3, 4]], [[0, 0, 0], [1, 1, 1]])
    assert data.y.shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("iris", (150, 4), 3), ("wine", (178, 13), 3), ("breast_cancer", (569, 30), 2),
     ("diabetes", (442, 10), None)],
)  # fmt: skip
def test_sklearn_toy_sets_load_without_download(name, shape, classes):
    data = sklearn_dataset(name)
    assert data.x.shape == shape and data.n_classes == classes
    if classes:
        assert set(np.unique(data.y)) == set(range(classes))


def test_a_missing_scikit_learn_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    with pytest.raises(ConfigError) as err:
        sklearn_dataset("iris")
    assert str(err.value) == (
        "data=sklearn: expected scikit-learn installed: pip install 'runner[datasets]'"
    )


def test_iris_trains_with_cross_entropy(tmp_path):
    summary, _ = train(tmp_path, "data=sklearn", "model=linear", "model.out_features=3",
                       "loss=cross_entropy", "optimizer=adam", "optimizer.lr=0.1",
                       "train.steps=100", "loop=numpy", "log.tensorboard=false")  # fmt: skip
    assert summary["final_accuracy"] > 0.9


# --- targets against the loss and the model ---------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("loss=cross_entropy", "model=linear", "model.out_features=2", *CLASSES3[:-1]),
         "model.out_features=2: expected 3, one logit per class (loss=cross_entropy; the "
         "targets are class ids 0..2)"),
        (("loss=cross_entropy", "model=linear", "model.out_features=4"),  # seed_line: 2, 4, ...
         "model.out_features=4: expected 9, one logit per class"),
        (("loss=cross_entropy", "model=linear", "model.out_features=2", "data=points",
          "data.x=[1,2]", "data.y=[0,0.5]"),
         "loss=cross_entropy: expected class ids 0, 1, 2, ... as targets; row 2 holds 0.5"),
        (("loss=mse", "model=linear", "model.out_features=3", *CLASSES3[:-1]),
         "model.out_features=3: expected 1, the targets' values per row (loss=mse); class ids: "
         "loss=cross_entropy"),
        (("loss=mse", "model=mlp", "model.out_features=3", *MULTI[:-1]),
         "model.out_features=3: expected 2, the targets' values per row (loss=mse)"),
        (("loss=bce_logits",), "loss=bce_logits: expected targets in [0, 1]; row 1 holds 2"),
        (("loss=cross_entropy", "model=linear", *MULTI),
         "loss=cross_entropy: expected one class id per row; the targets have 2 columns"),
        (("model=mlp", "model.activation=gelu"),
         "model.activation=gelu: expected tanh | relu | sigmoid"),
        (("model=mlp", "model.hidden=[4,0]"), "model.hidden=[4, 0]: expected a list of widths"),
        (("model=linear", "model.out_features=0"), "model.out_features=0: expected an integer"),
        (("data=sklearn", "data.name=mnist"),
         "data.name=mnist: expected iris | wine | breast_cancer | diabetes"),
    ],
)  # fmt: skip
def test_targets_that_do_not_fit_the_loss_or_the_model_are_one_line(tmp_path, args, message):
    with pytest.raises(ConfigError) as err:
        train(tmp_path, *args)
    assert str(err.value).startswith(message)


def test_a_target_mismatch_exits_2_with_one_line(tmp_path):
    result = cli_in_process("loss=bce_logits", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "runner: error: loss=bce_logits: expected targets in [0, 1]; row 1 holds 2"
    ]


# --- runner-predict ---------------------------------------------------------------------------
def _predict_lines(capsys, run_dir, *inputs: str) -> list[str]:
    from runner.predict import main

    assert main([str(run_dir), *inputs]) == 0
    return capsys.readouterr().out.split()


@pytest.mark.parametrize("loop", ["numpy", "optim"])
def test_predict_prints_the_class_and_the_softmax_of_an_mlp(tmp_path, capsys, loop):
    run_dir = tmp_path / "run"
    args = (
        *MLP,
        "loss=cross_entropy",
        *CLASSES3,
        f"loop={loop}",
        "train.steps=30",
        "train.dtype=float64",
        "log.tensorboard=false",
        f"hydra.run.dir={run_dir}",
    )
    result = cli_in_process(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    params = json.loads((run_dir / "summary.json").read_text())["params"]
    x = np.array([[0.5, -1.0, 2.0], [-1.0, 0.0, 0.3]])
    h = np.tanh(x @ np.array(params["0.weight"]).T + params["0.bias"])
    h = np.tanh(h @ np.array(params["2.weight"]).T + params["2.bias"])
    logits = h @ np.array(params["4.weight"]).T + params["4.bias"]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    lines = _predict_lines(capsys, run_dir, "0.5,-1,2", "-1,0,0.3")
    for line, row, p in zip(lines, logits, probs, strict=True):
        values = line.split(",")
        assert int(values[0]) == np.argmax(row)
        np.testing.assert_allclose([float(v) for v in values[1:]], p, rtol=1e-12)


def test_predict_prints_each_label_and_its_sigmoid_for_bce_logits(tmp_path, capsys):
    run_dir = tmp_path / "run"
    result = cli_in_process("model=linear", "loss=bce_logits", *LABELS, "loop=numpy",
                            "train.steps=20", "log.tensorboard=false",
                            f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    params = json.loads((run_dir / "summary.json").read_text())["params"]
    z = np.array([3.0, -4.0]) @ np.array(params["weight"]).T + params["bias"]  # (2,) logits
    (line,) = _predict_lines(capsys, run_dir, "3,-4")
    values = line.split(",")
    assert [int(v) for v in values[:2]] == [int(v > 0) for v in z]
    np.testing.assert_allclose([float(v) for v in values[2:]], 1 / (1 + np.exp(-z)), rtol=1e-6)


def test_lr_find_trains_an_mlp_classifier_at_every_rate(tmp_path):
    from runner.lr_find import find_lr

    cfg = compose_config(*MLP, "loss=cross_entropy", *CLASSES3, "loop=autograd",
                         "log.progress=false", "train.dtype=float64")  # fmt: skip
    problem = build_problem(cfg, OmegaConf.to_object(cfg.train), "cpu")
    module = problem.model.module({k: torch.tensor(v) for k, v in problem.init.items()})
    at_init = torch.nn.CrossEntropyLoss()(module(torch.tensor(problem.x)), torch.tensor(problem.y))
    result = find_lr(cfg, [1e-4, 0.3, 1e4], steps=20)
    assert result.initial_loss == pytest.approx(at_init.item(), rel=1e-12)
    table = result.table.set_index("lr")
    assert table.loc[0.3, "stable"] and table.loc[0.3, "final_loss"] < 0.8 * result.initial_loss
    assert not table.loc[1e4, "stable"]
    assert table.loc[1e-4, "final_loss"] == pytest.approx(result.initial_loss, rel=1e-2)


def test_class_ids_from_a_csv_column_train_with_cross_entropy(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("a,b,label\n0,1,0\n1,0,1\n2,2,2\n0,0.5,0\n1.5,0,1\n2,2.5,2\n")
    summary, metrics = train(tmp_path / "run", "data=csv", f"data.path={path}",
                             "data.target=label", "model=linear", "model.out_features=3",
                             "loss=cross_entropy", "loop=numpy", "optimizer=adam",
                             "optimizer.lr=0.1", "train.steps=150",
                             "log.tensorboard=false")  # fmt: skip
    assert summary["final_accuracy"] == 1.0 and metrics["accuracy"].iloc[0] < 1.0
    with pytest.raises(ConfigError, match=r"model\.out_features=2: expected 3, one logit"):
        train(tmp_path / "two", "data=csv", f"data.path={path}", "data.target=label",
              "model=linear", "model.out_features=2", "loss=cross_entropy")  # fmt: skip


@pytest.mark.slow
def test_the_vectorized_launcher_trains_an_mlp_classifier_as_its_own_runs(tmp_path):
    args = (*MLP, "loss=cross_entropy", *CLASSES3, "loop=optim", "optimizer=adam",
            "train.steps=15", "train.dtype=float64", "log.tensorboard=false",
            "data.val_fraction=0.25")  # fmt: skip
    sweep = tmp_path / "sweep"
    result = cli_in_process("-m", "optimizer.lr=0.01,0.1", *args, "hydra/launcher=vectorized",
                            f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "vectorized launcher:" not in result.stdout  # batched, not job by job
    for job, lr in ((0, "0.01"), (1, "0.1")):
        alone, metrics = train(tmp_path / lr, *args, f"optimizer.lr={lr}")
        batched = pd.read_csv(sweep / f"{job}_optimizer.lr={lr}" / "metrics.csv")
        assert list(batched.columns) == list(metrics.columns)
        np.testing.assert_allclose(batched.to_numpy(), metrics.to_numpy(), rtol=1e-10)
        summary = json.loads((sweep / f"{job}_optimizer.lr={lr}" / "summary.json").read_text())
        assert summary["best_val_accuracy"] == alone["best_val_accuracy"]


def test_runner_check_shows_seed_001s_graph(capsys):
    # the notebook prints z.grad_fn = AddBackward0 and loss.grad_fn =
    # BinaryCrossEntropyWithLogitsBackward0; runner-check walks the same chain to each parameter
    from runner.check import main

    assert main(["experiment=autodiff_graph", "--points", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bias = next(line for line in lines if line.startswith("  bias: "))
    assert bias.split(": ")[1].startswith("BinaryCrossEntropyWithLogitsBackward0 -> AddBackward0")
    assert "Jacobian of the predictions (shape (1, 3))" in "\n".join(lines)
    assert lines[-1].startswith("ok: hand-derived gradients agree")
