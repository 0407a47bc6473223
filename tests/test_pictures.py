"""The pictures that show optimization happen: each run's landscape.png (and its TensorBoard
image), a sweep's trajectories.png, the sweep plots' legend and notes, the lr column of an
optimizer sweep, and the seeds' aggregate.csv with its mean-and-band loss.png. Each picture is
read back and checked for its size and content; each number against a hand-computed value or
pandas."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from runner import report
from runner.landscape import LossFunction, surface, surfaces
from runner.losses import MSE
from runner.models import LinearModel, ScalarModel
from tests.helpers import cli_in_process, train
from tests.test_report import make_sweep

SEED_X = np.arange(1.0, 5.0)[:, None]  # seed notebook 000: x = 1..4, y = 2x
SEED_Y = 2.0 * SEED_X[:, 0]
ON = ("log.landscape=true", "log.tensorboard=true")
RED = np.array([214, 39, 40])  # matplotlib's C3, the colour of a run's path


def pixels(path: Path) -> np.ndarray:
    """The PNG as (H, W, 3) bytes."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return np.round(image.imread(path)[..., :3] * 255).astype(np.int64)


def near(rgb: np.ndarray, colour: np.ndarray, within: int = 30) -> np.ndarray:
    return (np.abs(rgb - colour) <= within).all(axis=-1)


