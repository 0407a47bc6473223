"""The loss around an optimizer's path: computed once training is over, from the logged path.

A model of at most two parameter elements gets its loss over those elements on a grid around the
path (`surface_1d`, `surface_2d`); a larger one the loss along the straight line from its initial
to its final parameters (`line`), alpha from -0.5 to 1.5, the usual diagnostic for larger models.

Every value comes from one batched evaluation: the models' forward takes a leading job axis
(runner.loops), so G parameter points are G jobs in a single NumPy forward and loss, on the run's
training rows in float64. Nothing here runs during training.

The pictures (`landscape_figure`, `trajectories_figure`) import matplotlib only when drawn.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Models with at most this many parameter elements get a 1-D curve or a 2-D contour.
MAX_GRID_ELEMENTS = 2
GRID_1D = 201  # points along the one parameter
GRID_2D = 61  # per axis: 3721 points
LINE_POINTS = 101  # alphas from LINE_ALPHAS[0] to LINE_ALPHAS[1]
LINE_ALPHAS = (-0.5, 1.5)
MARGIN = 0.25  # of the path's extent, added on each side
# One evaluation holds G x N predictions; above this many it runs in slices (a big data set).
MAX_VALUES = 4_000_000
# Contours get log-spaced levels once the loss spans this ratio over the picture.
LOG_LEVELS_RATIO = 100.0
LEVELS = 20
# A diverged path is drawn up to where it leaves this many times the extent of its first steps.
DIVERGED_REACH = 10.0
FIGSIZE = (6.0, 4.5)  # inches; 600 x 450 pixels at DPI
LEGEND_CHARS = 110  # about this many characters of small text fit across a picture
DPI = 100


@dataclass(frozen=True)
class LossFunction:
    """The training loss of a model on fixed rows, for many parameter points at once."""

    x: np.ndarray  # (N, F) float64: the run's training rows
    y: np.ndarray  # (N,) or (N, O) float64; class ids (N,) as the integers they are
    model: Any  # runner.models: forward(params, inputs, np) with a leading job axis
    loss: Any  # runner.losses: value_and_grad(pred, y)
    shapes: Mapping[str, tuple[int, ...]]  # parameter name -> shape, in the model's order

    @classmethod
    def of(cls, x, y, model, loss, params: Mapping[str, Any]) -> LossFunction:
        shapes = {name: tuple(np.shape(v)) for name, v in params.items()}
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.integer):
            y = y.astype(np.float64)
        return cls(np.asarray(x, np.float64), y, model, loss, shapes)

    @property
    def n_values(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(G, P) flat parameter points (model order, C order) -> (G,) losses."""
        points = np.asarray(points, np.float64)
        inputs = self.model.inputs(self.x)
        per_slice = max(1, MAX_VALUES // max(1, len(self.x)))
        out = np.empty(len(points))
        with np.errstate(all="ignore"):  # far from the path the loss may overflow: inf is fine
            for start in range(0, len(points), per_slice):
                chunk = points[start : start + per_slice]
                params, at = {}, 0
                for name, shape in self.shapes.items():
                    size = math.prod(shape)
                    params[name] = chunk[:, at : at + size].reshape(len(chunk), *shape)
                    at += size
                pred = self.model.forward(params, inputs, np)  # (G, N) or (G, N, O)
                value, _ = self.loss.value_and_grad(pred, self.y)
                out[start : start + len(chunk)] = np.reshape(value, len(chunk))
        return out


@dataclass(frozen=True)
class Surface:
    """The loss on a grid (1-D or 2-D) or a line, with the path's points and their losses.

    kind: "1d" (axes: one (G,) array), "2d" (axes: two arrays, loss (G1, G0): rows follow the
    second parameter) or "line" (axes: the alphas). `path` is (T, P) in parameter space (for
    "line", (2, P): initial and final); `path_loss` its losses; `clipped` says the range was cut
    to the path's first steps because it diverged.
    """

    kind: str
    names: tuple[str, ...]
    axes: tuple[np.ndarray, ...]
    loss: np.ndarray
    path: np.ndarray
    path_loss: np.ndarray
    clipped: bool = False


def element_names(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Each parameter element's name as metrics.csv has it: `weight`, `weight/0`, ..."""
    names = []
    for name, shape in shapes.items():
        size = math.prod(shape)
        names.extend([name] if size == 1 else [f"{name}/{i}" for i in range(size)])
    return names


def surface(f: LossFunction, path: np.ndarray, diverged: bool = False) -> Surface:
    """The loss around `path` ((T, P) flat parameter points, initial point first): a grid for
    at most two elements, else the line from the first point to the last finite one. The range
    around a `diverged` path is cut (see _within_reach)."""
    if f.n_values > MAX_GRID_ELEMENTS:
        kept, _ = _finite_prefix(path)
        ends = np.stack([kept[0], kept[-1]])
        alphas = np.linspace(*LINE_ALPHAS, LINE_POINTS)
        points = ends[0] + alphas[:, None] * (ends[1] - ends[0])
        values = f(np.concatenate([points, ends]))
        return Surface("line", ("alpha",), (alphas,), values[:-2], ends, values[-2:])
    s, _ = surfaces(f, [path], [diverged])
    return s


def surfaces(
    f: LossFunction, paths: Sequence[np.ndarray], diverged: Sequence[bool] | None = None
) -> tuple[Surface, list[tuple[np.ndarray, np.ndarray]]]:
    """For at most two elements: the loss on one grid covering every path, and each path's
    points (a diverged one cut short, see _within_reach) with their losses, all in one
    evaluation. The Surface holds the first path."""
    kept, flags = [], []
    for path, blew_up in zip(paths, diverged or [False] * len(paths), strict=True):
        points, not_finite = _finite_prefix(path)
        kept.append(points)
        flags.append(blew_up or not_finite)
    # The range covers the paths that did not diverge; with none, the first steps of the
    # diverged ones. Where a path leaves it, the picture cuts it off.
    calm = [points for points, flag in zip(kept, flags, strict=True) if not flag]
    lo, hi = _padded_range(np.concatenate(calm or [_within_reach(k) for k in kept]))
    for i, flag in enumerate(flags):
        outside = ((kept[i] < lo) | (kept[i] > hi)).any(axis=1)
        if flag and outside.any():  # up to its first point outside, where it leaves the picture
            kept[i] = kept[i][: int(np.argmax(outside)) + 1]
    cut = any(flags)
    names = tuple(element_names(f.shapes))
    if f.n_values == 1:
        axes: tuple[np.ndarray, ...] = (np.linspace(lo[0], hi[0], GRID_1D),)
        grid = axes[0][:, None]
    else:
        axes = (np.linspace(lo[0], hi[0], GRID_2D), np.linspace(lo[1], hi[1], GRID_2D))
        g0, g1 = np.meshgrid(*axes)  # (G1, G0) each: rows follow the second element
        grid = np.stack([g0.ravel(), g1.ravel()], axis=1)
    values = f(np.concatenate([grid, *kept]))
    loss = values[: len(grid)]
    if f.n_values == 2:
        loss = loss.reshape(GRID_2D, GRID_2D)
    bounds = np.cumsum([len(grid), *(len(k) for k in kept)])
    losses = [values[a:b] for a, b in itertools.pairwise(bounds)]
    kind = "1d" if f.n_values == 1 else "2d"
    first = Surface(kind, names, axes, loss, kept[0], losses[0], cut)
    return first, list(zip(kept, losses, strict=True))


def _finite_prefix(path: np.ndarray) -> tuple[np.ndarray, bool]:
    """The points up to the first non-finite one, and whether any was cut."""
    path = np.asarray(path, np.float64)
    finite = np.isfinite(path).all(axis=1)
    end = len(path) if finite.all() else max(int(np.argmin(finite)), 1)
    return path[:end], end < len(path)


def _within_reach(path: np.ndarray) -> np.ndarray:
    """The first points of a diverging path, up to where it strays DIVERGED_REACH times as far
    from its start as its first step went: the picture stays about where it began."""
    first = float(np.linalg.norm(path[1] - path[0])) if len(path) > 1 else 0.0
    far = np.linalg.norm(path - path[0], axis=1) > DIVERGED_REACH * max(first, 1e-12)
    return path[: max(int(np.argmax(far)) if far.any() else len(path), 2)]


def _padded_range(path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = path.min(axis=0), path.max(axis=0)
    span = hi - lo
    # a path that did not move along an axis: one unit around it (or its size, if larger)
    span = np.where(span > 0, span, np.maximum(np.abs(lo), 1.0))
    return lo - MARGIN * span, hi + MARGIN * span


# --- pictures --------------------------------------------------------------------------------
def landscape_figure(s: Surface, title: str) -> Figure:
    """The picture of one run's Surface: curve with the path's points, contour with the path,
    or the loss along the line from the initial to the final parameters."""
    fig, ax = figure()
    # (a 2-D picture's colour bar takes its place within, its labels beyond `right`)
    fig.subplots_adjust(left=0.15, right=0.86 if s.kind == "2d" else 0.97, bottom=0.11, top=0.93)
    if s.kind == "2d":
        _contour(fig, ax, s)
        _path_2d(ax, s.path, "C3", "path (logged steps)", ends=True)
    else:
        x = s.axes[0]
        ax.plot(x, s.loss, color="C0", lw=1.5, label="loss")
        if s.kind == "1d":
            _path_1d(ax, s.path[:, 0], s.path_loss, "C3", "path (logged steps)")
            ax.set_xlabel(s.names[0])
        else:
            ax.plot([0.0, 1.0], s.path_loss, "o", color="C3", ms=7)
            for alpha, text in ((0.0, "initial"), (1.0, "final")):
                ax.annotate(text, (alpha, s.path_loss[int(alpha)]), xytext=(6, 6),
                            textcoords="offset points")  # fmt: skip
            ax.set_xlabel("alpha: parameters = initial + alpha (final - initial)")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
    if s.kind != "line":
        _limit(ax, s)
        ax.legend(fontsize="small", loc="best")
    note = "; range cut where the path diverged" if s.clipped else ""
    ax.set_title(f"{title}{note}", fontsize="medium")
    return fig


def trajectories_figure(
    s: Surface,
    paths: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: Sequence[str],
    title: str,
    steps: Sequence[np.ndarray] | None = None,
    legend_title: str = "",
) -> Figure:
    """Every job's path on one picture of the shared loss: a contour for two parameter
    elements; for one, the loss curve with each job's points, and below it the parameter
    against the logged point, where paths that share the curve are told apart."""
    from matplotlib.figure import Figure

    if len(paths) <= 10:
        colors = [f"C{i}" for i in range(len(paths))]
    else:  # twenty distinct colours; markers differ too
        import matplotlib

        colors = list(matplotlib.colormaps["tab20"](np.arange(len(paths)) % 20))
    # Fixed margins in inches (labels of a few characters), not a layout engine: a third of
    # the picture's time. A 2-D picture's colour bar takes its place within, its labels beyond.
    if s.kind == "2d":
        fig, ax = figure(figsize=(7.0, 5.5))
        _margins(fig, left=0.9, right=0.85, bottom=0.55, top=0.35)
        _contour(fig, ax, s)
        for (path, _), label, color in zip(paths, labels, colors, strict=True):
            _path_2d(ax, path, color, label)
        _limit(ax, s)
        axes = [ax]
    else:
        fig = Figure(figsize=(7.0, 6.5), dpi=DPI)
        ax, below = fig.subplots(2, 1, height_ratios=[3, 2])
        _margins(fig, left=0.9, right=0.2, bottom=0.55, top=0.35, hspace=0.3)
        ax.plot(s.axes[0], s.loss, color="0.4", lw=1.5, zorder=1)
        for i, ((path, loss), label, color) in enumerate(zip(paths, labels, colors, strict=True)):
            marker = "osD^vP*X"[i % 8]
            ax.plot(path[:, 0], loss, marker, color=color, ms=5, alpha=0.8,
                    mec="black", mew=0.4, label=label, zorder=2)  # fmt: skip
            at = np.arange(len(path)) if steps is None else steps[i][: len(path)]
            below.plot(at, path[:, 0], f"{marker}-", color=color, ms=3, lw=1.2, label=label)
        _limit(ax, s)
        ax.set_xlabel(s.names[0])
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        below.set_ylim(*ax.get_xlim())  # the same range of the parameter as above
        below.set_xlabel("step (0: the initial value)" if steps is not None else "logged point")
        below.set_ylabel(s.names[0])
        below.grid(True, alpha=0.3)
        axes = [ax, below]
    legend_below(fig, axes[0], legend_title)
    axes[0].set_title(title, fontsize="medium")
    return fig


def legend_below(fig: Figure, ax: Axes, title: str = "") -> None:
    """The legend of `ax`'s lines below the plots of `fig`, in as many columns as the figure's
    width holds; the figure grows taller by the legend's height and the plots keep their size
    and margins (fig.subplotpars), so that every label stays on the figure."""
    handles, labels = ax.get_legend_handles_labels()
    longest = max(len(line) for label in labels for line in label.split("\n"))
    ncols = max(1, min(len(labels), LEGEND_CHARS // (longest + 6)))  # a first guess
    while True:
        legend = fig.legend(handles, labels, loc="lower center", ncols=ncols, fontsize="small",
                            title=title or None)  # fmt: skip
        box = legend.get_window_extent()
        if ncols == 1 or box.width <= fig.bbox.width - 10:  # and a few pixels to spare
            break
        legend.remove()
        ncols -= 1
    grow, height, params = box.height / fig.dpi + 0.1, fig.get_figheight(), fig.subplotpars
    bottom, top = params.bottom * height + grow, params.top * height + grow  # inches
    fig.set_figheight(height + grow)
    fig.subplots_adjust(bottom=bottom / (height + grow), top=top / (height + grow))


def _margins(fig: Figure, left: float, right: float, bottom: float, top: float,
             hspace: float | None = None) -> None:  # fmt: skip
    """Fixed margins of `fig`'s plots, in inches from each edge."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, hspace=hspace)  # fmt: skip


def png_bytes(fig: Figure) -> bytes:
    """The figure as a PNG (rendered with Agg, as savefig does by itself)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def figure(figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    """A figure of one plot for the runner's pictures (here and in runner.report). A bare
    Figure, not pyplot: no global figure registry and no backend switch in the caller's
    process (a notebook keeps its own); savefig renders PNGs with Agg by itself. No layout
    engine: the caller sets fixed margins, as a layout engine would take a third of the
    picture's time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    return fig, fig.add_subplot()


def _contour(fig: Figure, ax: Axes, s: Surface) -> None:
    from matplotlib.colors import LogNorm

    loss = np.where(np.isfinite(s.loss), s.loss, np.nan)
    top = np.nanmax(loss)
    positive = loss[loss > 0]
    low = positive.min() if positive.size else 0.0
    if positive.size and top / low >= LOG_LEVELS_RATIO:
        levels = np.geomspace(max(low, top * 1e-8), top, LEVELS)
        kwargs = {"levels": levels, "norm": LogNorm(levels[0], levels[-1]), "extend": "min"}
        loss = np.maximum(loss, levels[0] / 2)  # a loss of 0 (the minimum) in the lowest band
        label = "loss (log-spaced levels)"
    else:
        kwargs, label = {"levels": LEVELS}, "loss"
    filled = ax.contourf(*s.axes, loss, cmap="viridis", **kwargs)
    bar = fig.colorbar(filled, ax=ax, label=label)
    shown = filled.levels[:: max(1, len(filled.levels) // 8)]
    bar.set_ticks(shown, labels=[f"{v:.3g}" for v in shown])
    bar.minorticks_off()
    ax.set_xlabel(s.names[0])
    ax.set_ylabel(s.names[1])


def _limit(ax: Axes, s: Surface) -> None:
    """Axes limits of the evaluated range: a path that leaves it (a diverged one) is cut off
    at the edge instead of stretching the picture."""
    ax.set_xlim(s.axes[0][0], s.axes[0][-1])
    if s.kind == "2d":
        ax.set_ylim(s.axes[1][0], s.axes[1][-1])
        return
    finite = s.loss[np.isfinite(s.loss)]
    if finite.size:
        pad = 0.05 * (finite.max() - finite.min()) or 1.0
        ax.set_ylim(finite.min() - pad, finite.max() + pad)


def _path_2d(ax: Axes, path: np.ndarray, color, label: str, ends: bool = False) -> None:
    """The path as a line through its points, a circle at its start and a star at its end."""
    ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=1.8, marker=".", ms=4, label=label)
    ax.plot(*path[0], "o", color=color, mec="white", ms=9, zorder=3,
            label="start" if ends else None)  # fmt: skip
    ax.plot(*path[-1], "*", color=color, mec="white", ms=15, zorder=3,
            label="end" if ends else None)  # fmt: skip


def _path_1d(ax: Axes, w: np.ndarray, loss: np.ndarray, color, label: str) -> None:
    ax.plot(w, loss, "o", color=color, ms=4, alpha=0.8, label=label, zorder=2)
    ax.plot(w[0], loss[0], "o", color="C2", mec="black", ms=9, label="start", zorder=3)
    ax.plot(w[-1], loss[-1], "*", color="C3", mec="black", ms=14, label="end", zorder=3)


# --- a run's problem, rebuilt from its saved config (the sweep report) ------------------------
def from_config(config: Mapping[str, Any]) -> LossFunction:
    """The loss function of a run, from its resolved config
    (.hydra/config.yaml as a dict): model, data (its training rows) and loss, each built
    through the schema its `_target_` names, so a file can only ever build the runner's own
    classes. Raises ValueError (or ConfigError) for a config it cannot rebuild."""
    from runner.build import instantiate, saved_node
    from runner.data import hold_out

    config = resolved(config)
    model, data, loss = (
        instantiate(saved_node(group, dict(config.get(group) or {})), _convert_="all")
        for group in ("model", "data", "loss")
    )
    seed = int((config.get("train") or {}).get("seed", 0))
    # the held-out rows, applied as the runner applies them (run.build_problem)
    saved_data = config.get("data") or {}
    rows, _ = hold_out(
        data, float(saved_data.get("val_fraction", 0.0)), int(saved_data.get("seed", seed))
    )
    init = model.init_params(rows.n_features, np.random.default_rng(seed))
    return LossFunction.of(rows.x, rows.y, model, loss, init)


def resolved(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config with its interpolations resolved (`data.seed: ${train.seed}` is the
    run's seed)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)


def problem_key(config: Mapping[str, Any]) -> str:
    """What makes two runs' losses the same function: their model, data and loss settings
    (and the seed that holds rows out, when rows are held out without a data seed)."""
    import json

    config = resolved(config)
    key = {group: config.get(group) for group in ("model", "data", "loss")}
    data = config.get("data") or {}
    if data.get("val_fraction") and "seed" not in data:
        key["seed"] = (config.get("train") or {}).get("seed")
    return json.dumps(key, sort_keys=True, default=str)
