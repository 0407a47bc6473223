"""`runner-check [OVERRIDES...]`: the gradient check that seed notebooks 001, 003 and 004 do by
hand, for the configured model, loss and data.

In float64, on the full training data (mini-batches aside; held-out rows stay out), at the
initial parameters and at `--points N` others (each element the initial value plus a standard
normal draw, from numpy.random.default_rng(train.seed)), three gradients of the loss:
- hand: what the numpy loop uses, the model's `backward` over the loss's `value_and_grad`;
- autograd: torch's, through the same forward and the torch.nn loss the torch loops use;
- finite differences: central differences of the numpy loss, with a step of
  h = 1e-6 * max(1, |p|) per element (divided by the step as float64 realises it).
Per parameter it prints the largest absolute gap over the points and the largest relative one:
the absolute gap over the larger of the two gradients' largest elements (or over 1e-6 when both
are smaller, so that gradients that are zero up to rounding do not count as a relative failure).
Then the autograd graph of the loss, the path of grad_fn nodes from the loss to each parameter,
and the Jacobian of the predictions with respect to each parameter at the initial parameters.

Exit 1 when hand and autograd differ beyond 1e-8 relative (the loss values included) or hand
and finite differences beyond 1e-5; 0 otherwise; bad config is one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner.commands import compose, end_process, overrides_help, run_command
from runner.errors import ConfigError

PROG = "runner-check"
AUTOGRAD_RTOL = 1e-8  # SPEC: hand vs autograd
FD_RTOL = 1e-5  # SPEC: hand vs finite differences
FD_STEP = 1e-6  # relative to max(1, |p|): central differences err by ~h^2 and ~1e-16 * L / h
SCALE_FLOOR = 1e-6  # relative gaps of gradients smaller than this are taken against it
DEFAULT_POINTS = 3

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Gap:
    """The largest absolute gap between two gradients, and the largest relative one."""

    abs: float
    rel: float

    @staticmethod
    def between(a: Any, b: Any) -> Gap:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = float(np.max(np.abs(a - b), initial=0.0))
        scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
        return Gap(diff, diff / max(scale, SCALE_FLOOR))

    def worst(self, other: Gap) -> Gap:
        """Each of the two largest (NaN, a gradient that is not a number, wins)."""
        return Gap(float(np.max([self.abs, other.abs])), float(np.max([self.rel, other.rel])))


@dataclass(frozen=True)
class Check:
    """What runner-check found; `autograd` and `finite` map each parameter to its gap from the
    hand-derived gradient (worst over the points), `value` is the loss values' gap."""

    points: int
    rows: int
    value: Gap
    autograd: dict[str, Gap]
    finite: dict[str, Gap]
    graph: dict[str, list[str]]  # parameter -> grad_fn names from the loss to its leaf
    jacobian: dict[str, np.ndarray]  # parameter -> d predictions / d parameter, (N, *shape)
    shapes: list[str] = field(default_factory=list)  # hand gradients not of their parameter's shape
    # False for a model without a hand-derived gradient (model=module): then autograd's stands
    # in its place, and only autograd vs finite differences is checked
    hand: bool = True
    predictions: tuple[int, ...] = ()  # the predictions' shape: (N,), or (N, O) for O outputs

    def failures(self) -> list[str]:
        """One phrase per gap beyond its limit (NaN is beyond any)."""
        found = list(self.shapes)
        if not self.value.rel <= AUTOGRAD_RTOL:
            found.append(
                f"loss value: hand vs autograd rel {self.value.rel:.3g} > {AUTOGRAD_RTOL:g}"
            )
        for name, gap in self.autograd.items() if self.hand else ():
            if not gap.rel <= AUTOGRAD_RTOL:
                found.append(f"{name}: hand vs autograd rel {gap.rel:.3g} > {AUTOGRAD_RTOL:g}")
        for name, gap in self.finite.items():
            if not gap.rel <= FD_RTOL:
                found.append(
                    f"{name}: {self.reference} vs finite differences rel {gap.rel:.3g} "
                    f"> {FD_RTOL:g}"
                )
        return found

    @property
    def reference(self) -> str:
        """The gradient the finite differences are compared with."""
        return "hand" if self.hand else "autograd"


