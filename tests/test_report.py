"""The sweep report in-process: job directories made by real runs, laid out as Hydra lays them
out (summary.json, metrics.csv, .hydra/), then summary.csv, the plots and parity.csv checked
against what each run wrote."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from runner import report
from runner.callbacks import SweepReport
from tests.helpers import compose_config, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ("train.steps=30", "log.tensorboard=false")
DTYPES = ("float64", "float32")


def make_sweep(root: Path, *jobs: list[str], fixed: tuple[str, ...] = FAST) -> list[Path]:
    """One real run per job in `root/<num>_<overrides>`, with the .hydra/ files Hydra writes."""
    dirs = []
    for num, swept in enumerate(jobs):
        job = root / f"{num}_{','.join(swept)}"
        overrides = [*swept, *fixed]
        train(job, *overrides)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        OmegaConf.save(compose_config(*overrides), job / ".hydra" / "config.yaml")
        dirs.append(job)
    return dirs


@pytest.fixture(scope="module")
def lr_runs(tmp_path_factory):
    """lr 0.01, 0.1 and 1.0 on the seed problem (numpy loop): the last one diverges."""
    root = tmp_path_factory.mktemp("lr") / "sweep"
    rates = [[f"optimizer.lr={lr}"] for lr in ("0.01", "0.1", "1.0")]
    make_sweep(root, *rates, fixed=(*FAST, "loop=numpy"))
    return root


@pytest.fixture
def lr_sweep(lr_runs, tmp_path):
    """A copy of lr_runs of this test's own."""
    return Path(shutil.copytree(lr_runs, tmp_path / "sweep"))


