"""The project's Hydra plugins: the `vectorized` launcher and the sweeper that goes with it.

`runner -m optimizer.lr=0.001,0.01,0.1 loop=numpy hydra/launcher=vectorized` writes the same
job directories as the basic launcher; sweeps that vary anything else run job by job (one line
says why). The work is in runner.vectorized; this module is what Hydra discovers (it loads
plugin modules outside sys.modules, hence no `from __future__ import annotations` here).

`hydra/sweeper=runner`, which `runner` picks along with `hydra/launcher=vectorized` (see
runner.cli), is Hydra's basic sweeper less one duplicate. That sweeper composes every job's
config up front, to catch bad overrides before any job runs; the vectorized launcher makes the
same check itself, from one composition instead of one per job, and then the sweeper skips it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.runner_launchers.vectorized_launcher.VectorizedLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf, provider="runner"
)


@dataclass
class RunnerSweeperConf:
    _target_: str = "hydra_plugins.runner_launchers.vectorized_launcher.RunnerSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (Hydra reads these annotations)
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/sweeper", name="runner", node=RunnerSweeperConf, provider="runner"
)


class VectorizedLauncher(Launcher):
    checks_every_job = True  # composes and checks every job's config before any runs

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from runner.vectorized import launch

        return launch(self, job_overrides, initial_job_idx)


class RunnerSweeper(Sweeper):
    """Hydra's basic sweeper (held, not subclassed: Hydra re-executes its core plugin modules,
    which breaks a subclass's super() calls), without its per-job composition check when the
    launcher does that check itself."""

    def __init__(self, max_batch_size: Any = None, params: Any = None) -> None:
        from hydra._internal.core_plugins import basic_sweeper

        self.basic = basic_sweeper.BasicSweeper(max_batch_size=max_batch_size, params=params)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.basic.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if getattr(self.basic.launcher, "checks_every_job", False):
            # Kept over a subclass (Hydra re-executes its core plugin modules, which breaks a
            # subclass's super()): composing a job costs about 0.1 s, more than a job trains.
            self.basic.validate_batch_is_legal = _no_check

    def sweep(self, arguments: list[str]) -> Any:
        return self.basic.sweep(arguments)


def _no_check(batch: Sequence[Sequence[str]]) -> None:
    return None