def check(cfg: DictConfig, points: int) -> Check:
    """The gradient check of `cfg`'s model, loss and data at the initial parameters and
    `points` random ones (see the module's docstring)."""
    from runner.run import build_problem
    from runner.schema import DType

    train = OmegaConf.to_object(cfg.train)
    problem = build_problem(cfg, dataclasses.replace(train, dtype=DType.float64), "cpu")
    model, loss, x, y = problem.model, problem.loss, problem.x, problem.y
    init = {k: np.asarray(v, np.float64) for k, v in problem.init.items()}
    rng = np.random.default_rng(train.seed)
    at = [init] + [
        {k: np.asarray(v + rng.standard_normal(v.shape)) for k, v in init.items()}
        for _ in range(points)
    ]
    value_gap = Gap(0.0, 0.0)
    autograd_gaps = {k: Gap(0.0, 0.0) for k in init}
    finite_gaps = dict(autograd_gaps)
    shapes = set()
    by_hand = getattr(model, "hand_gradient", True)
    for params in at:
        torch_value, auto = autograd_value_and_grad(model, loss, params, x, y)
        value, hand = (
            hand_value_and_grad(model, loss, params, x, y) if by_hand else (torch_value, auto)
        )
        shapes |= {
            f"{k}: hand gradient of shape {np.shape(hand[k])}, the parameter's is {v.shape}"
            for k, v in params.items()
            if np.shape(hand[k]) != v.shape
        }
        numeric = finite_differences(model, loss, params, x, y)
        value_gap = value_gap.worst(Gap.between(value, torch_value))
        for k in init:
            autograd_gaps[k] = autograd_gaps[k].worst(Gap.between(hand[k], auto[k]))
            finite_gaps[k] = finite_gaps[k].worst(Gap.between(hand[k], numeric[k]))
    jacobian = prediction_jacobian(model, init, x)
    return Check(
        points=len(at),
        rows=len(y),
        value=value_gap,
        autograd=autograd_gaps,
        finite=finite_gaps,
        graph=loss_graph(model, loss, init, x, y),
        jacobian=jacobian,
        shapes=sorted(shapes),
        hand=by_hand,
        predictions=_prediction_shape(jacobian, init),
    )


def _prediction_shape(jacobian: Mapping[str, np.ndarray], params: Params) -> tuple[int, ...]:
    """The predictions' shape: a Jacobian's (N, ..., *shape) without its parameter's shape."""
    name, jac = next(iter(jacobian.items()), (None, None))
    return () if jac is None else jac.shape[: jac.ndim - np.ndim(params[name])]


def hand_value_and_grad(model: Any, loss: Any, params: Params, x: np.ndarray, y: np.ndarray):
    """(loss, gradients) as the numpy loop computes them."""
    inputs = model.inputs(x)
    value, dpred = loss.value_and_grad(model.forward(params, inputs, np), y)
    return float(value), model.backward(params, inputs, dpred)


def _torch_loss(model: Any, loss: Any, params: Params, x: np.ndarray, y: np.ndarray):
    import torch

    leaves = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()
    }
    pred = model.forward(leaves, model.inputs(torch.from_numpy(x)), torch)
    return loss.torch_loss()(pred, torch.from_numpy(y)), leaves


def autograd_value_and_grad(model: Any, loss: Any, params: Params, x: np.ndarray, y: np.ndarray):
    """(loss, gradients) as the autograd loop computes them, in float64."""
    import torch

    value, leaves = _torch_loss(model, loss, params, x, y)
    grads = torch.autograd.grad(value, list(leaves.values()))
    return float(value.detach()), {k: g.numpy() for k, g in zip(leaves, grads, strict=True)}


def finite_differences(
    model: Any, loss: Any, params: Params, x: np.ndarray, y: np.ndarray
) -> Params:
    """Central differences of the numpy loss, one element at a time."""
    inputs = model.inputs(x)

    def value(p: Params) -> float:
        return float(loss.value_and_grad(model.forward(p, inputs, np), y)[0])

    grads = {}
    for name, v in params.items():
        grad = np.empty(v.shape)
        for index in np.ndindex(v.shape):
            h = FD_STEP * max(1.0, abs(float(v[index])))
            plus, minus = np.array(v, np.float64), np.array(v, np.float64)
            plus[index] += h
            minus[index] -= h
            step = float(plus[index] - minus[index])  # 2h as float64 holds it
            grad[index] = (value({**params, name: plus}) - value({**params, name: minus})) / step
        grads[name] = grad
    return grads


def loss_graph(
    model: Any, loss: Any, params: Params, x: np.ndarray, y: np.ndarray
) -> dict[str, list[str]]:
    """For each parameter, the names of the grad_fn nodes on the first path (depth first, along
    next_functions) from the loss's grad_fn to the parameter's AccumulateGrad."""
    value, leaves = _torch_loss(model, loss, params, x, y)
    paths: dict[str, list[str]] = {}
    seen: set[int] = set()
    stack = [(value.grad_fn, [])]
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        path = [*path, type(node).__name__]
        variable = getattr(node, "variable", None)
        if variable is not None:
            name = next((k for k, leaf in leaves.items() if leaf is variable), None)
            if name is not None:
                paths[name] = path
            continue
        stack.extend((child, path) for child, _ in reversed(node.next_functions))
    return {k: paths[k] for k in leaves if k in paths}