def summary_json(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def test_summary_has_one_row_per_job_as_each_job_reported_it(lr_sweep, capsys):
    written = report.write_report(lr_sweep)
    table = pd.read_csv(lr_sweep / "summary.csv")
    assert list(table.columns) == [
        "job", "optimizer.lr", "status", "final_loss", "best_loss", "steps_completed", "wall_s",
        "param/weight", "dir",
    ]  # fmt: skip
    assert table["job"].tolist() == [0, 1, 2]
    assert table["optimizer.lr"].tolist() == [0.01, 0.1, 1.0]
    assert table["status"].tolist() == ["completed", "completed", "diverged"]
    for _, row in table.iterrows():
        summary = summary_json(lr_sweep / row["dir"])
        assert row["steps_completed"] == summary["steps_completed"]
        assert row["wall_s"] == summary["wall_s"]
        assert row["param/weight"] == summary["params"]["weight"]
        if summary["final_loss"] is None:  # diverged: JSON null, an empty cell
            assert math.isnan(row["final_loss"])
        else:
            assert row["final_loss"] == summary["final_loss"]
            assert row["best_loss"] == summary["best_loss"]
    names = ("summary.csv", "loss.png", "final_loss.png", "trajectories.png")
    assert written == [lr_sweep / name for name in names]

    # the printed table: completed jobs best first, the diverged one last, then the files
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["job", "status", "final_loss", "optimizer.lr"]
    assert [line.split()[0] for line in lines[1:4]] == ["1", "0", "2"]
    assert lines[3].split()[1:] == ["diverged", "-", "1.0"]  # the lr as it was typed
    assert lines[4:] == [f"wrote {path}" for path in written]


def test_parameters_are_flattened_as_metrics_csv_names_them(tmp_path):
    linear = ("model=linear", "data=synthetic", "data.n_features=3", "loop=numpy", *FAST)
    jobs = make_sweep(tmp_path, ["optimizer.lr=0.01"], ["optimizer.lr=0.02"], fixed=linear)
    report.write_report(tmp_path, out=io.StringIO())
    table = pd.read_csv(tmp_path / "summary.csv")
    metrics = pd.read_csv(jobs[1] / "metrics.csv")
    params = [c for c in metrics.columns if c.startswith("param/")]
    assert params == ["param/weight/0", "param/weight/1", "param/weight/2", "param/bias"]
    assert [c for c in table.columns if c.startswith("param")] == params
    # the final row of metrics.csv holds the parameters after the last update: the final ones
    np.testing.assert_allclose(table.loc[1, params].to_numpy(float), metrics[params].iloc[-1])


def test_parameters_above_max_elements_are_norms_as_in_metrics_csv(tmp_path):
    linear = ("model=linear", "data=synthetic", "data.n_features=3", "loop=numpy", *FAST)
    make_sweep(tmp_path, ["log.max_elements=2"], fixed=linear)
    report.write_report(tmp_path, out=io.StringIO())
    table = pd.read_csv(tmp_path / "summary.csv")
    summary = summary_json(tmp_path / "0_log.max_elements=2")
    assert [c for c in table.columns if c.startswith("param")] == [
        "param_norm/weight",
        "param/bias",
    ]
    assert table.loc[0, "param_norm/weight"] == pytest.approx(
        np.linalg.norm(summary["params"]["weight"])
    )


def test_a_killed_job_is_crashed_and_described_by_its_metrics(lr_sweep, capsys):
    killed, lost = lr_sweep / "0_optimizer.lr=0.01", lr_sweep / "1_optimizer.lr=0.1"
    # killed at step 12: the summary still says running, metrics.csv holds 12 whole rows
    summary = summary_json(killed) | {"status": "running", "steps_completed": 0}
    (killed / "summary.json").write_text(json.dumps(summary))
    metrics = pd.read_csv(killed / "metrics.csv")
    metrics.head(12).to_csv(killed / "metrics.csv", index=False)
    (lost / "summary.json").unlink()  # killed before it wrote anything but metrics

    report.write_report(lr_sweep)
    table = pd.read_csv(lr_sweep / "summary.csv").set_index("job")
    assert table["status"].tolist() == ["crashed", "crashed", "diverged"]
    assert table.loc[0, "steps_completed"] == 12
    assert table.loc[0, "final_loss"] == metrics["loss"].iloc[11]
    assert table.loc[0, "param/weight"] == metrics["param/weight"].iloc[11]
    assert math.isnan(table.loc[0, "wall_s"])
    assert "crashed" in capsys.readouterr().out

    # after a sweep that ended in this process, a job without summary.json stopped early
    report.write_report(lr_sweep, sweep_ended=True)
    statuses = pd.read_csv(lr_sweep / "summary.csv")["status"].tolist()
    assert statuses == ["crashed", "failed", "diverged"]


def test_loss_plot_of_a_large_sweep_keys_colours_with_a_bar_not_a_legend(lr_sweep):
    # 64 legend entries would bury the plot (and squash it to a sliver): a colour bar instead,
    # labelled with some of the jobs' values, first and last among them.
    jobs = report.collect_jobs(lr_sweep)[:1] * 64
    labels = [f"{lr:.3g}" for lr in np.geomspace(1e-4, 0.1, 64)]
    fig = report.loss_figure(jobs, labels, "title", "optimizer.lr")
    ax, bar = fig.axes
    assert ax.get_legend() is None
    assert len(ax.get_lines()) == 64
    ticks = [t.get_text() for t in bar.get_yticklabels()]
    assert ticks[0] == labels[0] and ticks[-1] == labels[-1] and len(ticks) == 8
    assert bar.get_ylabel() == "optimizer.lr"
    # the plot keeps most of the figure's height
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out
    assert ax.get_position().height > 0.6


def test_loss_plot_keeps_the_comparison_readable_when_a_job_diverges(lr_sweep):
    jobs = report.collect_jobs(lr_sweep)
    fig = report.loss_figure(jobs, ["0.01", "0.1", "1.0"], "title", "optimizer.lr")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    diverged_at = summary_json(lr_sweep / "2_optimizer.lr=1.0")["diverged_at_step"]
    assert legend[0] == "0.01" and legend[2] == f"1.0 (diverged at step {diverged_at})"
    assert ax.get_legend().get_title().get_text() == "optimizer.lr"
    # the y range is the converging jobs': 1e30 from the diverged one would flatten them
    first_loss = pd.read_csv(lr_sweep / "0_optimizer.lr=0.01" / "metrics.csv")["loss"].iloc[0]
    assert ax.get_ylim()[1] == pytest.approx(first_loss * 10)
    # and the divergence is marked with an X on the top edge
    (cross,) = [line for line in ax.get_lines() if line.get_marker() == "X"]
    assert cross.get_ydata()[0] == pytest.approx(0.97)


def test_final_loss_plot_marks_the_diverged_job(lr_sweep):
    report.write_report(lr_sweep, out=io.StringIO())
    table = pd.read_csv(lr_sweep / "summary.csv")
    fig = report.final_loss_figure(table, "optimizer.lr", "title")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "optimizer.lr" and ax.get_yscale() == "log"
    assert ax.get_xscale() == "log"  # 0.01 ... 1.0 spans two decades
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["diverged"].get_xdata()) == [1.0]
    # lr 0.1 reaches a loss of exactly 0 in float32, which a log axis cannot place: on the edge
    assert table["final_loss"].tolist()[:2] == [pytest.approx(table.loc[0, "final_loss"]), 0.0]
    assert list(lines["completed"].get_xdata()) == [0.01]
    assert list(lines["completed"].get_ydata()) == [table.loc[0, "final_loss"]]
    assert list(lines["completed, final loss 0"].get_xdata()) == [0.1]

    narrow = table.assign(**{"optimizer.lr": [0.1, 0.2, 0.3]})
    (ax,) = report.final_loss_figure(narrow, "optimizer.lr", "title").axes
    assert ax.get_xscale() == "linear"


