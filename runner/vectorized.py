"""Learning-rate sweeps trained as one batched problem (`hydra/launcher=vectorized`).

When the jobs of a sweep differ only in `optimizer.lr` (any loop; any optimizer but LBFGS), every
job starts from the same parameters and sees the same batches; only the rate differs. So K jobs
train at once as one problem whose parameters carry a leading K axis: one forward and backward
for all. The manual loops' update rules are elementwise and take `lr` of shape (K, 1, ...); in
the optim loop each job's own torch.optim optimizer, at the job's rate, steps its slice. Each job
still gets its own directory, `.hydra/`, metrics.csv, tensorboard/, checkpoint/ and summary.json,
written by the same sinks and tracker as `runner.run.run`, and a job that diverges stops logging
at its own step while the others go on. Any other sweep runs job by job, as Hydra's basic
launcher runs it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _save_config,
    configure_log,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.run import CHUNK  # steps moved to the host (and to the sinks) at a time

log = logging.getLogger(__name__)

# The keys a batched sweep may vary; the rules take an array for them.
BATCHED_KEYS = ("optimizer.lr",)
BATCHED_LOOPS = ("numpy", "autograd", "optim")


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    """The Launcher.launch of `launcher` (a configured VectorizedLauncher): one batched problem
    when the sweep allows it, else the basic launcher's job-by-job run."""
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs, reason = _batch_configs(launcher, job_overrides, initial_job_idx)
    if configs is None:
        print(f"vectorized launcher: {reason}; running jobs one by one", flush=True)
        # The check the runner sweeper left to this launcher: every job composes, before any runs.
        for overrides in job_overrides:
            launcher.hydra_context.config_loader.load_sweep_config(config, list(overrides))
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        basic = BasicLauncher()
        basic.setup(
            hydra_context=launcher.hydra_context,
            task_function=launcher.task_function,
            config=config,
        )
        return basic.launch(job_overrides, initial_job_idx)
    log.info(f"Launching {len(configs)} jobs as one batched problem")
    hydra_cfg = HydraConfig.instance().cfg
    try:
        return _BatchedSweep(launcher, configs).run()
    finally:
        HydraConfig.instance().cfg = hydra_cfg
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)