def prediction_jacobian(model: Any, params: Params, x: np.ndarray) -> dict[str, np.ndarray]:
    """d predictions / d parameter for each parameter, (N, *shape), through the forward the
    loops use (torch.autograd.functional.jacobian)."""
    import torch
    from torch.autograd.functional import jacobian

    names = list(params)
    inputs = model.inputs(torch.from_numpy(x))

    def predictions(*values: Any) -> Any:
        return model.forward(dict(zip(names, values, strict=True)), inputs, torch)

    values = tuple(torch.tensor(params[k], dtype=torch.float64) for k in names)
    found = jacobian(predictions, values)
    return {k: j.numpy() for k, j in zip(names, found, strict=True)}


def report(result: Check, choices: Mapping[str, str], seed: int, max_elements: int) -> list[str]:
    """The lines runner-check prints, the verdict last."""
    random = result.points - 1
    lines = [
        f"model={choices.get('model')} loss={choices.get('loss')} data={choices.get('data')}: "
        f"{result.rows} rows, float64, the full data",
        f"points: the initial parameters and {random} drawn as init + N(0, 1) per element "
        f"(numpy default_rng(train.seed={seed}))",
        f"finite differences: central, h = {FD_STEP:g} * max(1, |p|)",
        "",
    ]
    if not result.hand:
        lines[-1:-1] = [
            f"hand: none, model={choices.get('model')} has no hand-derived gradient (the numpy "
            "loop cannot train it); autograd is checked against finite differences"
        ]
    lines += [
        f"{'':<14}{'hand vs autograd':<24}{result.reference} vs finite differences",
        f"{'parameter':<14}{'max abs':<12}{'max rel':<12}{'max abs':<12}max rel",
    ]
    for name, gap in result.autograd.items():
        fd = result.finite[name]
        auto = f"{gap.abs:<12.3g}{gap.rel:<12.3g}" if result.hand else f"{'-':<12}{'-':<12}"
        lines.append(f"{name:<14}{auto}{fd.abs:<12.3g}{fd.rel:.3g}")
    value = result.value
    if result.hand:
        lines.append(f"{'(loss value)':<14}{value.abs:<12.3g}{value.rel:.3g}")
    lines.append(f"{'limit':<14}{'':<12}{AUTOGRAD_RTOL:<12g}{'':<12}{FD_RTOL:g}")
    lines += ["", "autograd graph (loss.grad_fn, along next_functions, to each parameter):"]
    lines += [f"  {name}: {' -> '.join(path)}" for name, path in result.graph.items()]
    shape = result.predictions
    lines += ["", f"Jacobian of the predictions (shape {shape}) at the initial parameters:"]
    for name, jac in result.jacobian.items():
        if jac.size <= max_elements:
            values = ", ".join(f"{v:.6g}" for v in jac.ravel())
            lines.append(f"  {name}: shape {jac.shape} [{values}]")
        else:
            lines.append(
                f"  {name}: shape {jac.shape}, norm {np.linalg.norm(jac):.6g} "
                f"(more than log.max_elements={max_elements} values)"
            )
    failures = result.failures()
    lines.append("")
    if failures:
        lines.append("FAILED: " + "; ".join(failures))
    elif not result.hand:
        lines.append(f"ok: autograd agrees with finite differences (rel <= {FD_RTOL:g})")
    else:
        lines.append(
            f"ok: hand-derived gradients agree with autograd (rel <= {AUTOGRAD_RTOL:g}) and "
            f"finite differences (rel <= {FD_RTOL:g})"
        )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Checks the hand-derived gradients of the numpy loop against torch autograd and\n"
            "central finite differences (float64, full data) at the initial parameters and N\n"
            "random ones; prints the largest gaps per parameter, the loss's autograd graph and\n"
            "the Jacobian of the predictions. Exit 1 when hand vs autograd differ beyond 1e-8\n"
            "relative or hand vs finite differences beyond 1e-5."
        ),
        epilog=(
            f"{overrides_help()}\n\nExamples:\n"
            "  runner-check\n"
            "  runner-check model=linear data=synthetic data.n_features=3 loss=huber --points 5"
        ),
    )
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDES", help="KEY=VALUE, as runner")
    parser.add_argument(
        "--points",
        type=int,
        metavar="N",
        default=DEFAULT_POINTS,
        help="random points (%(default)d)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`runner-check`: returns its exit code (0 agree, 1 a gap beyond its limit, 2 bad input)."""
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    return run_command(PROG, lambda: _check(args))


def _check(args: argparse.Namespace) -> int:
    if args.points < 0:
        raise ConfigError("--points", args.points, "an integer >= 0")
    composed = compose(args.overrides)
    cfg = composed.cfg
    result = check(cfg, args.points)
    lines = report(result, composed.choices, cfg.train.seed, cfg.log.max_elements)
    print("\n".join(lines), flush=True)
    return 1 if result.failures() else 0


def entry() -> None:
    """Console entry point (`runner-check`)."""
    end_process(main())


if __name__ == "__main__":
    entry()
