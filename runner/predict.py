"""`runner-predict RUN_DIR X...`: the trained model of a finished run, applied to new inputs.

The run's directory says everything: `.hydra/config.yaml` the model, dtype and loop, and
summary.json the final parameters (`params`) and those of the best monitored step
(`best_params`, with `--best`). Each prediction is the run's own forward in its dtype: the
model's NumPy forward for `loop=numpy`, its nn.Module for the torch loops. One line per input,
in their order: the prediction (comma-separated for several outputs). A classification run
prints class ids and probabilities instead: `loss=cross_entropy`, the class (argmax of the
logits) and then each class's softmax probability; `loss=bce_logits`, each output's class (1
where its logit is > 0) and then each output's probability of class 1 (the sigmoid). Bad input
is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import ConfigError

_NUMBER_STARTS = tuple("0123456789.")


class PredictError(ValueError):
    """Input that runner-predict cannot use: the message is the whole line it prints."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runner-predict",
        description=(
            "Prints the trained model's prediction for each input, one per line; for a "
            "classification run the class id(s) and then the probabilities."
        ),
    )
    parser.add_argument("run_dir", type=Path, help="a run's directory (hydra.run.dir)")
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="X",
        help="one input: a number per feature, comma-separated (1.5 or 1.5,2,0.3)",
    )
    parser.add_argument("--csv", type=Path, help="read the inputs from the run's feature columns")
    parser.add_argument("--best", action="store_true", help="the best step's parameters")
    # An input may start with a minus sign (-1.5, -1,2), which argparse takes for an option
    # unless it stands alone: such inputs get a leading space, which float() ignores.
    argv = [f" {a}" if a[:1] == "-" and a[1:2] in _NUMBER_STARTS else a for a in (
        sys.argv[1:] if argv is None else argv
    )]  # fmt: skip
    args = parser.parse_intermixed_args(argv)
    try:
        run = RunModel.load(args.run_dir, best=args.best)
        rows = _inputs(args, run)
        predictions = run.predict(rows)
    except (PredictError, ConfigError) as err:
        print(f"runner-predict: error: {err}", file=sys.stderr)
        return 2
    scalar = np.dtype(run.dtype).type  # the shortest text that reads back in the run's dtype
    if run.classifies is not None:
        ids, probs = classified(predictions, run.classifies)
        for row_ids, row_probs in zip(ids.tolist(), probs, strict=True):
            print(",".join([*map(str, row_ids), *(str(scalar(v)) for v in row_probs)]))
        return 0
    for value in predictions:
        print(",".join(str(scalar(v)) for v in np.atleast_1d(value)))
    return 0


def classified(logits: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """(class ids (N, k) int, probabilities (N, m) in the logits' dtype) of a classification
    run's logits: cross_entropy (N, C) -> the argmax and the softmax over the C classes;
    bce_logits (N,) or (N, O) -> per output, 1 where z > 0, and sigmoid(z)."""
    if loss == "cross_entropy":
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return logits.argmax(axis=-1)[:, None], exp / exp.sum(axis=-1, keepdims=True)
    z = logits.reshape(len(logits), -1)
    e = np.exp(-np.abs(z))
    probs = np.where(z >= 0, 1.0, e) / (1.0 + e)  # sigmoid without overflow
    return (z > 0).astype(np.int64), probs.astype(logits.dtype)


class RunModel:
    """A finished run's model with its trained parameters."""

    def __init__(
        self, model: Any, params: dict[str, np.ndarray], dtype: str, loop: str, data: Any
    ) -> None:
        self.model, self.params, self.dtype, self.loop = model, params, dtype, loop
        self.data = data  # the run's data config: a CSV run's feature columns
        self.n_features = _n_features(params, model)
        self.classifies: str | None = None  # "bce_logits" | "cross_entropy": prints classes

    @classmethod
    def load(cls, run_dir: Path, best: bool = False) -> RunModel:
        from omegaconf import OmegaConf

        if not run_dir.is_dir():
            raise PredictError(f"{run_dir}: no such run directory")
        summary = _read_json(run_dir / "summary.json")
        status = summary.get("status")
        if status not in ("completed", "interrupted", "diverged"):
            raise PredictError(
                f"{run_dir / 'summary.json'}: status {status!r}; a run that completed or was "
                "interrupted (resume a crashed run with train.resume=true first)"
            )
        key = "best_params" if best else "params"
        params = summary.get(key)
        if not isinstance(params, dict) or not params:
            what = "no best step recorded (it never logged a finite value)" if best else "none"
            raise PredictError(f"{run_dir / 'summary.json'}: {key}: {what}")
        config = run_dir / ".hydra" / "config.yaml"
        try:
            cfg = OmegaConf.load(config)
            dtype = str(cfg.train.dtype)
            loop = str(cfg.loop.name)
            model_node = cfg.model
        except Exception as err:
            raise PredictError(f"{config}: not the run's config ({_first_line(err)})") from None
        if dtype not in ("float32", "float64"):
            raise PredictError(f"{config}: train.dtype: {dtype!r} is not float32 or float64")
        try:
            arrays = {k: np.asarray(v, dtype=dtype) for k, v in params.items()}
        except (TypeError, ValueError):
            raise PredictError(f"{run_dir / 'summary.json'}: {key}: not numbers") from None
        if not all(np.isfinite(a).all() for a in arrays.values()):
            hint = "" if best else "; --best uses the best step's"
            raise PredictError(
                f"{run_dir / 'summary.json'}: {key}: not finite (the run diverged){hint}"
            )
        run = cls(_model(model_node, config), arrays, dtype, loop, cfg.get("data", {}))
        run.classifies = _classifying_loss(cfg.get("loss", {}))
        return run

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for the rows of x (N, F), in the run's dtype: (N,) or (N, outputs) (the
        logits, for a classification run)."""
        x = np.asarray(x, dtype=self.dtype)
        if self.loop == "numpy":
            out = self.model.forward(self.params, self.model.inputs(x), np)
            return np.asarray(out, dtype=self.dtype)
        import torch

        params = {k: torch.from_numpy(v.copy()) for k, v in self.params.items()}
        module = self.model.module(params)
        with torch.no_grad():
            out = module(torch.from_numpy(x)).numpy()
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def _model(node: Any, config: Path) -> Any:
    """The model the run's config names, built through its schema: only a model class the
    runner itself defines is ever built from a file."""
    from omegaconf import OmegaConf

    from runner.build import NotTheRunners, instantiate, saved_node

    try:
        # resolved in the run's config first: a key may follow another (model.seed: train.seed)
        merged = saved_node("model", OmegaConf.to_container(node, resolve=True))
    except NotTheRunners as err:
        raise PredictError(f"{config}: {err}") from None
    except Exception as err:
        raise PredictError(f"{config}: model: {_first_line(err)}") from None
    return instantiate(merged)


def _classifying_loss(node: Any) -> str | None:
    """The classification loss a run's loss config names (bce_logits, cross_entropy), or None."""
    from runner.schema import SCHEMAS

    target = node.get("_target_") if hasattr(node, "get") else None
    names = {schema._target_: name for name, schema in SCHEMAS["loss"].items()}
    name = names.get(target)
    return name if name in ("bce_logits", "cross_entropy") else None


