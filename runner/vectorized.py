"""Learning-rate sweeps trained side by side as one problem (`hydra/launcher=vectorized`).

When the jobs of a sweep differ only in `optimizer.lr` (any loop; any optimizer but LBFGS), every
job starts from the same parameters and sees the same batches; only the rate differs. This module
only decides whether a sweep vectorizes and prepares the K job directories as Hydra's basic launcher
would; the training is `runner.run.run_jobs`, the driver of every run, with K jobs. Any other
sweep runs job by job, as Hydra's basic launcher runs it.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

log = logging.getLogger(__name__)

# The keys a vectorized sweep may vary: the loops take one value per job for them.
PER_JOB_KEYS = ("optimizer.lr",)
VECTORIZED_LOOPS = ("numpy", "autograd", "optim")


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    """The Launcher.launch of `launcher` (a configured VectorizedLauncher): all jobs side by side
    when the sweep allows it, else the basic launcher's job-by-job run."""
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs, reason = _vectorized_configs(launcher, job_overrides, initial_job_idx)
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
    log.info(f"Launching {len(configs)} jobs side by side")
    hydra_cfg = HydraConfig.instance().cfg
    try:
        return _VectorizedSweep(launcher, configs).run()
    finally:
        HydraConfig.instance().cfg = hydra_cfg
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)


# --- which sweeps vectorize -----------------------------------------------------------------------
def _vectorized_configs(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> tuple[list[DictConfig] | None, str]:
    """Every job's full config (with `hydra`), or None and why its jobs cannot train side by side;
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
    if not varied <= set(PER_JOB_KEYS):
        others = ", ".join(sorted(varied - set(PER_JOB_KEYS)))
        return None, f"the sweep varies {others} (only {', '.join(PER_JOB_KEYS)} may vary)"

    loader = launcher.hydra_context.config_loader
    first = _compose(loader, launcher.config, job_overrides[0], initial_job_idx)
    loop_name = first.loop.name
    if loop_name not in VECTORIZED_LOOPS:
        return None, f"loop={loop_name} (only {' and '.join(VECTORIZED_LOOPS)} vectorize)"
    from hydra.utils import get_class

    if not getattr(get_class(first.model._target_), "vectorizes", True):
        return None, "model=module (a user's module trains job by job: vmap may not take it)"
    rule = get_class(first.optimizer._target_)
    if not getattr(rule, "manual", False):  # LBFGS: each step re-evaluates the loss, per job
        return None, f"optimizer {rule.__name__} (its steps evaluate each job's loss apart)"
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
    from runner.build import build_optimizer, build_scheduler
    from runner.errors import describe_error
    from runner.schema import validate

    for j, cfg in enumerate(configs):
        try:
            validate(cfg, loop_name)
            build_optimizer(cfg.optimizer)
            build_scheduler(cfg.scheduler, cfg.train.steps)
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
            if override.key_or_group in PER_JOB_KEYS:
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


# --- the sweep: every job's outputs, trained side by side ---------------------------------
class _VectorizedSweep:
    def __init__(self, launcher: Any, configs: list[DictConfig]) -> None:
        self.launcher = launcher
        self.configs = configs

    def run(self) -> list[JobReturn]:
        from runner.jobs import final_line, report_failed_job, sweeper_value
        from runner.run import Finished, Job, MixedResumeSteps, run_jobs

        # Every job's task config is job 0's but for the per-job keys: copied from one template
        # without `hydra`, rather than from each job's whole config (a third of a job's set-up).
        task_template = copy.deepcopy(self.configs[0])
        with read_write(task_template), open_dict(task_template):
            del task_template["hydra"]
        max_elements = self.configs[0].log.max_elements
        started = [self._start_job(cfg, task_template) for cfg in self.configs]
        jobs = [Job(s["task_cfg"], s["dir"], s["overrides"], s["choices"]) for s in started]
        try:
            results = run_jobs(jobs)
        except MixedResumeSteps as err:
            print(f"vectorized launcher: {err}; resuming jobs one by one", flush=True)
            results = [run_jobs([job])[0] for job in jobs]
        returns = []
        for job, result in zip(started, results, strict=True):
            if result.error is not None:  # as the CLI reports a job that raised
                report_failed_job(result.error, job["dir"], in_sweep=True)
                returns.append(self._end_job(job, None))
                continue
            finished = isinstance(result.summary, Finished)
            print(final_line(result.summary, job["dir"], max_elements, finished), flush=True)
            returns.append(self._end_job(job, sweeper_value(result.summary)))
        return returns

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
            for key in PER_JOB_KEYS:
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
