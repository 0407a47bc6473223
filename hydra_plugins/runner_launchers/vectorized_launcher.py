"""`hydra/launcher=vectorized`: a learning-rate sweep trained as one batched problem.

`runner -m optimizer.lr=0.001,0.01,0.1 loop=numpy hydra/launcher=vectorized` writes the same
job directories as the basic launcher; sweeps that vary anything else run job by job (one line
says why). The work is in runner.vectorized; this module is what Hydra discovers (it loads
plugin modules outside sys.modules, hence no `from __future__ import annotations` here).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.runner_launchers.vectorized_launcher.VectorizedLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf, provider="runner"
)


class VectorizedLauncher(Launcher):
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