# --- which sweeps batch ------------------------------------------------------------------------
def _batch_configs(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> tuple[list[DictConfig] | None, str]:
    """Every job's full config (with `hydra`), or None and why the sweep cannot be batched;
    raises as Hydra's composition does when a job's overrides do not compose.

    Job 0's config is composed as the basic launcher composes it; the others are job 0's with
    their own rate and Hydra's job fields, which job 1's full composition confirms: composing
    all K would cost more than training them.
    """
    if len(job_overrides) < 2:
        return None, "a single job"
    parser = OverridesParser.create()
    parsed = [parser.parse_overrides(list(o)) for o in job_overrides]
    keys = [[o.key_or_group for o in job] for job in parsed]
    if any(k != keys[0] for k in keys):
        return None, "the jobs override different keys"
    varied = {
        o.key_or_group
        for j, job in enumerate(parsed)
        for o, first in zip(job, parsed[0], strict=True)
        if j and o.value() != first.value()
    }
    if not varied <= set(BATCHED_KEYS):
        others = ", ".join(sorted(varied - set(BATCHED_KEYS)))
        return None, f"the sweep varies {others} (only {', '.join(BATCHED_KEYS)} batches)"

    loader = launcher.hydra_context.config_loader
    first = _compose(loader, launcher.config, job_overrides[0], initial_job_idx)
    loop_name = first.loop.name
    if loop_name not in BATCHED_LOOPS:
        return None, f"loop={loop_name} (only {' and '.join(BATCHED_LOOPS)} batch)"
    from hydra.utils import get_class

    rule = get_class(first.optimizer._target_)
    if not getattr(rule, "manual", False):  # LBFGS: each step re-evaluates the loss, per job
        return None, f"optimizer {rule.__name__} (its steps evaluate each job's loss apart)"
    if first.train.resume:
        return None, "train.resume=true"
    configs = [first]
    for j, overrides in enumerate(job_overrides[1:], start=1):
        try:
            cfg = _derive(first, launcher.config, parsed[j], overrides, initial_job_idx + j)
        except Exception:
            # A value the config does not take: Hydra's own composition reports it (and
            # stops the sweep before any job runs, as Hydra's sweeper would).
            _compose(loader, launcher.config, overrides, initial_job_idx + j)
            return None, f"job {initial_job_idx + j} composes differently"
        configs.append(cfg)
    check = _compose(loader, launcher.config, job_overrides[1], initial_job_idx + 1)
    if _container(check) != _container(configs[1]):
        return None, "the jobs' configs differ in more than the swept rate"
    from runner.errors import describe_error
    from runner.schema import validate

    for j, cfg in enumerate(configs):
        try:
            validate(cfg, loop_name)
        except Exception as err:
            return None, f"job {initial_job_idx + j}: {describe_error(err)[0]}"
    return configs, ""


def _compose(loader: Any, master: DictConfig, overrides: Sequence[str], idx: int) -> DictConfig:
    cfg = loader.load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = idx
        cfg.hydra.job.num = idx
    return cfg


def _derive(
    first: DictConfig, master: DictConfig, parsed: list, overrides: Sequence[str], idx: int
) -> DictConfig:
    from hydra._internal.config_loader_impl import get_overrides_dirname

    cfg = copy.deepcopy(first)
    OmegaConf.copy_cache(from_config=master, to_config=cfg)
    with read_write(cfg), open_dict(cfg):
        for override in parsed:
            if override.key_or_group in BATCHED_KEYS:
                OmegaConf.update(cfg, override.key_or_group, override.value())
        cfg.hydra.overrides.task = list(overrides)
        dirname = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=[o for o in parsed if not o.is_hydra_override()],
            kv_sep=dirname.kv_sep,
            item_sep=dirname.item_sep,
            exclude_keys=dirname.exclude_keys,
        )
        cfg.hydra.job.id = idx
        cfg.hydra.job.num = idx
    return cfg


def _container(cfg: DictConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=False)


# --- a rate per job --------------------------------------------------------------------------
class Rates:
    """K learning rates standing in for the rule's one `lr` float, shape (K, 1, ...).

    Arithmetic with Python numbers stays in float64, as the rule's float arithmetic would; meeting
    an array, the rates take the array's dtype first, as a Python float does (NumPy's weak
    scalars, torch's wrapped numbers). Each job's update is then the one its own run computes.
    """

    __array_ufunc__ = None  # NumPy hands `array * rates` to __rmul__

    def __init__(self, values: np.ndarray) -> None:
        self.values = values  # float64
        self._cast: dict[Any, Any] = {}

    def _like(self, other: Any) -> Any:
        if isinstance(other, np.ndarray | np.generic):
            return self.values.astype(other.dtype)
        key = (other.dtype, other.device)
        if key not in self._cast:
            import torch

            self._cast[key] = torch.as_tensor(self.values, dtype=other.dtype, device=other.device)
        return self._cast[key]

    def _apply(self, other: Any, op: Any) -> Any:
        if isinstance(other, int | float):
            return Rates(op(self.values, other))
        return op(self._like(other), other)

    def _apply_reflected(self, other: Any, op: Any) -> Any:
        if isinstance(other, int | float):
            return Rates(op(other, self.values))
        return op(other, self._like(other))

    def __neg__(self) -> Rates:
        return Rates(-self.values)

    def __mul__(self, other):
        return self._apply(other, lambda a, b: a * b)

    def __rmul__(self, other):
        return self._apply_reflected(other, lambda a, b: a * b)

    def __truediv__(self, other):
        return self._apply(other, lambda a, b: a / b)

    def __rtruediv__(self, other):
        return self._apply_reflected(other, lambda a, b: a / b)

    def __add__(self, other):
        return self._apply(other, lambda a, b: a + b)

    def __radd__(self, other):
        return self._apply_reflected(other, lambda a, b: a + b)

    def __sub__(self, other):
        return self._apply(other, lambda a, b: a - b)

    def __rsub__(self, other):
        return self._apply_reflected(other, lambda a, b: a - b)


