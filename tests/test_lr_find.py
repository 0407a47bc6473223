"""runner-lr-find on the problem whose answer is known: SGD on w*x with x = 1..4, y = 2x and MSE
(the default experiment). The loss is 7.5 (w - 2)^2, its Hessian 2 * mean(x^2) = 15, so from
w = 0 each step multiplies w - 2 by f = 1 - 15 lr: every rate below 2/15 lowers the loss
(to 30 f^(2k) after k steps) and every rate above raises it."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from runner.lr_find import CSV_NAME, PNG_NAME, main

EDGE = 2 / 15
FINE = ("--min", "0.1", "--max", "0.2", "--num", "41")  # 1.7% apart around the edge


def lr_find(capsys, *args) -> tuple[int, list[str], str]:
    code = main([str(a) for a in (*args, "log.progress=false")])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_largest_stable_rate_is_the_last_below_two_over_the_hessian(tmp_path, capsys):
    out_dir = tmp_path / "lr"
    code, lines, err = lr_find(capsys, *FINE, f"hydra.run.dir={out_dir}")
    assert code == 0, err

    table = pd.read_csv(out_dir / CSV_NAME)
    assert list(table.columns) == ["lr", "final_loss", "best_loss", "diverged_at_step", "stable"]
    rates = np.geomspace(0.1, 0.2, 41)
    np.testing.assert_allclose(table["lr"], rates, rtol=1e-15)
    below = rates < EDGE
    assert table["stable"].tolist() == below.tolist()
    # final_loss is logged before the 100th update: 99 updates from w = 0
    factor = 1 - 15 * rates[below]
    expected = 30 * factor ** (2 * 99)
    # float32 holds w only to an ulp of 2 (a loss of ~5e-13): below 1e-9 the loss is at that floor
    resolved = expected > 1e-9
    final = table["final_loss"][below].to_numpy()
    np.testing.assert_allclose(final[resolved], expected[resolved], rtol=1e-3)
    assert (final[~resolved] < 1e-9).all()
    above = table[~below]
    assert ((above["final_loss"] > 30) | above["diverged_at_step"].notna()).all()
    assert above["diverged_at_step"].notna().any() and above["diverged_at_step"].isna().any()
    assert table["diverged_at_step"][below].isna().all()

    largest = rates[below].max()
    assert EDGE / 1.02 < largest < EDGE
    best = table.loc[table["final_loss"][below].idxmin()]  # the first of equal ones
    assert best["lr"] < 0.11  # the fastest contraction of this grid, |f| = 0.5, is at 0.1
    assert lines[-1] == (
        f"best lr: {best['lr']:.6g} (final loss {best['final_loss']:.6g}); "
        f"largest stable lr: {largest:.6g}"
    )
    assert f"41 rates from 0.1 to 0.2, 100 steps each: {below.sum()} stable, " in lines[-2]

    png = (out_dir / PNG_NAME).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (800, 500)
    assert 20_000 < len(png) < 500_000


def test_steps_option_and_no_rate_lowering_the_loss(tmp_path, capsys):
    out_dir = tmp_path / "lr"
    args = ("--min", "1", "--max", "10", "--num", "3", "--steps", "7", "loop=numpy")
    code, lines, err = lr_find(capsys, *args, f"hydra.run.dir={out_dir}")
    assert code == 0, err
    table = pd.read_csv(out_dir / CSV_NAME)
    assert not table["stable"].any()
    # lr 1: f = -14, finite after 7 steps (30 * 14^12) but far above the initial 30
    assert table["final_loss"][0] == pytest.approx(30 * 14.0**12, rel=1e-5)
    assert pd.isna(table["diverged_at_step"][0])
    assert lines[-1] == "best lr: none (no rate lowered the loss); largest stable lr: none"
    assert "100 steps" not in lines[-2] and "7 steps each" in lines[-2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=foo"], "model=foo: expected one of linear, mlp, module, scalar"),
        (["--min", "0"], "--min=0.0: expected a rate > 0"),
        (["--min", "1", "--max", "0.5"], "--max=0.5: expected a rate above --min=1"),
        (["--steps", "0"], "--steps=0: expected an integer >= 1"),
        (["optimizer.lr=1,2"], "optimizer.lr=1,2: expected a list [1,2]"),
        (["optimizer=lbfgs"], "optimizer=lbfgs: expected an optimizer whose rates train side"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, _, err = lr_find(capsys, *args, f"hydra.run.dir={tmp_path / 'lr'}")
    assert code == 2
    assert err.startswith(f"runner-lr-find: error: {message}")
    assert err.count("\n") == 1
    assert not (tmp_path / "lr").exists()


def test_an_earlier_result_is_not_overwritten(tmp_path, capsys):
    out_dir = tmp_path / "lr"
    out_dir.mkdir()
    (out_dir / CSV_NAME).write_text("kept\n")
    code, _, err = lr_find(capsys, f"hydra.run.dir={out_dir}")
    assert code == 2
    assert f"hydra.run.dir={out_dir}: expected a directory without {CSV_NAME} yet" in err
    assert (out_dir / CSV_NAME).read_text() == "kept\n"


def test_help_names_the_outputs_and_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("lr_find.csv", "lr_find.png", "--min", "--max", "--num", "--steps", "sgd"):
        assert word in out


@pytest.mark.slow
def test_console_script(tmp_path):
    script = Path(sys.executable).parent / "runner-lr-find"
    assert script.exists(), "pip install -e . installs runner-lr-find"
    args = ["--num", "4", "--steps", "5", "loop=numpy", f"hydra.run.dir={tmp_path / 'lr'}"]
    result = subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("best lr: ")
    assert len(pd.read_csv(tmp_path / "lr" / CSV_NAME)) == 4


def test_the_rates_jobs_open_no_sink_but_their_summary(tmp_path, capsys, monkeypatch):
    # The jobs' directories are temporary: a landscape.png per rate (0.1 s each) or an MLflow
    # run per rate would be work thrown away, or runs left in the user's tracking store.
    import runner.run

    opened = []
    real = runner.run.open_sinks

    def spy(*args, **kwargs):
        sinks = real(*args, **kwargs)
        opened.extend(type(s).__name__ for s in sinks)
        return sinks

    monkeypatch.setattr(runner.run, "open_sinks", spy)
    code, _, err = lr_find(capsys, "--num", "3", "log.mlflow=true", "log.landscape=true",
                           f"log.mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                           f"hydra.run.dir={tmp_path / 'lr'}")  # fmt: skip
    assert code == 0, err
    assert opened == []
    assert not (tmp_path / "mlflow.db").exists()