def test_no_final_loss_plot_unless_one_numeric_key_is_swept(tmp_path):
    make_sweep(tmp_path, ["optimizer=sgd"], ["optimizer=adam"], fixed=(*FAST, "loop=numpy"))
    report.write_report(tmp_path, out=io.StringIO())
    assert (tmp_path / "loss.png").exists() and not (tmp_path / "final_loss.png").exists()
    assert pd.read_csv(tmp_path / "summary.csv")["optimizer"].tolist() == ["sgd", "adam"]


@pytest.fixture(scope="module")
def loop_sweep(tmp_path_factory):
    """Every loop at both dtypes on the seed problem, 50 steps."""
    root = tmp_path_factory.mktemp("loops")
    loops = ("numpy", "autograd", "optim")
    jobs = [[f"loop={loop}", f"train.dtype={dtype}"] for dtype in DTYPES for loop in loops]
    make_sweep(root, *jobs, fixed=("train.steps=50", "log.tensorboard=false"))
    return root


def test_parity_of_the_three_loops_is_within_tolerance(loop_sweep, capsys):
    report.write_report(loop_sweep)
    parity = pd.read_csv(loop_sweep / "parity.csv")
    assert list(parity.columns) == report.PARITY_COLUMNS
    pairs = {(r.dtype, r.loop_a, r.loop_b) for r in parity.itertuples()}
    loops = [("numpy", "autograd"), ("numpy", "optim"), ("autograd", "optim")]
    assert pairs == {(dtype, a, b) for dtype in DTYPES for a, b in loops}
    assert parity["steps_compared"].tolist() == [50] * 6
    for row in parity.itertuples():
        assert row.tolerance == report.TOLERANCE[row.dtype]
        assert max(row.loss_gap, row.param_gap, row.grad_gap) <= row.tolerance
        assert math.isnan(row.first_step_over_tolerance)  # an empty cell: never apart
    assert "parity: 6 loop pairs, 6 within tolerance" in capsys.readouterr().out