class BatchedRule:
    """An update rule applied to parameters with a leading K axis, one rate per job."""

    def __init__(self, rule: Any, lrs: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> None:
        k = len(lrs)
        self.rules = {
            name: dataclasses.replace(rule, lr=Rates(lrs.reshape(k, *[1] * len(shape))))
            for name, shape in shapes.items()
        }

    def init_state(self, params: dict, xp: Any) -> dict:
        return {n: r.init_state({n: params[n]}, xp)[n] for n, r in self.rules.items()}

    def update(self, params: dict, grads: dict, state: dict, xp: Any) -> tuple[dict, dict]:
        new_params, new_state = {}, {}
        for name, rule in self.rules.items():
            p, s = rule.update({name: params[name]}, {name: grads[name]}, {name: state[name]}, xp)
            new_params[name], new_state[name] = p[name], s[name]
        return new_params, new_state


# --- the batched loops: each loop with a leading K axis ---------------------------------------
class _BatchedNumpy:
    backend = "numpy"
    failed: Mapping[int, tuple] = MappingProxyType({})  # elementwise updates raise for no job

    def __init__(self, problem: Any, rule: BatchedRule, k: int) -> None:
        self.problem, self.rule = problem, rule
        self.params = {
            n: np.broadcast_to(np.asarray(v, problem.dtype), (k, *np.shape(v))).copy()
            for n, v in problem.init.items()
        }  # each (K, *shape)
        self.opt_state = rule.init_state(self.params, np)

    def step(self, step: int) -> tuple[Any, dict, dict]:
        p = self.problem
        idx = p.batches.indices(step)
        x, y = (p.x, p.y) if idx is None else (p.x[idx], p.y[idx])
        x = p.model.inputs(x)
        pred = p.model.forward(self.params, x, np)  # (K, N)
        loss, dpred = p.loss.value_and_grad(pred, y)  # (K,), (K, N)
        grads = p.model.backward(self.params, x, dpred)  # in the run's dtype, as in NumpyLoop
        self.params, self.opt_state = self.rule.update(self.params, grads, self.opt_state, np)
        return loss, self.params, grads

    @staticmethod
    def to_numpy(value: Any) -> np.ndarray:
        return np.asarray(value)

    def job_state(self, j: int) -> dict:
        return {
            "params": {n: np.array(v[j]) for n, v in self.params.items()},
            "optimizer": _job_opt_state(self.opt_state, j, lambda a: np.array(a[j])),
        }


class _BatchedTorch:
    """What the two torch loops' batched versions share: the data on the device, the parameters
    as (K, *shape) leaves, and the K jobs' losses from one forward."""

    backend = "torch"

    def __init__(self, problem: Any, k: int) -> None:
        import torch

        from runner.loops.torch_common import TorchData

        self.torch, self.problem = torch, problem
        self.data = TorchData(problem)
        self.params = {
            n: self.data.tensor(np.repeat(np.asarray(v)[None], k, axis=0)).requires_grad_()
            for n, v in problem.init.items()
        }
        # Per-sample losses, averaged per job: the sum's gradient is each job's own.
        self.loss_fn = problem.loss.torch_loss()
        self.loss_fn.reduction = "none"

    def _losses(self, step: int) -> Any:
        """The K jobs' losses at `step`'s batch, (K,), with the graph to the leaves."""
        x, y = self.data.batch(step)
        model = self.problem.model
        pred = model.forward(self.params, model.inputs(x), self.torch)  # (K, N)
        return self.loss_fn(pred, y.expand_as(pred)).mean(dim=-1)

    @staticmethod
    def to_numpy(value: Any) -> np.ndarray:
        return value.detach().to("cpu").numpy()


class _BatchedAutograd(_BatchedTorch):
    failed: Mapping[int, tuple] = MappingProxyType({})  # elementwise updates raise for no job

    def __init__(self, problem: Any, rule: BatchedRule, k: int) -> None:
        super().__init__(problem, k)
        self.rule = rule
        with self.torch.no_grad():
            self.opt_state = rule.init_state(self._values(), self.torch)

    def _values(self) -> dict:
        return {n: p.detach() for n, p in self.params.items()}

    def step(self, step: int) -> tuple[Any, dict, dict]:
        loss = self._losses(step)
        loss.sum().backward()
        grads = {n: p.grad.clone() for n, p in self.params.items()}
        torch = self.torch
        with torch.no_grad():
            new, self.opt_state = self.rule.update(self._values(), grads, self.opt_state, torch)
            for n, p in self.params.items():
                p.copy_(new[n])
                p.grad.zero_()
        return loss.detach(), new, grads

    def job_state(self, j: int) -> dict:
        return {
            "params": {n: p.detach()[j].clone() for n, p in self.params.items()},
            "optimizer": _job_opt_state(self.opt_state, j, lambda a: a[j].clone()),
        }


class _BatchedOptim(_BatchedTorch):
    """The optim loop's K jobs: one batched forward and backward, then torch.optim itself steps
    every job. Job j's parameters are nn.Parameters over row j of the batched tensors, with an
    optimizer of their own at the job's rate, so each job's update, state and checkpoint are
    those of its own run; only the forward and backward are shared. A job whose step overflows
    the dtype diverges alone, and one whose step raises otherwise fails alone, as its run would."""

    def __init__(self, problem: Any, lrs: np.ndarray) -> None:
        from torch import nn

        super().__init__(problem, len(lrs))
        # nn.Parameter keeps the storage it is given: the optimizer's in-place updates of job
        # j's parameters are updates of row j.
        self.jobs = [
            {n: nn.Parameter(p.detach()[j]) for n, p in self.params.items()}
            for j in range(len(lrs))
        ]
        self.optimizers = [
            dataclasses.replace(problem.optimizer, lr=float(lr)).torch_optimizer(job.values())
            for job, lr in zip(self.jobs, lrs, strict=True)
        ]
        self.failed: dict[int, tuple[int, BaseException]] = {}  # job -> (step, what it raised)

    def step(self, step: int) -> tuple[Any, dict, dict]:
        from runner.loops.torch_common import step_or_overflow

        loss = self._losses(step)
        for p in self.params.values():
            p.grad = None
        loss.sum().backward()
        for j, (job, optimizer) in enumerate(zip(self.jobs, self.optimizers, strict=True)):
            if j in self.failed:
                continue
            for n, p in job.items():
                p.grad = self.params[n].grad[j]
            try:
                step_or_overflow(optimizer, job.values())  # an overflow: this job diverges
            except Exception as err:
                self.failed[j] = (step, err)
        params = {n: p.detach().clone() for n, p in self.params.items()}
        grads = {n: p.grad for n, p in self.params.items()}
        return loss.detach(), params, grads

    def job_state(self, j: int) -> dict:
        """What the optim loop's state() holds for job j's run."""
        return {
            "params": {n: p.detach().clone() for n, p in self.jobs[j].items()},
            "optimizer": self.optimizers[j].state_dict(),
        }


def _job_opt_state(state: dict, j: int, take: Any) -> dict:
    return {
        name: {k: (v if k == "step" else take(v)) for k, v in buffers.items()}
        for name, buffers in state.items()
    }


# --- the sweep: every job's outputs, from one batched training ---------------------------------
class _BatchedSweep:
    def __init__(self, launcher: Any, configs: list[DictConfig]) -> None:
        self.launcher = launcher
        self.configs = configs

    def run(self) -> list[JobReturn]:
        from runner.build import loop_class
        from runner.cli import final_line, report_failed_job, sweeper_value
        from runner.device import resolve_device
        from runner.metrics import Layout
        from runner.run import (
            Tracker,
            build_problem,
            initial_summary,
            open_sinks,
            save_state,
            settings_fingerprint,
        )
        from runner.schema import LogConf, TrainConf
        from runner.sinks.summary import write_summary

        started = time.perf_counter()
        first = self.configs[0]
        loop_name = first.loop.name
        train: TrainConf = OmegaConf.to_object(first.train)
        log_conf: LogConf = OmegaConf.to_object(first.log)
        device = resolve_device(first.device.name.value, loop_name)
        problem = build_problem(first, train, device)
        loop_cls = loop_class(first.loop)
        k = len(self.configs)
        lrs = np.array([float(c.optimizer.lr) for c in self.configs], dtype=np.float64)
        shapes = {n: np.shape(v) for n, v in problem.init.items()}
        if loop_name == "optim":
            batched = _BatchedOptim(problem, lrs)
        else:
            rule = BatchedRule(problem.optimizer, lrs, shapes)
            batched = (_BatchedNumpy if loop_name == "numpy" else _BatchedAutograd)(
                problem, rule, k
            )
        layout = Layout(shapes, log_conf.max_elements)
        n_values = layout.n_values

        # Every job's task config is job 0's but for the batched keys: copied from one template
        # without `hydra`, rather than from each job's whole config (a third of a job's set-up).
        task_template = copy.deepcopy(first)
        with read_write(task_template), open_dict(task_template):
            del task_template["hydra"]
        jobs = [self._start_job(cfg, task_template) for cfg in self.configs]
        trackers = [Tracker(layout, train.steps, log_conf.every_n_steps) for _ in jobs]
        sinks: list[list] = [[] for _ in jobs]
        summaries: list[dict[str, Any]] = []
        for j, job in enumerate(jobs):
            summary = initial_summary(problem, loop_cls.name, device, job["overrides"], trackers[j])
            write_summary(job["dir"] / "summary.json", summary)
            summaries.append(summary)
        fingerprints = [settings_fingerprint(j["task_cfg"], problem, j["choices"]) for j in jobs]

        def save_checkpoint(j: int) -> None:
            directory = jobs[j]["dir"] / "checkpoint"
            state = batched.job_state(j)
            save_state(directory, batched.backend, state, trackers[j], sinks[j], fingerprints[j])

        every = train.checkpoint_every
        live = list(range(k))  # jobs still training: not diverged
        pending: list[tuple] = []
        train_started = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                for j, job in enumerate(jobs):
                    sinks[j] = open_sinks(
                        job["task_cfg"],
                        log_conf,
                        layout,
                        job["dir"],
                        problem.dtype,
                        job["overrides"],
                        job["choices"],
                        None,
                    )
                for step in range(1, train.steps + 1):
                    pending.append(batched.step(step))
                    due = every > 0 and step % every == 0
                    if len(pending) < CHUNK and step != train.steps and not due:
                        continue
                    rows = self._rows(pending, batched, lrs, n_values)  # (K, T, D)
                    chunk_start = step - len(pending) + 1
                    pending.clear()
                    for j in list(live):
                        if j in batched.failed:  # its run stops before the step that raised
                            failed_at = batched.failed[j][0]
                            if failed_at > chunk_start:
                                trackers[j].consume(rows[j][: failed_at - chunk_start], sinks[j])
                            live.remove(j)
                            continue
                        trackers[j].consume(rows[j], sinks[j])
                        if trackers[j].diverged_at is not None:
                            live.remove(j)
                        elif due:
                            save_checkpoint(j)
                    if not live:
                        break
                for j in range(k):
                    if j in batched.failed:
                        summaries[j]["status"] = "failed"
                    elif trackers[j].diverged_at is not None:
                        summaries[j]["status"] = "diverged"
                    else:
                        summaries[j]["status"] = "completed"
                        if every > 0 and trackers[j].steps_completed % every != 0:
                            save_checkpoint(j)
            except BaseException as err:
                status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                for summary in summaries:
                    if summary["status"] == "running":
                        summary["status"] = status
                raise
            finally:
                train_s = time.perf_counter() - train_started
                wall_s = time.perf_counter() - started
                for j in range(k):
                    summary = summaries[j]
                    summary.update(trackers[j].results(), wall_s=wall_s)
                    done = summary["steps_completed"]
                    summary["steps_per_s"] = done / train_s if train_s > 0 else 0.0
                    for sink in sinks[j]:
                        sink.close(summary)
                    write_summary(jobs[j]["dir"] / "summary.json", summary)

        returns = []
        for j, job in enumerate(jobs):
            if j in batched.failed:  # as runner.cli reports a job that raised
                report_failed_job(batched.failed[j][1], job["dir"], multirun=True)
                returns.append(self._end_job(job, None))
                continue
            print(final_line(summaries[j], job["dir"], log_conf.max_elements), flush=True)
            returns.append(self._end_job(job, sweeper_value(summaries[j])))
        return returns

    @staticmethod
    def _rows(pending: list[tuple], batched: Any, lrs: np.ndarray, n_values: int) -> np.ndarray:
        """Host rows [loss, lr, params..., grads...] of every job: (K, T, D) float64."""
        to_numpy = batched.to_numpy
        t, k = len(pending), len(lrs)
        rows = np.empty((k, t, 2 + 2 * n_values))
        for i, (loss, params, grads) in enumerate(pending):
            rows[:, i, 0] = to_numpy(loss)
            at = 2
            for kind in (params, grads):
                for value in kind.values():
                    flat = to_numpy(value).reshape(k, -1)
                    rows[:, i, at : at + flat.shape[1]] = flat
                    at += flat.shape[1]
        rows[:, :, 1] = lrs[:, None]
        return rows

    def _start_job(self, cfg: DictConfig, task_template: DictConfig) -> dict[str, Any]:
        """What hydra.core.utils.run_job does before calling the task: the job's output_dir,
        its directory, logging and .hydra/, and the callbacks' on_job_start."""
        hydra_config = HydraConfig.instance()
        sweep = cfg.hydra.sweep
        if any("${hydra:" in str(sweep._get_node(key)._value()) for key in ("dir", "subdir")):
            hydra_config.set_config(cfg)  # the paths read the job's HydraConfig
        output_dir = os.path.join(
            str(OmegaConf.select(cfg, "hydra.sweep.dir")),
            str(OmegaConf.select(cfg, "hydra.sweep.subdir")),
        )
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
        hydra_config.set_config(cfg)
        task_cfg = copy.deepcopy(task_template)
        with read_write(task_cfg):
            for key in BATCHED_KEYS:
                OmegaConf.update(task_cfg, key, OmegaConf.select(cfg, key))
        ret = JobReturn()
        ret.cfg = task_cfg
        ret.hydra_cfg = hydra_config.cfg  # set_config's own copy, this job's alone
        ret.overrides = OmegaConf.to_container(cfg.hydra.overrides.task)
        ret.working_dir = os.getcwd()
        out = Path(cfg.hydra.runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
        if cfg.hydra.output_subdir is not None:
            hydra_output = out / str(cfg.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", hydra_output)
            _save_config(ret.hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(cfg.hydra.overrides.task, "overrides.yaml", hydra_output)
        self.launcher.hydra_context.callbacks.on_job_start(
            config=cfg, task_function=self.launcher.task_function
        )
        return {
            "cfg": cfg,
            "task_cfg": task_cfg,
            "dir": out,
            "return": ret,
            "overrides": list(ret.overrides),
            "choices": dict(cfg.hydra.runtime.choices),
        }

    def _end_job(self, job: dict[str, Any], final_loss: float | None) -> JobReturn:
        ret = job["return"]
        ret.return_value = final_loss  # what the task function returns: a sweeper minimises it
        ret.status = JobStatus.COMPLETED
        ret.task_name = JobRuntime.instance().get("name")
        HydraConfig.instance().cfg = ret.hydra_cfg  # what set_config(job["cfg"]) made of it
        self.launcher.hydra_context.callbacks.on_job_end(config=job["cfg"], job_return=ret)
        return ret
