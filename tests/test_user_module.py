"""model=module: the user's own nn.Module. Its own init from train.seed; the autograd and optim
loops agree with each other and with a plain torch loop; targets that are no nn.Module subclass
are refused before anything calls them; checkpoints, runner-predict, runner-check and the
vectorized launcher handle it; the README's example trains through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from runner import check as check_command
from runner import predict
from runner.build import build_parts
from runner.errors import ConfigError
from runner.run import Job, run, run_jobs
from tests.helpers import REPO, cli_in_process, compose_config, train
from tests.test_parity import assert_loops_agree
from tests.test_resume import LOOP_CLASSES, _crash_after
from tests.user_modules import NotAModule, TinyMLP

X = [[0.0, 1.0], [1.0, 0.5], [2.0, -1.0], [-1.0, 0.3], [0.5, 0.5], [1.5, 2.0]]
Y = [1.0, 2.0, 0.5, -1.0, 0.8, 3.0]
POINTS = ("data=points", f"data.x={X}".replace(" ", ""), f"data.y={Y}".replace(" ", ""))
BARE = (*POINTS, "model=module", "model.target=tests.user_modules.TinyMLP", "log.tensorboard=false")
PROBLEM = (*BARE, "model.kwargs={n_features: 2}")
RTOL = {"float64": 1e-10, "float32": 1e-5}


def oracle(dtype: str, steps: int, lr: float = 0.05, seed: int = 0) -> tuple[list, dict]:
    """A plain torch training loop of TinyMLP on X, Y with Adam: its losses and final params."""
    torch.manual_seed(seed)
    module = TinyMLP(n_features=2).to(getattr(torch, dtype))
    x, y = (torch.tensor(v, dtype=getattr(torch, dtype)) for v in (X, Y))
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x)[:, 0], y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: p.detach().numpy() for k, p in module.named_parameters()}


def test_initial_values_are_the_modules_own_init_from_train_seed():
    model = build_parts(compose_config(*PROBLEM, "train.seed=3"))["model"]
    init = model.init_params(2, np.random.default_rng(3))
    torch.manual_seed(3)
    want = {k: p.detach().numpy() for k, p in TinyMLP(n_features=2).named_parameters()}
    assert list(init) == ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    for name, value in want.items():
        np.testing.assert_array_equal(init[name], value)
    other = build_parts(compose_config(*PROBLEM, "train.seed=4"))["model"]
    assert not np.array_equal(other.init_params(2, None)["hidden.weight"], want["hidden.weight"])


def test_predictions_are_flat_for_one_output_and_a_column_per_output_for_more():
    from runner.user_module import UserModule

    x = torch.tensor(X, dtype=torch.float64)
    for target, shape in (("TinyMLP", (6,)), ("FlatOutput", (6,)), ("TwoOutputs", (6, 2))):
        model = UserModule(f"tests.user_modules.{target}", {"n_features": 2})
        init = model.init_params(2, None)
        params = {k: torch.from_numpy(v).double() for k, v in init.items()}
        pred = model.forward(params, x, torch)
        assert pred.shape == shape, target
        jobs = {k: torch.stack([v, 2 * v]) for k, v in params.items()}  # K = 2, side by side
        both = model.forward(jobs, x, torch)
        assert both.shape == (2, *shape), target
        torch.testing.assert_close(both[0], pred, rtol=0, atol=0)
        with torch.no_grad():  # the optim loop's module: what the forward gives, as columns
            module_out = model.module(params)(x)
        torch.testing.assert_close(module_out.reshape(6, -1), pred.reshape(6, -1), rtol=0, atol=0)
        assert module_out.ndim == 2


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_autograd_and_optim_loops_agree_with_a_plain_torch_loop(tmp_path, dtype):
    steps, rtol = 120, RTOL[dtype]
    losses, params = oracle(dtype, steps)
    args = (*PROBLEM, "optimizer=adam", "optimizer.lr=0.05", f"train.steps={steps}",
            f"train.dtype={dtype}")  # fmt: skip
    runs = {loop: train(tmp_path / loop, *args, f"loop={loop}") for loop in ("autograd", "optim")}
    assert_loops_agree(
        {loop: metrics for loop, (_, metrics) in runs.items()}, rtol
    )  # each column to its scale
    for summary, metrics in runs.values():
        np.testing.assert_allclose(metrics["loss"], losses, rtol=rtol)
        for name, value in params.items():
            scale = np.max(np.abs(value))
            np.testing.assert_allclose(summary["params"][name], value, rtol=rtol, atol=rtol * scale)
    assert losses[-1] < losses[0] / 5  # it learned something: the comparison means something


@pytest.mark.parametrize("loop", ["autograd", "optim"])
def test_a_module_of_flat_output_trains_as_one_of_column_output(tmp_path, loop):
    # (N,) or (N, 1): the same predictions, the same run
    args = (*POINTS, "log.tensorboard=false", "model=module", "model.kwargs={n_features: 2}",
            "train.steps=8", "optimizer=adam", f"loop={loop}")  # fmt: skip
    for name in ("TinyMLP", "FlatOutput"):
        train(tmp_path / name, *args, f"model.target=tests.user_modules.{name}")
    column, flat = ((tmp_path / n / "metrics.csv").read_bytes() for n in ("TinyMLP", "FlatOutput"))
    assert flat == column


def test_parameters_are_logged_under_the_modules_own_names(tmp_path):
    _, metrics = train(tmp_path, *PROBLEM, "train.steps=2", "log.max_elements=3")
    names = [c for c in metrics.columns if c.startswith(("param", "grad"))]
    # hidden.weight (3, 2) and out.weight (1, 3): above 3 elements, as norms only
    assert names == [
        "param_norm/hidden.weight", "param/hidden.bias/0", "param/hidden.bias/1",
        "param/hidden.bias/2", "param/out.weight/0", "param/out.weight/1", "param/out.weight/2",
        "param/out.bias", "grad_norm/hidden.weight", "grad/hidden.bias/0", "grad/hidden.bias/1",
        "grad/hidden.bias/2", "grad/out.weight/0", "grad/out.weight/1", "grad/out.weight/2",
        "grad/out.bias", "grad_norm",
    ]  # fmt: skip
    params = json.loads((tmp_path / "summary.json").read_text())["params"]
    assert {k: np.shape(v) for k, v in params.items()} == {
        "hidden.weight": (3, 2), "hidden.bias": (3,), "out.weight": (1, 3), "out.bias": (1,)
    }  # fmt: skip


def test_tensorboards_config_text_shows_the_users_keys_only():
    from omegaconf import OmegaConf

    from runner.sinks.tensorboard_sink import config_text

    cfg = OmegaConf.to_container(compose_config(*PROBLEM, "train.seed=5"), resolve=True)
    model = config_text(cfg).split("model:\n", 1)[1].split("data:", 1)[0]
    assert model == (
        "  target: tests.user_modules.TinyMLP\n  kwargs:\n    n_features: 2\n  seed: 5\n"
    )


@pytest.mark.parametrize(
    "target,why",
    [
        ("builtins.open", "it is a builtin_function_or_method"),
        ("tests.user_modules.a_function", "it is a function"),
        ("tests.user_modules.NotAModule", "it is a class NotAModule"),
        ("no_such_module.Net", "cannot import no_such_module: No module named 'no_such_module'"),
        ("tests.user_modules.Missing", "tests.user_modules has no Missing"),
        ("TinyMLP", ""),
        ("tests.user_modules.NoParameters", " with at least one parameter"),
    ],
)
def test_a_target_that_is_no_module_class_is_refused_before_it_is_called(tmp_path, target, why):
    with pytest.raises(ConfigError) as err:
        train(tmp_path, *POINTS, "model=module", f"model.target={target}")
    message = str(err.value)
    assert message.startswith(
        f"model.target={target}: expected the dotted path of a torch.nn.Module subclass"
    )
    assert message.endswith(why) and "\n" not in message
    assert NotAModule.calls == []
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("loop=numpy",),
            "loop=numpy: expected autograd or optim with model=module (the numpy loop needs "
            "hand-written gradients, which a user's module does not have)",
        ),
        (
            ("model.kwargs={n_features: 2, width: 4}",),
            "model.kwargs={'n_features': 2, 'width': 4}: expected keyword arguments "
            "tests.user_modules.TinyMLP takes (TypeError: TinyMLP.__init__() got an "
            "unexpected keyword argument 'width')",
        ),
        (
            ("model.kwargs={n_features:3}",),
            "model.target=tests.user_modules.TinyMLP: expected a module whose forward takes "
            "inputs of shape (N, 2), the data's features; it raised RuntimeError: mat1 and "
            "mat2 shapes cannot be multiplied (2x2 and 3x3)",
        ),
    ],
)
def test_bad_settings_are_one_line(tmp_path, args, message):
    kwargs = () if any(a.startswith("model.kwargs") for a in args) else PROBLEM[-1:]
    with pytest.raises(ConfigError) as err:
        train(tmp_path, *BARE, *kwargs, *args)
    assert str(err.value) == message


def test_a_bad_target_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = cli_in_process(*POINTS, "model=module", "model.target=builtins.open", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "runner: error: model.target=builtins.open: expected the dotted path of a torch.nn.Module "
        "subclass (e.g. tinynet.TinyMLP for tinynet.py); it is a builtin_function_or_method"
    ]


@pytest.mark.parametrize("loop", ["autograd", "optim"])
def test_crash_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, loop):
    args = [*PROBLEM, f"loop={loop}", "optimizer=adam", "train.batch_size=4",
            "train.checkpoint_every=7", "train.steps=30"]  # fmt: skip
    train(tmp_path / "straight", *args)
    with monkeypatch.context() as patch:
        _crash_after(patch, *LOOP_CLASSES[loop], step=18)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tmp_path / "stopped", *args)
    summary, _ = train(tmp_path / "stopped", *args, "train.resume=true")
    assert summary["steps_completed"] == 30
    straight = (tmp_path / "straight" / "metrics.csv").read_bytes()
    assert (tmp_path / "stopped" / "metrics.csv").read_bytes() == straight


@pytest.mark.parametrize("loop", ["autograd", "optim"])
def test_predict_is_the_modules_forward_at_the_trained_parameters(tmp_path, capsys, loop):
    run_dir = tmp_path / "run"
    args = (*PROBLEM, f"loop={loop}", "train.steps=5", "train.dtype=float64")
    assert cli_in_process(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert predict.main([str(run_dir), "0.5,1", "-2,3"]) == 0
    got = [float(line) for line in capsys.readouterr().out.split()]
    module = TinyMLP(n_features=2).double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.tensor(summary["params"][name], dtype=torch.float64))
        want = module(torch.tensor([[0.5, 1.0], [-2.0, 3.0]], dtype=torch.float64))[:, 0]
    assert got == want.tolist()
    assert predict.main([str(run_dir), "1"]) == 2
    assert "input '1': 2 number(s), one per feature; got 1" in capsys.readouterr().err


def test_predict_imports_the_recorded_target_with_the_same_checks(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir, *PROBLEM, "train.steps=1")
    config = run_dir / ".hydra" / "config.yaml"
    config.parent.mkdir(exist_ok=True)
    cfg = compose_config(*PROBLEM)
    cfg.model.target = "builtins.open"
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, config)
    assert predict.main([str(run_dir), "1,2"]) == 2
    assert "model.target=builtins.open: expected the dotted path" in capsys.readouterr().err


def test_check_compares_autograd_with_finite_differences_only():
    cfg = compose_config(*PROBLEM)
    result = check_command.check(cfg, points=1)
    assert not result.hand and result.failures() == []
    assert all(gap.rel < 1e-7 for gap in result.finite.values())
    assert list(result.jacobian) == ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    assert result.jacobian["out.bias"].tolist() == [[1.0]] * len(Y)  # d pred / d bias
    lines = check_command.report(result, {"model": "module"}, 0, 16)
    assert lines[3] == (
        "hand: none, model=module has no hand-derived gradient (the numpy loop cannot train "
        "it); autograd is checked against finite differences"
    )
    assert lines[-1] == "ok: autograd agrees with finite differences (rel <= 1e-05)"


def test_a_wrong_autograd_gradient_fails_against_finite_differences(monkeypatch):
    real = check_command.autograd_value_and_grad

    def doubled(*args):
        value, grads = real(*args)
        return value, {**grads, "out.bias": 2 * grads["out.bias"]}

    monkeypatch.setattr(check_command, "autograd_value_and_grad", doubled)
    failures = check_command.check(compose_config(*PROBLEM), points=0).failures()
    assert len(failures) == 1
    assert failures[0].startswith("out.bias: autograd vs finite differences rel ")


@pytest.mark.parametrize("loop", ["autograd", "optim"])
def test_jobs_side_by_side_equal_runs_alone(tmp_path, loop):
    # what runner-lr-find trains: K rates in one loop, through torch.func.vmap
    args = ("log.progress=false", "log.landscape=false", *PROBLEM, f"loop={loop}", "optimizer=adam",
            "train.steps=10")  # fmt: skip
    jobs = [
        Job(compose_config(*args, f"optimizer.lr={lr}"), tmp_path / lr) for lr in ("0.01", "0.1")
    ]
    run_jobs(jobs)
    for job in jobs:
        alone = tmp_path / "alone" / job.out_dir.name
        run(job.cfg, alone)
        a, b = (pd.read_csv(d / "metrics.csv") for d in (job.out_dir, alone))
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


@pytest.mark.slow
def test_the_vectorized_launcher_runs_a_module_sweep_job_by_job(tmp_path):
    result = cli_in_process("-m", *PROBLEM, "optimizer.lr=0.01,0.1", "train.steps=2",
                            "hydra/launcher=vectorized", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "vectorized launcher: model=module (a user's module trains job by job: vmap may not "
        "take it); running jobs one by one" in result.stdout.splitlines()
    )
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert table["status"].tolist() == ["completed", "completed"]


def test_the_readme_example_trains_through_the_cli(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Your own module") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert code in (REPO / "examples" / "tinynet.py").read_text()  # the file in the repo
    command = section.split("```bash\n", 1)[1].split("\n", 1)[0].split()
    assert command[0] == "runner"
    run_dir = tmp_path / "run"
    result = cli_in_process(*command[1:], "log.tensorboard=false", f"hydra.run.dir={run_dir}",
                            cwd=REPO / "examples")  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["step"].tolist() == list(range(1, 101))
    assert metrics["loss"].iloc[-1] < 0.01 < 10 < metrics["loss"].iloc[0]  # y = 2x, learned
    assert {"param/layers.0.weight/7", "param/layers.2.bias"} <= set(metrics.columns)
