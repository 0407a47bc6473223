"""Data sets as plain float64 arrays shared by all loops, and the mini-batch schedule.

Every loader returns a `Dataset` with x of shape (N, F) and y of shape (N,) (or (N, O) for
several outputs; class ids are whole numbers, with `n_classes` when the source knows it), checked
finite. The
batch schedule is a pure function of (seed, step), so every loop sees the same batches in the
same order, and a resumed run can pick up at any step without replaying a random stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import ConfigError, show


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (N, F) float64
    y: np.ndarray  # (N,) or (N, O) float64
    n_classes: int | None = None  # class ids 0..n_classes-1 in y, when the source says so

    @property
    def n_features(self) -> int:
        return self.x.shape[1]


def seed_line() -> Dataset:
    """Seed notebook 000's data: x = 1, 2, 3, 4 and y = 2x."""
    x = np.array([1.0, 2.0, 3.0, 4.0])
    return Dataset(x[:, None], 2.0 * x)


def points(x: Any, y: Any) -> Dataset:
    """Inline data: `x` a list of numbers (one feature) or a list of equal-length rows; `y` a
    list of numbers, or of equal-length rows for a model with several outputs."""
    xs = _numeric_array(x, "data.x", "a list of numbers or a list of equal-length rows")
    ys = _numeric_array(y, "data.y", "a list of numbers or a list of equal-length rows")
    if xs.ndim == 1:
        xs = xs[:, None]
    if xs.ndim != 2 or ys.ndim not in (1, 2):
        key, value = ("data.x", x) if xs.ndim != 2 else ("data.y", y)
        raise ConfigError(key, value, "a flat list of numbers, or a list of rows")
    if len(xs) != len(ys):
        raise ConfigError(  # the values as numbers, as a list[float] schema shows them
            "data.y", ys.tolist(), f"as many values as data.x has rows ({len(xs)}); got {len(ys)}"
        )
    if len(ys) == 0:
        raise ConfigError("data.x", x, "at least one sample")
    return _checked(Dataset(xs, ys), "data.x/data.y")


TASKS = ("regression", "classification")


def synthetic(
    n_samples: int,
    n_features: int,
    weight: Any,
    bias: float,
    noise: float,
    seed: int,
    task: str = "regression",
    n_classes: int = 2,
) -> Dataset:
    """y = x @ w + bias + noise * N(0, 1), with x ~ N(0, 1); all drawn from `seed`.

    task="classification": class ids from a linear rule. Two classes: 1 where
    x @ w + bias + noise * N(0, 1) > 0, else 0. More: the argmax over the classes of
    x @ W + noise * N(0, 1), with W (n_features, n_classes) ~ N(0, 1) drawn after x.
    """
    if task not in TASKS:
        raise ConfigError("data.task", task, " | ".join(TASKS))
    if task == "classification" and n_classes < 2:
        raise ConfigError("data.n_classes", n_classes, "an integer >= 2")
    w = _numeric_array(weight, "data.weight", "a number or a list of n_features numbers")
    if w.ndim == 0:
        w = np.full(n_features, float(w))
    if w.shape != (n_features,):
        raise ConfigError(
            "data.weight", weight, f"a number or a list of {n_features} numbers (n_features)"
        )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, n_features))
    if task == "classification" and n_classes > 2:
        scores = x @ rng.standard_normal((n_features, n_classes))
        y = np.argmax(scores + noise * rng.standard_normal(scores.shape), axis=1).astype(float)
        return _checked(Dataset(x, y, n_classes), "data")
    y = x @ w + bias + noise * rng.standard_normal(n_samples)
    if task == "classification":
        return _checked(Dataset(x, (y > 0).astype(float), 2), "data")
    return _checked(Dataset(x, y), "data")


# The loaders of scikit-learn's bundled toy data sets (files inside the package, no download).
SKLEARN_LOADERS = {
    "iris": lambda datasets: datasets.load_iris(),
    "wine": lambda datasets: datasets.load_wine(),
    "breast_cancer": lambda datasets: datasets.load_breast_cancer(),
    "diabetes": lambda datasets: datasets.load_diabetes(),
}


def sklearn_dataset(name: str) -> Dataset:
    """One of scikit-learn's toy data sets: features as they are; class ids for iris, wine and
    breast_cancer (n_classes from the set), a number for diabetes."""
    if name not in SKLEARN_LOADERS:
        raise ConfigError("data.name", name, " | ".join(SKLEARN_LOADERS))
    try:
        from sklearn import datasets
    except ImportError:
        raise ConfigError(
            "data", "sklearn", "scikit-learn installed: pip install 'runner[datasets]'"
        ) from None
    bunch = SKLEARN_LOADERS[name](datasets)
    x, y = np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.float64)
    names = getattr(bunch, "target_names", None)
    n_classes = None if names is None else len(names)
    return _checked(Dataset(x, y, n_classes), "data.name", name)