def tb_images(run_dir: Path) -> list:
    """(step, Summary.Value) of every image event, as written (the raw loader: the other one
    turns images into tensors)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    found = []
    for file in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        for record in RawEventFileLoader(str(file)).Load():
            event = Event.FromString(record)
            found += [(event.step, v) for v in event.summary.value if v.HasField("image")]
    return found


# --- the loss, evaluated as a batch of parameter points ---------------------------------------
def test_the_landscape_of_w_x_is_the_hand_computed_parabola():
    # w*x on x = 1..4, y = 2x under MSE: mean((w - 2)^2 x^2) = (w - 2)^2 (1 + 4 + 9 + 16) / 4
    f = LossFunction.of(SEED_X, SEED_Y, ScalarModel(), MSE(), {"weight": np.array(0.0)})
    w = np.array([-1.0, 0.0, 0.5, 2.0, 3.25])
    np.testing.assert_allclose(f(w[:, None]), 7.5 * (w - 2.0) ** 2, rtol=1e-15, atol=0)
    # around a path from 0 to 2 (10 steps of SGD at lr 0.01 get to 1 - 0.85^10 of the way)
    path = 2.0 * (1 - 0.85 ** np.arange(11))[:, None]
    s = surface(f, path)
    assert s.kind == "1d" and s.names == ("weight",)
    (w_grid,) = s.axes
    span = path.max() - path.min()
    assert w_grid[0] == pytest.approx(-0.25 * span)
    assert w_grid[-1] == pytest.approx(path.max() + 0.25 * span)
    # (w - 2) cancels near the minimum: a few ulps of the difference
    np.testing.assert_allclose(s.loss, 7.5 * (w_grid - 2.0) ** 2, rtol=1e-12)
    np.testing.assert_allclose(s.path_loss, 7.5 * (path[:, 0] - 2.0) ** 2, rtol=1e-12)


def test_two_elements_make_a_grid_evaluated_as_one_batch_of_jobs():
    # weight and bias of nn.Linear(1, 1): loss(w, b) = mean((w x + b - 2x)^2)
    init = {"weight": np.zeros((1, 1)), "bias": np.zeros(1)}
    f = LossFunction.of(SEED_X, SEED_Y, LinearModel(), MSE(), init)
    path = np.array([[0.0, 0.0], [1.0, 0.5], [1.8, 0.2]])
    s = surface(f, path)
    assert s.kind == "2d" and s.names == ("weight", "bias")
    w, b = np.meshgrid(*s.axes)
    x = SEED_X[:, 0]
    want = ((w[..., None] * x + b[..., None] - 2 * x) ** 2).mean(axis=-1)
    np.testing.assert_allclose(s.loss, want, rtol=1e-13)
    assert s.axes[0][0] < 0.0 and s.axes[0][-1] > 1.8 and s.axes[1][-1] > 0.5  # with margin


def test_a_diverged_path_does_not_stretch_the_range():
    # |w - 2| grows 14-fold a step (SGD at lr 1.0 on the seed line); the 5th point is 3e5 away
    f = LossFunction.of(SEED_X, SEED_Y, ScalarModel(), MSE(), {"weight": np.array(0.0)})
    path = (2.0 - 2.0 * (-14.0) ** np.arange(6))[:, None]
    s = surface(f, path, diverged=True)
    assert s.clipped
    first_step = abs(path[1, 0] - path[0, 0])
    assert np.abs(s.axes[0]).max() <= 10 * first_step * 1.6
    # two jobs, one diverged: the range is the calm one's
    calm = np.linspace(0.0, 1.9, 8)[:, None]
    s, kept = surfaces(f, [calm, path], [False, True])
    assert s.axes[0][0] == pytest.approx(-0.25 * 1.9) and s.axes[0][-1] == pytest.approx(1.9 * 1.25)
    assert len(kept[1][0]) == 2  # the diverged path up to its first point outside


def test_class_ids_stay_integers_for_cross_entropy():
    # two logits from w * x (weight [2, 1], no bias): loss = mean(logsumexp(z) - z_y)
    from runner.losses import CrossEntropy

    x, y = np.array([[1.0], [-2.0], [0.5]]), np.array([0, 1, 1])
    init = {"weight": np.zeros((2, 1))}
    f = LossFunction.of(x, y, LinearModel(bias=False, out_features=2), CrossEntropy(), init)
    points = np.array([[0.0, 0.0], [1.0, -1.0]])
    z = points[:, None, :] * x[None, :, :]  # (G, N, 2)
    want = np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, y[None, :, None], -1)[..., 0]
    np.testing.assert_allclose(f(points), want.mean(-1), rtol=1e-14)


# --- landscape.png in a run ---------------------------------------------------------------------
def test_a_one_parameter_run_draws_its_curve_and_tensorboard_gets_the_picture(tmp_path):
    summary, metrics = train(tmp_path, *ON, "train.steps=10")
    png = tmp_path / "landscape.png"
    rgb = pixels(png)
    assert rgb.shape == (450, 600, 3)
    assert near(rgb, RED).sum() > 100  # the logged steps, red points on the blue curve
    ((step, value),) = tb_images(tmp_path)
    assert value.tag == "landscape" and step == 10
    assert (value.image.width, value.image.height) == (600, 450)
    assert value.image.encoded_image_string == png.read_bytes()
    assert summary["status"] == "completed" and len(metrics) == 10


def test_a_two_parameter_run_draws_its_path_on_the_contour(tmp_path):
    train(tmp_path, *ON, "model=linear", "optimizer.lr=0.02", "train.steps=40")
    rgb = pixels(tmp_path / "landscape.png")
    assert rgb.shape == (450, 600, 3)
    # the path is red on viridis, which has no red: its pixels stand out of the background
    path_pixels = near(rgb, RED)
    assert path_pixels.sum() > 200
    _, cols = np.nonzero(path_pixels)
    assert cols.max() - cols.min() > 100  # a path across the plot, not a speck
    ((_, value),) = tb_images(tmp_path)
    assert (value.image.width, value.image.height) == (600, 450)


def test_a_larger_model_draws_the_line_from_its_initial_to_its_final_parameters(tmp_path):
    summary, metrics = train(
        tmp_path, *ON, "model=linear", "data=synthetic", "data.n_features=3",
        "train.dtype=float64", "train.steps=20", "log.tensorboard=false",
    )  # fmt: skip
    assert image.imread(tmp_path / "landscape.png").shape[:2] == (450, 600)
    # what it plots: the line's ends are the first logged loss and the loss at the final params
    from omegaconf import OmegaConf

    from runner.run import build_problem
    from tests.helpers import compose_config

    cfg = compose_config("model=linear", "data=synthetic", "data.n_features=3",
                         "train.dtype=float64")  # fmt: skip
    problem = build_problem(cfg, OmegaConf.to_object(cfg.train), "cpu")
    f = LossFunction.of(problem.x, problem.y, problem.model, problem.loss, problem.init)
    init = np.concatenate([np.ravel(v) for v in problem.init.values()])
    final = np.concatenate([np.ravel(summary["params"][k]) for k in ("weight", "bias")])
    s = surface(f, np.stack([init, final]))
    assert s.kind == "line" and s.axes[0][0] == -0.5 and s.axes[0][-1] == 1.5
    assert s.path_loss[0] == pytest.approx(metrics["loss"].iloc[0], rel=1e-12)
    assert s.path_loss[1] == pytest.approx(summary["final_loss"], rel=0.5)  # one step later
    np.testing.assert_allclose(s.loss[25], s.path_loss[0], rtol=1e-12)  # alpha 0
    np.testing.assert_allclose(s.loss[75], s.path_loss[1], rtol=1e-12)  # alpha 1


def test_no_landscape_when_turned_off_and_a_diverged_run_still_gets_one(tmp_path):
    train(tmp_path / "off", "train.steps=3")  # tests.helpers.train: off unless asked
    assert not (tmp_path / "off" / "landscape.png").exists()
    summary, _ = train(tmp_path / "diverged", *ON, "optimizer.lr=1.0", "train.steps=200")
    assert summary["status"] == "diverged"
    assert pixels(tmp_path / "diverged" / "landscape.png").shape == (450, 600, 3)


# --- the sweep report -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bowl(tmp_path_factory):
    """Seed notebook 002's bowl, SGD, Adam, RMSprop and LBFGS: a sweep through the CLI."""
    root = tmp_path_factory.mktemp("bowl")
    result = cli_in_process(
        "-m", "optimizer=sgd,adam,rmsprop,lbfgs", "experiment=quadratic_bowl",
        "log.tensorboard=false", f"hydra.sweep.dir={root}/sweep", cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root / "sweep"


@pytest.mark.slow
def test_the_bowl_sweep_draws_every_optimizers_path(bowl):
    rgb = pixels(bowl / "trajectories.png")
    assert rgb.shape[1] == 700 and rgb.shape[0] > 650  # 7 x 6.5 in, and its legend below
    jobs = report.collect_jobs(bowl)
    fig = report.trajectories(jobs, ["sgd", "adam", "rmsprop", "lbfgs"], "t", "optimizer")
    curve, below = fig.axes
    # below: each job's weight against its step, from 1.0 (the preset's init) on
    lines = below.get_lines()
    assert len(lines) == 4
    for job, line in zip(jobs, lines, strict=True):
        weights = job.metrics["param/weight"].to_numpy()
        np.testing.assert_allclose(line.get_ydata(), [1.0, *weights])
        np.testing.assert_array_equal(line.get_xdata(), [0, *job.metrics["step"]])
    # above: the bowl w^2 itself, and each job's points on it
    x, y = curve.get_lines()[0].get_data()
    np.testing.assert_allclose(y, x**2, rtol=1e-12)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["sgd", "adam", "rmsprop", "lbfgs"]
    # the optimizer sweep's summary.csv carries each job's rate, appended after its columns
    table = pd.read_csv(bowl / "summary.csv")
    assert list(table.columns)[-2:] == ["dir", "lr"]
    for row in table.itertuples():
        config = yaml_config(bowl / row.dir)
        assert row.lr == config["optimizer"]["lr"]


def yaml_config(job: Path) -> dict:
    import yaml

    return yaml.safe_load((job / ".hydra" / "config.yaml").read_text())


@pytest.mark.slow
def test_an_optimizer_sweep_lists_each_jobs_own_default_rate(tmp_path):
    make_sweep(tmp_path, ["optimizer=sgd"], ["optimizer=adam"], ["optimizer=rmsprop"])
    report.write_report(tmp_path, out=io.StringIO())
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table["lr"].tolist() == [0.01, 0.001, 0.01]  # torch's defaults, SGD's from the SPEC
    assert list(table.columns) == [
        "job", "optimizer", "status", "final_loss", "best_loss", "steps_completed", "wall_s",
        "param/weight", "dir", "lr",
    ]  # fmt: skip
    # one problem, three paths: trajectories.png too
    assert pixels(tmp_path / "trajectories.png").shape[1] == 700


def test_no_trajectories_when_the_jobs_solve_different_problems(tmp_path):
    make_sweep(tmp_path, ["model=scalar"], ["model=linear"])
    written = report.write_report(tmp_path, out=io.StringIO())
    assert not (tmp_path / "trajectories.png").exists()
    assert tmp_path / "trajectories.png" not in written
    assert "lr" not in pd.read_csv(tmp_path / "summary.csv").columns  # no optimizer swept


def test_a_two_parameter_sweep_draws_every_path_on_one_contour(tmp_path):
    # synthetic data saved as `seed: ${train.seed}`: resolved before the data is rebuilt
    fixed = ("model=linear", "data=synthetic", "data.n_features=1", "train.steps=8",
             "log.tensorboard=false")  # fmt: skip
    make_sweep(tmp_path, ["optimizer.lr=0.02"], ["optimizer.lr=0.1"], fixed=fixed)
    report.write_report(tmp_path, out=io.StringIO())
    assert pixels(tmp_path / "trajectories.png").shape[1] == 700
    jobs = report.collect_jobs(tmp_path)
    fig = report.trajectories(jobs, ["0.02", "0.1"], "t")
    ax = fig.axes[0]
    paths = [line for line in ax.get_lines() if line.get_label() in ("0.02", "0.1")]
    for job, line in zip(jobs, paths, strict=True):
        np.testing.assert_allclose(line.get_xdata()[1:], job.metrics["param/weight"])
        np.testing.assert_allclose(line.get_ydata()[1:], job.metrics["param/bias"])
    # a seed sweep on that data is a different problem per job: no shared picture
    seeds = tmp_path / "seeds"
    make_sweep(seeds, ["train.seed=0"], ["train.seed=1"], fixed=fixed)
    assert report.trajectories(report.collect_jobs(seeds), ["0", "1"], "t") is None


# --- seeds ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds") / "sweep"
    jobs = [[f"optimizer.lr={lr}", f"train.seed={seed}"] for lr in ("0.01", "0.05")
            for seed in (0, 1, 2)]  # fmt: skip
    make_sweep(root, *jobs, fixed=("train.steps=15", "log.tensorboard=false", "model.init=null"))
    report.write_report(root, out=io.StringIO())
    return root


@pytest.mark.slow
def test_a_seed_sweep_aggregates_each_setting_over_its_seeds(seeds):
    aggregate = pd.read_csv(seeds / "aggregate.csv")
    assert list(aggregate.columns) == [
        "optimizer.lr", "n", "final_loss_mean", "final_loss_std", "best_loss_mean",
        "best_loss_std",
    ]  # fmt: skip
    summary = pd.read_csv(seeds / "summary.csv")
    want = summary.groupby("optimizer.lr")[["final_loss", "best_loss"]].agg(["mean", "std"])
    assert aggregate["optimizer.lr"].tolist() == [0.01, 0.05]
    assert aggregate["n"].tolist() == [3, 3]
    for column in ("final_loss", "best_loss"):
        for stat in ("mean", "std"):
            np.testing.assert_allclose(
                aggregate[f"{column}_{stat}"], want[(column, stat)], rtol=1e-12
            )
    # std is the sample one (ddof=1), by hand for the first group
    losses = summary["final_loss"][:3].to_numpy()
    assert aggregate["final_loss_std"][0] == pytest.approx(
        np.sqrt(((losses - losses.mean()) ** 2).sum() / 2), rel=1e-12
    )


@pytest.mark.slow
def test_a_seed_sweeps_loss_plot_shows_each_groups_mean_and_band(seeds):
    jobs = report.collect_jobs(seeds)
    groups, labels = report.group_jobs(jobs, ["optimizer.lr", "train.seed"])
    assert labels == ["0.01 (n=3)", "0.05 (n=3)"]
    fig = report.band_figure(groups, labels, "t", "optimizer.lr")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2 and len(ax.collections) == 2  # a mean and a band per group
    stacked = np.stack([j.metrics["loss"].to_numpy() for j in groups[0]])
    np.testing.assert_allclose(lines[0].get_ydata(), stacked.mean(axis=0), rtol=1e-12)
    band = ax.collections[0].get_paths()[0].vertices
    top = stacked.mean(axis=0) + stacked.std(axis=0, ddof=1)
    assert np.isclose(band[:, 1], top[:, None], rtol=1e-9).any(axis=1).sum() >= len(top) - 1
    assert pixels(seeds / "loss.png").shape[1] == 800


# --- the sweep plots' legend and notes -----------------------------------------------------------
def test_twelve_jobs_over_three_keys_keep_the_legend_off_the_plot(tmp_path):
    jobs = report.collect_jobs(_one_job_dir(tmp_path)) * 12
    labels = [
        f"optimizer={o}, optimizer.lr={lr}, train.seed={s}"
        for o in ("sgd", "adam") for lr in ("0.01", "0.1", "0.5") for s in (0, 1)
    ]  # fmt: skip
    fig = report.loss_figure(jobs, labels, "title")
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out
    (ax,) = fig.axes
    (legend,) = fig.legends
    assert ax.get_legend() is None
    box, plot = legend.get_window_extent(), ax.get_window_extent()
    assert box.y1 < plot.y0  # below the plot, not over the curves
    for artist in (legend, *legend.get_texts()):
        inside = artist.get_window_extent()
        assert inside.x0 >= 0 and inside.y0 >= 0 and inside.x1 <= fig.bbox.x1
    texts = [t.get_text().replace("\n", " ") for t in legend.get_texts()]
    assert legend._ncols == 2 and texts == labels  # wrapped at 40 characters, in two columns
    assert plot.height >= 0.6 * 500  # the plot keeps its size; the figure grew instead


@pytest.mark.parametrize("n", [15, 25])
def test_a_legend_of_many_short_labels_stays_on_the_figure(tmp_path, n):
    # 15 rates: loss.png's legend goes below the plot; trajectories.png's always does (25 get
    # loss.png a colour bar instead). Its columns are as many as the figure's width holds.
    jobs = report.collect_jobs(_one_job_dir(tmp_path)) * n
    labels = [f"{0.001 * (i + 1):.3g}" for i in range(n)]
    figures = [report.trajectories(jobs, labels, "title", "optimizer.lr")]
    if n <= report.MAX_LEGEND:
        figures.append(report.loss_figure(jobs, labels, "title", "optimizer.lr"))
    for fig in figures:
        fig.savefig(io.BytesIO(), format="png")  # lays the figure out
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == labels
        for artist in (legend, *legend.get_texts()):
            box = artist.get_window_extent()
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1, artist
        assert legend.get_window_extent().y1 < min(a.get_window_extent().y0 for a in fig.axes)


def _one_job_dir(tmp_path: Path) -> Path:
    make_sweep(tmp_path / "one", ["optimizer.lr=0.01"], fixed=("train.steps=5",))
    return tmp_path / "one"


@pytest.mark.slow
def test_a_loop_sweep_whose_lines_coincide_says_so_on_the_plot(tmp_path):
    make_sweep(tmp_path, ["loop=numpy"], ["loop=autograd"], ["loop=optim"])
    jobs = report.collect_jobs(tmp_path)
    parity = report.parity_table(jobs)
    note = report._coinciding_note(parity, jobs)
    assert note.startswith("the lines of the loops (numpy, autograd, optim) coincide")
    fig = report.loss_figure(jobs, ["numpy", "autograd", "optim"], "t", "loop", note)
    (ax,) = fig.axes
    assert [t.get_text().replace("\n", " ") for t in ax.texts] == [note]
    styles = [line.get_linestyle() for line in ax.get_lines()]
    assert len(set(styles)) == 3  # the lines beneath still show
    # parted loops: no such note
    parity.loc[0, "first_step_over_tolerance"] = 3
    assert report._coinciding_note(parity, jobs) == ""


def test_a_resumed_run_draws_its_whole_path(tmp_path):
    from runner.metrics import Layout
    from runner.sinks.landscape_sink import LandscapeSink

    train(tmp_path, "train.steps=3", "train.checkpoint_every=3", "log.tensorboard=false")
    first = pd.read_csv(tmp_path / "metrics.csv")["param/weight"].to_numpy()
    # the sink of the resumed run starts from the initial point and the rows logged before
    f = LossFunction.of(SEED_X, SEED_Y, ScalarModel(), MSE(), {"weight": np.array(0.0)})
    sink = LandscapeSink(tmp_path, Layout({"weight": ()}), f, np.zeros(1), resume_at=3)
    np.testing.assert_array_equal(np.concatenate(sink.points)[:, 0], [0.0, *first])
    summary, metrics = train(
        tmp_path, *ON, "train.steps=6", "train.checkpoint_every=3", "train.resume=true"
    )
    assert summary["steps_completed"] == 6 and len(metrics) == 6
    ((step, value),) = tb_images(tmp_path)  # in the resumed part's event file
    assert step == 6 and value.image.width == 600