def test_parity_reports_the_first_step_where_two_loops_part(loop_sweep, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(loop_sweep, sweep)
    numpy64 = sweep / "0_loop=numpy,train.dtype=float64" / "metrics.csv"
    metrics = pd.read_csv(numpy64)
    metrics.loc[metrics["step"] >= 7, "param/weight"] *= 1 + 1e-6  # far above float64's 1e-10
    metrics.to_csv(numpy64, index=False, float_format="%.17g")

    report.write_report(sweep)
    parity = pd.read_csv(sweep / "parity.csv").set_index(["dtype", "loop_a", "loop_b"])
    for other in ("autograd", "optim"):
        row = parity.loc[("float64", "numpy", other)]
        assert row["first_step_over_tolerance"] == 7
        assert row["param_gap"] == pytest.approx(1e-6, rel=1e-3)  # the weight is its own scale
        assert row["loss_gap"] <= 1e-10 and row["grad_gap"] <= 1e-10
    assert math.isnan(parity.loc[("float64", "autograd", "optim"), "first_step_over_tolerance"])
    out = capsys.readouterr().out
    assert "parity: 6 loop pairs, 4 within tolerance" in out
    setting = "log.tensorboard=false train.dtype=float64 train.steps=50"
    assert f"numpy vs autograd [{setting}]: apart from step 7 (largest gaps: loss 0," in out


def test_relative_gap():
    inf, nan = math.inf, math.nan
    gap = report.relative_gap(np.array([1.0, inf, nan, 2.0]), np.array([1.0, inf, nan, inf]))
    assert gap.tolist() == [0.0, 0.0, 0.0, inf]
    # a value near zero is judged by the size the column has had ...
    gap = report.relative_gap(np.array([100.0, 1e-3]), np.array([100.0, 1e-3 + 1e-6]))
    assert gap[1] == pytest.approx(1e-8, rel=1e-6)
    # ... and an early gap is not hidden by a later blow-up
    gap = report.relative_gap(np.array([1.0, 1e6]), np.array([1.0 + 1e-6, 1e6]))
    assert gap[0] == pytest.approx(1e-6, rel=1e-5)  # over the larger of 1 and 1 + 1e-6


def test_report_of_a_single_run_is_its_loss_plot(tmp_path, capsys):
    run = tmp_path / "run"
    summary, _ = train(run, "train.steps=20", "loop=numpy", "log.tensorboard=false")
    report.main([str(run)])
    assert (run / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (run / "summary.csv").exists()
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["-", "completed", f"{summary['final_loss']:.6g}"]
    assert out[-1] == f"wrote {run / 'loss.png'}"


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p / "missing", "no such directory"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "not a directory"),
        (lambda p: p, "no summary.json, metrics.csv, multirun.yaml or job in it"),
    ],
    ids=["missing", "file", "empty"],
)
def test_report_of_a_bad_directory_is_one_line_and_exit_2(tmp_path, capsys, make, reason):
    bad = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(bad)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"runner-report: error: DIR={bad}: expected a run or sweep directory ({reason})"
    ]
    assert captured.out == ""


def test_the_callback_never_raises(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    SweepReport().on_multirun_end(
        config=OmegaConf.create({"hydra": {"sweep": {"dir": str(empty)}}})
    )
    SweepReport().on_multirun_end(config=OmegaConf.create({}))  # not even a sweep dir
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("runner: no sweep report in ") for line in lines)
    assert str(empty) in lines[0]


def test_the_callback_reports_a_sweep_that_ended(lr_sweep, capsys):
    (lr_sweep / "1_optimizer.lr=0.1" / "summary.json").unlink()  # as after a bad value
    SweepReport().on_multirun_end(
        config=OmegaConf.create({"hydra": {"sweep": {"dir": str(lr_sweep)}}})
    )
    statuses = pd.read_csv(lr_sweep / "summary.csv")["status"].tolist()
    assert statuses == ["completed", "failed", "diverged"]
    assert capsys.readouterr().err == ""


def test_what_cannot_be_read_or_written_is_a_warning_and_the_rest_is_reported(lr_sweep, capsys):
    numpy_job, rate_job = lr_sweep / "0_optimizer.lr=0.01", lr_sweep / "1_optimizer.lr=0.1"
    summary = summary_json(numpy_job) | {"final_loss": "abc"}
    (numpy_job / "summary.json").write_text(json.dumps(summary))
    lines = (rate_job / "metrics.csv").read_text().splitlines()
    fields = lines[4].split(",")
    lines[4] = ",".join([fields[0], "abc", *fields[2:]])  # step 4's loss
    (rate_job / "metrics.csv").write_text("\n".join(lines) + "\n")
    (lr_sweep / "loss.png").mkdir()  # where the plot should go

    report.main([str(lr_sweep)])  # no SystemExit: exit 0

    assert capsys.readouterr().err.splitlines() == [
        f'runner-report: warning: {numpy_job / "summary.json"}: final_loss is "abc", '
        "not a number; left empty",
        f"runner-report: warning: {rate_job / 'metrics.csv'}: line 5 holds 'abc' in column "
        "loss; 1 row(s) of that kind left out",
        f"runner-report: warning: {lr_sweep / 'loss.png'}: not written (Is a directory)",
    ]
    table = pd.read_csv(lr_sweep / "summary.csv")
    assert math.isnan(table.loc[0, "final_loss"])
    assert table.loc[0, "best_loss"] == summary["best_loss"]  # the rest of the job is there
    assert (lr_sweep / "final_loss.png").read_bytes().startswith(PNG_SIGNATURE)
    job = report.load_job(rate_job)
    assert 4 not in job.metrics["step"].tolist() and len(job.metrics) == len(lines) - 2
    assert job.metrics["loss"].dtype == float and job.metrics["step"].dtype == "int64"