def load_csv(path: str, target: str, features: list[str] | None = None) -> Dataset:
    """Reads `path` with pandas; `features` (default: every other column) predict `target`."""
    import pandas as pd

    file = Path(path).expanduser()
    if file.is_dir():
        raise ConfigError("data.path", path, "a CSV file (found a directory)")
    if not file.is_file():
        raise ConfigError("data.path", path, f"an existing CSV file (not found: {file.resolve()})")
    _check_rows(file, path)
    try:
        # index_col=False: pandas never takes the first column for the row labels
        frame = pd.read_csv(file, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            "data.path", path, f"a readable CSV file with a header ({reason})"
        ) from None
    columns = [str(c) for c in frame.columns]
    features = list(features) if features is not None else [c for c in columns if c != target]
    for key, names in (("data.target", [target]), ("data.features", features)):
        missing = [n for n in names if n not in columns]
        if missing:
            raise ConfigError(
                key, names[0] if key == "data.target" else names, f"columns of {path}: {columns}"
            )
    if not features:
        raise ConfigError("data.features", features, f"at least one column of {columns}")
    if target in features:
        raise ConfigError(
            "data.features", features, f"columns other than the target (data.target={target})"
        )
    repeated = [name for name in dict.fromkeys(features) if features.count(name) > 1]
    if repeated:
        raise ConfigError(
            "data.features",
            features,
            f"each column once; {repeated[0]!r} is listed {features.count(repeated[0])} times",
        )
    if len(frame) == 0:
        raise ConfigError("data.path", path, "a CSV file with at least one data row")
    for name in [*features, target]:
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna() & frame[name].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ConfigError(
                "data.path",
                path,
                f"numbers in column {name!r}; row {row + 1} holds {show(frame[name].iloc[row])}",
            )
        frame[name] = values
    x = frame[features].to_numpy(dtype=np.float64)
    y = frame[target].to_numpy(dtype=np.float64)
    return _checked(Dataset(x, y), "data.path", path, columns=[*features, target])


def _check_rows(file: Path, path: str) -> None:
    """Refuses a file without a header row, or with a row of more or fewer fields than the
    header, naming its line: pandas would take one extra leading field for the row labels and
    shift every column, and fill missing fields with NaN."""
    import csv

    header = None
    try:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            line = 1  # where the next record starts; a quoted field may span lines
            for fields in reader:
                # pandas skips blank and whitespace-only lines; so does this count
                if fields and not (len(fields) == 1 and not fields[0].strip()):
                    if header is None:
                        header = len(fields)
                    elif len(fields) != header:
                        raise ConfigError(
                            "data.path",
                            path,
                            f"every row with the header's {header} fields; line {line} has "
                            f"{len(fields)}",
                        )
                line = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError("data.path", path, f"a readable CSV file ({reason})") from None
    if header is None:
        found = "an empty file" if file.stat().st_size == 0 else "only blank lines"
        raise ConfigError("data.path", path, f"a CSV file with a header row (found {found})")


def _numeric_array(value: Any, key: str, allowed: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(key, value, allowed) from None


def _checked(
    data: Dataset, key: str, value: Any = None, columns: list[str] | None = None
) -> Dataset:
    """Refuses NaN or infinite values, naming the first one found."""
    for name, array in (("x", data.x), ("y", data.y)):
        bad = ~np.isfinite(array)
        if bad.any():
            index = np.argwhere(bad)[0]
            where = f"row {index[0] + 1}"
            if columns is not None:
                where += f", column {columns[index[1]] if name == 'x' else columns[-1]!r}"
            raise ConfigError(
                key,
                value if value is not None else "...",
                f"finite numbers; {name} has {array[tuple(index)]} at {where}",
            )
    return data


def hold_out(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(training rows, validation rows): ceil(fraction * N) rows drawn from default_rng(seed),
    both parts in the data's own row order; no validation set when `fraction` is 0."""
    n = len(data.y)
    n_val = math.ceil(fraction * n)
    if n_val == 0:
        return data, None
    if n_val >= n:
        raise ConfigError(
            "data.val_fraction",
            fraction,
            f"a fraction that leaves training rows: the data has {n} rows, {n_val} would be "
            "held out",
        )
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return (
        Dataset(data.x[~held], data.y[~held], data.n_classes),
        Dataset(data.x[held], data.y[held], data.n_classes),
    )


@dataclass(frozen=True)
class BatchSchedule:
    """Which samples step k trains on: all of them, or shuffled mini-batches.

    Epoch e is a permutation drawn from default_rng([seed, e]) and cut into consecutive batches of
    `batch_size` (the last one may be smaller), so the batch of any step can be computed directly.
    """

    n_samples: int
    batch_size: int | None
    seed: int

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None or self.batch_size >= self.n_samples

    @property
    def batches_per_epoch(self) -> int:
        return 1 if self.full_batch else -(-self.n_samples // self.batch_size)

    def indices(self, step: int) -> np.ndarray | None:
        """Sample indices of 1-based batch number `step` (a step's own batch; with
        train.accumulate, runner.loops.Problem.micro_batches numbers them), or None for the
        full batch."""
        if self.full_batch:
            return None
        epoch, k = divmod(step - 1, self.batches_per_epoch)
        order = _epoch_order(self.seed, epoch, self.n_samples)
        return order[k * self.batch_size : (k + 1) * self.batch_size]


@lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n_samples: int) -> np.ndarray:
    # Cached: drawing a generator costs more than a small training step.
    return np.random.default_rng([seed, epoch]).permutation(n_samples)
