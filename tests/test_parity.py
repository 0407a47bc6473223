"""The three loops agree step for step (SPEC: float64 to 1e-10 relative, float32 to 1e-5, over at
least 100 steps) for every optimizer and option that changes its rule, every loss, both models,
mini-batches and several features. Loss, every parameter and every gradient are compared."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from runner.loops.autograd_loop import AutogradLoop
from runner.loops.numpy_loop import NumpyLoop
from runner.loops.optim_loop import OptimLoop
from runner.metrics import Layout
from runner.run import build_problem
from runner.schema import TrainConf
from tests.helpers import compose_config

LOOPS = {"numpy": NumpyLoop, "autograd": AutogradLoop, "optim": OptimLoop}
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}

OPTIMIZERS = {
    "sgd": ["optimizer=sgd", "optimizer.lr=0.02"],
    "sgd_momentum": ["optimizer=sgd", "optimizer.momentum=0.9"],
    "sgd_dampening": ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.dampening=0.5"],
    "sgd_nesterov": ["optimizer=sgd", "optimizer.momentum=0.8", "optimizer.nesterov=true"],
    "sgd_weight_decay": ["optimizer=sgd", "optimizer.weight_decay=0.1"],
    "adam": ["optimizer=adam", "optimizer.lr=0.01"],
    "adam_weight_decay": ["optimizer=adam", "optimizer.lr=0.01", "optimizer.weight_decay=0.1"],
    "adam_amsgrad": ["optimizer=adam", "optimizer.lr=0.01", "optimizer.amsgrad=true"],
    "adam_betas": ["optimizer=adam", "optimizer.lr=0.01", "optimizer.betas=[0.5,0.9]"],
    "adamw": ["optimizer=adamw", "optimizer.lr=0.01"],
    "adamw_amsgrad": ["optimizer=adamw", "optimizer.lr=0.01", "optimizer.amsgrad=true"],
    "rmsprop": ["optimizer=rmsprop", "optimizer.lr=0.001"],
    "rmsprop_centered": ["optimizer=rmsprop", "optimizer.lr=0.001", "optimizer.centered=true"],
    "rmsprop_momentum": ["optimizer=rmsprop", "optimizer.lr=0.001", "optimizer.momentum=0.5"],
    "rmsprop_centered_momentum_wd": [
        "optimizer=rmsprop",
        "optimizer.lr=0.001",
        "optimizer.centered=true",
        "optimizer.momentum=0.5",
        "optimizer.weight_decay=0.05",
    ],
    "adagrad": ["optimizer=adagrad", "optimizer.lr=0.05"],
    "adagrad_options": [
        "optimizer=adagrad",
        "optimizer.lr=0.05",
        "optimizer.lr_decay=0.01",
        "optimizer.initial_accumulator_value=0.1",
        "optimizer.weight_decay=0.01",
    ],
    "nadam": ["optimizer=nadam", "optimizer.lr=0.01"],
    "nadam_decoupled_maximize": [
        "optimizer=nadam",
        "optimizer.lr=0.01",
        "optimizer.weight_decay=0.1",
        "optimizer.decoupled_weight_decay=true",
        "optimizer.maximize=true",
    ],
    "radam": ["optimizer=radam", "optimizer.lr=0.01"],  # unrectified until step 6
    "radam_weight_decay_maximize": [
        "optimizer=radam",
        "optimizer.lr=0.01",
        "optimizer.weight_decay=0.1",
        "optimizer.maximize=true",
    ],
    "adamax": ["optimizer=adamax", "optimizer.lr=0.01", "optimizer.weight_decay=0.01"],
    "adadelta_maximize": [
        "optimizer=adadelta",
        "optimizer.rho=0.8",
        "optimizer.weight_decay=0.01",
        "optimizer.maximize=true",
    ],
    "rprop": ["optimizer=rprop", "optimizer.lr=0.005"],
    "rprop_options_maximize": [
        "optimizer=rprop",
        "optimizer.etas=[0.3,1.5]",
        "optimizer.step_sizes=[0.0001,0.02]",
        "optimizer.maximize=true",
    ],
    "asgd_averaging": [  # averaging from step 21 on
        "optimizer=asgd",
        "optimizer.lr=0.02",
        "optimizer.t0=20",
        "optimizer.lambd=0.01",
        "optimizer.weight_decay=0.01",
    ],
    # maximize ascends the loss; these rates keep the ascent finite for the steps compared.
    # (Every rule with every option, maximize included, meets torch.optim in
    # test_optim_rules.py; here each optimizer and the shared negation go through the loops.)
    "sgd_maximize": ["optimizer=sgd", "optimizer.lr=0.002", "optimizer.maximize=true"],
    "adam_maximize": ["optimizer=adam", "optimizer.lr=0.01", "optimizer.maximize=true"],
    "asgd_maximize": ["optimizer=asgd", "optimizer.lr=0.002", "optimizer.maximize=true"],
}

# Linear model, 3 features, noisy targets: gradients stay well away from zero for 100 steps.
LINEAR = [
    "model=linear",
    "data=synthetic",
    "data.n_features=3",
    "data.n_samples=32",
    "data.noise=0.5",
]


def trajectories(tmp_path, overrides, loops=("numpy", "autograd", "optim")):
    """Each loop's metric table over the same Problem, built once from the composed config:
    the loops' own records, as the sinks would get them (end-to-end runs through the CLI are
    compared in test_sweep_cli.py)."""
    cfg = compose_config(*overrides)
    train: TrainConf = OmegaConf.to_object(cfg.train)
    problem = build_problem(cfg, train, "cpu")
    shapes = {k: np.shape(v) for k, v in problem.init.items()}
    layout = Layout(shapes, cfg.log.max_elements, problem.extras)
    out = {}
    for loop in loops:
        cls = LOOPS[loop]
        rows = cls.to_host(list(cls(problem).steps(1, train.steps)))[0]  # job 0 of 1
        out[loop] = pd.DataFrame(layout.table(rows), columns=layout.columns)
    return out


def assert_loops_agree(frames: dict[str, pd.DataFrame], rtol: float) -> None:
    reference = frames["optim"]
    assert len(reference) >= 100
    for loop, frame in frames.items():
        assert list(frame.columns) == list(reference.columns)
        for column in reference.columns:
            a, b = frame[column].to_numpy(), reference[column].to_numpy()
            # relative to each column's own scale, so values crossing zero are judged fairly
            scale = np.max(np.abs(b))
            np.testing.assert_allclose(
                a, b, rtol=rtol, atol=rtol * scale, err_msg=f"{loop} vs optim: {column}"
            )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_option(tmp_path, name, dtype):
    frames = trajectories(
        tmp_path, [*LINEAR, *OPTIMIZERS[name], "train.steps=120", f"train.dtype={dtype}"]
    )
    assert_loops_agree(frames, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["mse", "l1", "huber", "huber_small_delta"])
@pytest.mark.parametrize("model", ["scalar", "linear"])
def test_every_loss_and_model(tmp_path, loss, model, dtype):
    loss_args = (
        ["loss=huber", "loss.delta=0.3"] if loss == "huber_small_delta" else [f"loss={loss}"]
    )
    data = LINEAR[1:] if model == "linear" else ["data=synthetic", "data.noise=0.5"]
    frames = trajectories(
        tmp_path,
        [
            f"model={model}",
            *data,
            *loss_args,
            "optimizer.lr=0.05",
            "train.steps=100",
            f"train.dtype={dtype}",
        ],
    )
    assert_loops_agree(frames, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mini_batches_are_the_same_in_every_loop(tmp_path, dtype):
    frames = trajectories(
        tmp_path,
        [
            *LINEAR,
            "train.batch_size=5",
            "optimizer=adam",
            "optimizer.lr=0.02",
            "train.steps=150",
            f"train.dtype={dtype}",
        ],
    )
    assert_loops_agree(frames, TOLERANCE[dtype])
    # 32 samples in batches of 5: 7 batches an epoch, so losses are batch losses that jump
    losses = frames["numpy"]["loss"].to_numpy()
    assert not np.all(np.diff(losses) < 0)


def test_linear_without_bias_and_default_init(tmp_path):
    frames = trajectories(
        tmp_path,
        [
            "model=linear",
            "model.bias=false",
            "model.init=null",
            "data=synthetic",
            "data.n_features=2",
            "optimizer=sgd",
            "optimizer.momentum=0.9",
            "train.dtype=float64",
            "train.steps=100",
        ],
    )
    assert_loops_agree(frames, TOLERANCE["float64"])
    assert "param/bias" not in frames["numpy"].columns


# Clipping and accumulation in the shared update path, mini-batches of 5 of 32 samples. The norm
# threshold clips most of the 100 steps, the value threshold some gradient elements but not all
# (the test checks both). Norm clipping applies to the accumulated gradient; value clipping,
# which sets many gradient elements to the same number, and plain accumulation are apart.
FEATURES = {
    "clip_grad_norm_accumulate_2": [
        "train.batch_size=5",
        "train.accumulate=2",
        "train.clip_grad_norm=0.5",
    ],
    "clip_grad_value": ["train.clip_grad_value=2.0"],
    "accumulate_3": ["train.batch_size=5", "train.accumulate=3"],
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("feature", list(FEATURES))
def test_clipping_and_accumulation(tmp_path, feature, optimizer, dtype):
    frames = trajectories(
        tmp_path,
        [*LINEAR, *OPTIMIZERS[optimizer], *FEATURES[feature], "train.steps=100",
         f"train.dtype={dtype}"],
    )  # fmt: skip
    assert_loops_agree(frames, TOLERANCE[dtype])
    reference = frames["optim"]
    if "clip_grad_norm" in feature:
        before = reference["grad_norm_before_clip"]
        assert (before > 0.5).mean() > 0.5  # it clips on most steps
        clipped = before > 0.5
        np.testing.assert_allclose(reference["grad_norm"][clipped], 0.5, rtol=1e-5)
    elif "clip_grad_value" in feature:
        grads = reference[[c for c in reference.columns if c.startswith("grad/")]].abs()
        limit = 2.0
        assert (grads == limit).any(axis=None) and (grads < limit).any(axis=None)
        assert (grads <= limit).all(axis=None)
    else:
        assert "grad_norm_before_clip" not in reference.columns