@pytest.fixture
def read_only(monkeypatch):
    """Makes a directory read only, as archived results are: by its mode, or, for root (whom
    modes do not stop), by an open() that fails there as on a read-only file system."""
    import builtins
    import errno
    import os

    def make(directory: Path) -> None:
        if os.geteuid() != 0:
            directory.chmod(0o555)
            return
        real_open = builtins.open

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and Path(file).parent == directory:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_)

    yield make


def test_a_read_only_sweep_is_reported_with_one_warning_and_nothing_written(
    lr_sweep, read_only, capsys
):
    report.write_report(lr_sweep)  # what the sweep itself wrote
    before = {p.name: p.read_bytes() for p in lr_sweep.iterdir() if p.is_file()}
    (lr_sweep / "summary.csv").unlink()
    del before["summary.csv"]
    capsys.readouterr()
    read_only(lr_sweep)
    try:
        report.main([str(lr_sweep)])  # exit 0
    finally:
        lr_sweep.chmod(0o755)
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"runner-report: warning: {lr_sweep}: cannot write here (")
    assert line.endswith("); summary.csv, loss.png, final_loss.png, trajectories.png not written")
    assert "wrote" not in captured.out
    assert captured.out.splitlines()[0].split() == ["job", "status", "final_loss", "optimizer.lr"]
    assert len(captured.out.splitlines()) == 4  # the table of the three jobs
    assert {p.name: p.read_bytes() for p in lr_sweep.iterdir() if p.is_file()} == before


def test_a_folder_of_single_runs_names_each_by_what_differs(tmp_path):
    """`runner-report outputs/DATE`: single runs with different settings. Parity only between
    runs that differ in nothing but the loop; each curve named by the keys it sets among those
    that differ; every legend label inside the picture."""
    runs = [
        ["loop=numpy"],
        ["loop=optim"],
        ["loop=numpy", "optimizer=adam"],
        ["data=synthetic", "data.n_features=3", "model=linear", "train.seed=1"],
        ["loop=numpy"],  # the first one again
    ]
    for i, overrides in enumerate(runs):  # single runs are named by time, with no job number
        (job,) = make_sweep(tmp_path / "made", overrides)
        job.rename(tmp_path / f"12-00-0{i}_abc{i}")
    shutil.rmtree(tmp_path / "made")
    report.write_report(tmp_path, out=io.StringIO())

    parity = pd.read_csv(tmp_path / "parity.csv")
    pairs = sorted(sorted(pair) for pair in parity[["loop_a", "loop_b"]].values.tolist())
    assert pairs == [["numpy", "optim"], ["numpy", "optim"]]  # the two plain numpy runs
    jobs = report.collect_jobs(tmp_path)
    labels = report._labels(jobs, report.swept_keys(tmp_path, jobs))
    assert labels == [
        "loop=numpy (12-00-00_abc0)",
        "loop=optim",
        "loop=numpy, optimizer=adam",
        "data=synthetic, data.n_features=3, model=linear, train.seed=1",
        "loop=numpy (12-00-04_abc4)",
    ]
    fig = report.loss_figure(jobs, labels, "title")
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[3] == "data=synthetic,\ndata.n_features=3, model=linear,\ntrain.seed=1"
    for artist in (legend, *legend.get_texts()):
        box = artist.get_window_extent()
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    # below the plot, not over the curves (nor beside them, taking a third of the width)
    assert legend.get_window_extent().y1 < fig.axes[0].get_window_extent().y0


def test_the_callback_warns_as_the_runner_command(lr_sweep, capsys):
    job = lr_sweep / "0_optimizer.lr=0.01"
    (job / "summary.json").write_text(json.dumps(summary_json(job) | {"steps_completed": 2.5}))
    SweepReport().on_multirun_end(
        config=OmegaConf.create({"hydra": {"sweep": {"dir": str(lr_sweep)}}})
    )
    assert capsys.readouterr().err.splitlines() == [
        f"runner: warning: {job / 'summary.json'}: steps_completed is 2.5, not a step count; "
        "left empty"
    ]
    assert pd.read_csv(lr_sweep / "summary.csv")["status"].tolist()[0] == "completed"
