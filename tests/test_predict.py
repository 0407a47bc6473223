"""runner-predict: a finished run's model on new inputs, computed as the run's own forward in
its dtype, checked against the forward written out by hand from summary.json's parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runner.predict import main
from tests.helpers import cli_in_process

LINEAR = ("model=linear", "data=synthetic", "data.n_features=2", "log.tensorboard=false")


@pytest.fixture
def train(tmp_path):
    """`runner OVERRIDES... hydra.run.dir=RUN_DIR` in this process (Hydra writes .hydra/ there,
    which predict reads; no landscape.png, which predict does not read); returns the run's
    summary."""

    def train(run_dir, *overrides: str) -> dict:
        args = ("log.landscape=false", *overrides, f"hydra.run.dir={run_dir}")
        result = cli_in_process(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads((run_dir / "summary.json").read_text())

    return train


def predict(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out.split(), err


@pytest.mark.parametrize("loop", ["numpy", "autograd", "optim"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predictions_are_the_runs_forward(train, tmp_path, capsys, loop, dtype):
    run_dir = tmp_path / "run"
    summary = train(run_dir, f"loop={loop}", *LINEAR, "train.steps=20", f"train.dtype={dtype}")
    x = np.array([[1.5, -2.0], [0.0, 0.25]])
    code, out, _ = predict(capsys, run_dir, "1.5,-2", "0,0.25")
    assert code == 0
    w = np.array(summary["params"]["weight"], dtype=dtype)
    b = np.array(summary["params"]["bias"], dtype=dtype)
    if loop == "numpy":
        want = x.astype(dtype) @ w[0] + b[0]
    else:  # nn.Linear's own kernel
        want = torch.nn.functional.linear(
            torch.from_numpy(x.astype(dtype)), torch.from_numpy(w), torch.from_numpy(b)
        )[:, 0].numpy()
    assert [np.dtype(dtype).type(v) for v in out] == list(want)  # exact, in the run's dtype


def test_the_seed_notebooks_f_of_5(train, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir, "experiment=linear_regression", "log.tensorboard=false")
    code, out, _ = predict(capsys, run_dir, "5")
    assert code == 0 and float(out[0]) == pytest.approx(10.0, abs=0.1)  # y = 2x


def test_best_uses_the_best_steps_parameters(train, tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = train(run_dir, "loop=numpy", "optimizer.lr=0.14", "train.steps=30")
    assert summary["best_params"] != summary["params"]  # lr 0.14 overshoots: it ends worse
    _, best, _ = predict(capsys, run_dir, "--best", "3")
    _, final, _ = predict(capsys, run_dir, "3")
    w_best, w_final = summary["best_params"]["weight"], summary["params"]["weight"]
    assert float(best[0]) == np.float32(w_best) * np.float32(3)
    assert float(final[0]) == np.float32(w_final) * np.float32(3)


def test_csv_inputs_are_the_runs_feature_columns(train, tmp_path, capsys):
    data = tmp_path / "prices.csv"
    rows = [(s, a, 3 * s - a + 1) for s, a in [(1, 2), (2, 1), (3, 3), (4, 0), (5, 2)]]
    data.write_text("size,age,price\n" + "".join(f"{s},{a},{p}\n" for s, a, p in rows))
    run_dir = tmp_path / "run"
    train(run_dir, "model=linear", "data=csv", f"data.path={data}", "data.features=[age,size]",
          "data.target=price", "loop=numpy", "train.steps=5", "log.tensorboard=false")  # fmt: skip
    new = tmp_path / "new.csv"
    new.write_text("price,size,age\n0,2,5\n0,1,1\n")  # other order, extra column
    _, from_csv, _ = predict(capsys, run_dir, "--csv", new)
    _, typed, _ = predict(capsys, run_dir, "5,2", "1,1")  # age, size: the run's order
    assert from_csv == typed and len(typed) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (("1",), "input '1': 2 number(s), one per feature; got 1"),
        (("1,x",), "input '1,x': 2 number(s), comma-separated"),
        ((), "no input: give X"),
    ],
)
def test_bad_inputs_are_one_line(train, tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    train(run_dir, "loop=numpy", *LINEAR, "train.steps=3")
    code, _, err = predict(capsys, run_dir, *args)
    assert code == 2 and err.count("\n") == 1 and message in err


def test_a_run_that_did_not_finish_is_refused(train, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir, "loop=numpy", "train.steps=3")
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps(summary | {"status": "running"}))
    code, _, err = predict(capsys, run_dir, "1")
    assert code == 2 and "status 'running'" in err and "train.resume=true" in err
    code, _, err = predict(capsys, tmp_path / "nowhere", "1")
    assert code == 2 and "no such run directory" in err
