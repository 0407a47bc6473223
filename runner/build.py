"""Every `instantiate` of the project: config nodes in, plain objects out."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.errors import ConfigError


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, letting our own ConfigError through unwrapped. Only the class
    that the node's schema names is built, whatever the node's `_target_` came to say."""
    schema = OmegaConf.get_type(node)
    known = dataclasses.is_dataclass(schema)
    target = (
        {f.name: f.default for f in dataclasses.fields(schema)}.get("_target_") if known else None
    )
    if not isinstance(target, str) or node.get("_target_") != target:
        raise ConfigError(
            f"{node._key()}._target_", node.get("_target_"), f"{target}, what its schema builds"
        )
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def build_optimizer(node: DictConfig) -> Any:
    """The update rule (runner.optim_rules) that the config's optimizer group picks, once its
    hyperparameters are in range (ConfigError for the first that is not)."""
    rule = instantiate(node, _convert_="all")
    for key, value, allowed in rule.check():
        raise ConfigError(f"optimizer.{key}", value, allowed)
    return rule


# Keys every data source has that the runner applies itself, after loading (runner.data.hold_out).
HELD_OUT_KEYS = ("val_fraction",)


def _without(node: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    """A copy of `node` without `keys` (of the same schema, so instantiate still checks it)."""
    node = copy.deepcopy(node)
    with open_dict(node):
        for key in keys:
            node.pop(key, None)
    return node


class NotTheRunners(ValueError):
    """A saved config's `_target_` that names no class of the runner's own (saved_node)."""


def saved_node(group: str, values: dict[str, Any]) -> DictConfig:
    """The config node of a part (model, data or loss) that a saved run's resolved config
    `values` describes, typed by the schema its `_target_` names, so that instantiating it can
    only ever build the runner's own classes; without the keys the runner applies after loading
    (HELD_OUT_KEYS). NotTheRunners for any other `_target_`."""
    from runner.schema import SCHEMAS

    schemas = {getattr(s, "_target_", None): s for s in SCHEMAS[group].values()}
    target = values.get("_target_")
    if target not in schemas:
        known = ", ".join(sorted(t for t in schemas if t))
        raise NotTheRunners(f"{group}._target_: {target!r} is not one of {known}")
    return _without(OmegaConf.merge(OmegaConf.structured(schemas[target]), values), HELD_OUT_KEYS)


def build_scheduler(node: DictConfig, steps: int) -> Any:
    """The learning-rate schedule (runner.schedules) that the config's scheduler group picks,
    for a run of `steps` steps, once its settings are in range (ConfigError for the first that
    is not)."""
    schedule = instantiate(node, _convert_="all")
    for key, value, allowed in schedule.check(steps):
        raise ConfigError(f"scheduler.{key}", value, allowed)
    return schedule


def loop_class(node: DictConfig) -> type:
    """The loop class the config's loop group picks (built later, from a Problem)."""
    cls = get_class(node._target_)
    assert cls.name == node.name, f"loop.name={node.name} but {node._target_} is {cls.name}"
    return cls


def build_parts(cfg: DictConfig, optimizer: Any = None) -> dict[str, Any]:
    """Model, data set, loss, optimizer rule and learning-rate schedule, as the config groups
    pick them (the rule is `optimizer` when the caller built it already)."""
    return {
        "model": instantiate(cfg.model),
        "data": instantiate(_without(cfg.data, HELD_OUT_KEYS), _convert_="all"),
        "loss": instantiate(cfg.loss),
        "optimizer": build_optimizer(cfg.optimizer) if optimizer is None else optimizer,
        "scheduler": build_scheduler(cfg.scheduler, cfg.train.steps),
    }