def _n_features(params: dict[str, np.ndarray], model: Any) -> int:
    if hasattr(model, "n_features"):  # model=module: parameters of its own names
        found = model.n_features(params)
        if found is None:
            raise PredictError("the run's module has no 2-D parameter that gives its input width")
        return found
    # the first layer's weight: `weight`, or an MLP's `0.weight`
    weight = next((v for k, v in params.items() if k.rpartition(".")[2] == "weight"), None)
    if weight is None:
        raise PredictError("the run's parameters have no weight")
    return 1 if weight.ndim == 0 else int(weight.shape[-1])


def _inputs(args: argparse.Namespace, run: RunModel) -> np.ndarray:
    f = run.n_features
    if args.csv is not None and args.inputs:
        raise PredictError("give inputs on the command line or with --csv, not both")
    if args.csv is not None:
        return _csv_inputs(args.csv, run.data, f)
    if not args.inputs:
        raise PredictError(f"no input: give X (a number per feature: {f}) or --csv FILE")
    rows = []
    for text in args.inputs:
        try:
            row = [float(v) for v in text.split(",")]
        except ValueError:
            raise PredictError(
                f"input {text.strip()!r}: {f} number(s), comma-separated "
                f"(e.g. {','.join(['1.5'] * f)})"
            ) from None
        if len(row) != f:
            raise PredictError(
                f"input {text.strip()!r}: {f} number(s), one per feature; got {len(row)}"
            )
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def _csv_inputs(path: Path, data: Any, f: int) -> np.ndarray:
    """The run's feature columns (data.features of a CSV run, by name), or, for a run on other
    data, a file of exactly its number of features."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, index_col=False)
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:  # pandas' parser errors are ValueErrors
        raise PredictError(f"{path}: not a readable CSV file ({_first_line(err)})") from None
    features = _run_features(data, [str(c) for c in frame.columns])
    if features is None:
        if frame.shape[1] != f:
            raise PredictError(f"{path}: {f} column(s), one per feature; it has {frame.shape[1]}")
        features = list(frame.columns)
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise PredictError(f"{path}: the run's feature columns {features}; {missing} missing")
    values = frame[features].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        row, col = bad[0]
        raise PredictError(f"{path}: numbers in column {features[col]!r}; row {row + 1} is not")
    return values


def _run_features(data: Any, columns: list[str]) -> list[str] | None:
    """The feature columns of a run trained on a CSV file (None for other data)."""
    if data.get("_target_") != "runner.data.load_csv":
        return None
    if data.get("features") is not None:
        return [str(c) for c in data.features]
    return [c for c in columns if c != str(data.target)]


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file (not a run directory?)") from None
    except (OSError, ValueError) as err:
        raise PredictError(f"{path}: unreadable ({_first_line(err)})") from None
    if not isinstance(value, dict):
        raise PredictError(f"{path}: not a run summary")
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
