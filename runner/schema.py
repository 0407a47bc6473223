"""Typed config schemas, registered in Hydra's ConfigStore, and the checks types cannot express.

Each YAML option under conf/<group>/ starts its defaults list with its schema from the
`schema/<group>` group stored here, so a wrong type or an unknown key fails while Hydra composes
the config, before anything is built. Ranges and cross-field rules (lr > 0, LBFGS only with the
optim loop, ...) are checked by `validate`, which raises one `ConfigError` naming key, value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import II, MISSING, DictConfig, OmegaConf

from runner import optim_rules, schedules
from runner.errors import ConfigError, UnknownKeyError


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


class DeviceName(Enum):
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"
    auto = "auto"  # cuda, else mps, else cpu


# --- model ---------------------------------------------------------------------------------
@dataclass
class ScalarModelConf:
    _target_: str = "runner.models.ScalarModel"
    init: float | None = 0.0  # y = w*x; null draws w like nn.Linear(1, 1) does, from train.seed


@dataclass
class LinearModelConf:
    _target_: str = "runner.models.LinearModel"
    init: float | None = None  # null: nn.Linear's default init, drawn from train.seed
    bias: bool = True
    out_features: int = 1  # weight [out_features, n_features], bias [out_features]


@dataclass
class MLPModelConf:
    _target_: str = "runner.models.MLPModel"
    hidden: list[int] = field(default_factory=lambda: [16])  # widths of the hidden layers
    activation: str = "tanh"  # tanh | relu | sigmoid, between the Linear layers
    out_features: int = 1
    bias: bool = True
    init: float | None = None  # null: nn.Linear's default init per layer, drawn from train.seed


@dataclass
class UserModuleConf:
    _target_: str = "runner.user_module.UserModule"
    # imported and checked by runner.user_module (an nn.Module subclass), never by Hydra
    target: str = MISSING  # the dotted path of your nn.Module subclass: tinynet.TinyMLP
    kwargs: Any = None  # a mapping, passed to its constructor: {hidden: 8}
    seed: int = II("train.seed")  # torch.manual_seed before the module is built
    _recursive_: bool = False  # kwargs are the user's values, never configs to build


# --- data ----------------------------------------------------------------------------------
@dataclass
class SeedLineConf:
    _target_: str = "runner.data.seed_line"
    val_fraction: float = 0.0  # rows held out for val_loss, drawn from train.seed


@dataclass
class PointsConf:
    _target_: str = "runner.data.points"
    x: Any = MISSING  # a list of numbers (one feature) or a list of rows
    y: Any = MISSING  # a list of numbers, or a list of rows (one value per output)
    val_fraction: float = 0.0  # rows held out for val_loss, drawn from train.seed


@dataclass
class SyntheticConf:
    _target_: str = "runner.data.synthetic"
    n_samples: int = 64
    n_features: int = 1
    weight: Any = 2.0  # one number for every feature, or a list with one per feature
    bias: float = 0.5
    noise: float = 0.1  # standard deviation of the Gaussian noise added to y
    seed: int = II("train.seed")
    val_fraction: float = 0.0  # rows held out for val_loss, drawn from data.seed
    task: str = "regression"  # regression | classification (labels from a linear rule)
    n_classes: int = 2  # classification: class ids 0 .. n_classes-1


@dataclass
class SklearnConf:
    _target_: str = "runner.data.sklearn_dataset"
    name: str = "iris"  # iris | wine | breast_cancer | diabetes (optional extra `datasets`)
    val_fraction: float = 0.0  # rows held out for val_loss, drawn from train.seed


@dataclass
class CsvConf:
    _target_: str = "runner.data.load_csv"
    path: str = MISSING
    features: list[str] | None = None  # null: every column but the target
    target: str = MISSING
    val_fraction: float = 0.0  # rows held out for val_loss, drawn from train.seed


# --- loss ----------------------------------------------------------------------------------
@dataclass
class MSEConf:
    _target_: str = "runner.losses.MSE"


@dataclass
class L1Conf:
    _target_: str = "runner.losses.L1"


@dataclass
class HuberConf:
    _target_: str = "runner.losses.Huber"
    delta: float = 1.0


@dataclass
class BCEWithLogitsConf:
    _target_: str = "runner.losses.BCEWithLogits"


@dataclass
class CrossEntropyConf:
    _target_: str = "runner.losses.CrossEntropy"


# --- optimizer and scheduler: the rules' and schedules' own dataclasses are the schemas -----
def _rule_schema(rule: type) -> type:
    """A rule's (or a schedule's) fields and defaults as a config schema, plus the `_target_`
    that builds it. A field without a default must be set (`???` until it is)."""
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, field(default=f"{rule.__module__}.{rule.__name__}"))
    ]
    hints = get_type_hints(rule)
    for f in dataclasses.fields(rule):
        hint = hints[f.name]
        if get_origin(hint) is tuple:  # configs hold lists, not tuples
            hint = list[get_args(hint)[0]]
        if f.default is dataclasses.MISSING:
            fields.append((f.name, hint, field(default=MISSING)))
        elif isinstance(f.default, tuple):
            fields.append((f.name, hint, field(default_factory=partial(list, f.default))))
        else:
            fields.append((f.name, hint, field(default=f.default)))
    return dataclasses.make_dataclass(f"{rule.__name__}Conf", fields)


OPTIMIZER_SCHEMAS = {
    name: _rule_schema(rule)
    for name, rule in {
        "sgd": optim_rules.SGD,
        "adam": optim_rules.Adam,
        "adamw": optim_rules.AdamW,
        "rmsprop": optim_rules.RMSprop,
        "adagrad": optim_rules.Adagrad,
        "nadam": optim_rules.NAdam,
        "radam": optim_rules.RAdam,
        "adamax": optim_rules.Adamax,
        "adadelta": optim_rules.Adadelta,
        "rprop": optim_rules.Rprop,
        "asgd": optim_rules.ASGD,
        "lbfgs": optim_rules.LBFGS,
    }.items()
}


SCHEDULER_SCHEMAS = {name: _rule_schema(cls) for name, cls in schedules.SCHEDULES.items()}


# --- loop and device -----------------------------------------------------------------------
@dataclass
class LoopConf:
    _target_: str = MISSING
    name: str = MISSING  # known before the loop's module (and torch) is imported


@dataclass
class DeviceConf:
    name: DeviceName = DeviceName.cpu


# What early stopping, the plateau schedule and the kept best parameters can watch.
MONITORED = ("loss", "val_loss")


# --- top level -----------------------------------------------------------------------------
@dataclass
class EarlyStopConf:
    monitor: str = "loss"  # loss | val_loss: what early stopping, plateau and `best` watch
    patience: int | None = None  # steps without improvement before stopping; null: off
    min_delta: float = 0.0  # an improvement is a drop of more than this


@dataclass
class TrainConf:
    steps: int = 100  # optimizer updates; the default run takes about a second
    seed: int = 0
    batch_size: int | None = None  # null: full batch; else shuffled mini-batches from seed
    clip_grad_norm: float | None = None  # clip_grad_norm_'s max_norm before each update; null: off
    clip_grad_value: float | None = None  # clip_grad_value_'s clip_value; null: off
    accumulate: int = 1  # consecutive mini-batches whose mean gradient makes one update
    dtype: DType = DType.float32
    checkpoint_every: int = 1000  # steps between checkpoints; 0 turns them off
    resume: bool = False  # continue the run in hydra.run.dir from its last checkpoint
    early_stop: EarlyStopConf = field(default_factory=EarlyStopConf)
    target_loss: float | None = None  # stop once the monitored value is at or below it


@dataclass
class LogConf:
    every_n_steps: int = 1  # the last step is always logged
    csv: bool = True
    tensorboard: bool = True
    max_elements: int = 16  # per parameter; larger ones are logged as norms only
    flush_secs: float = 1.0  # logged rows reach the disk at most this long after their step
    progress: bool = True  # a tqdm bar, shown only on a terminal
    landscape: bool = True  # landscape.png: the loss around the path, after training
    mlflow: bool = False  # an MLflow run too (optional extra: pip install 'runner[mlflow]')
    mlflow_uri: str | None = None  # tracking URI; null: MLflow's own (MLFLOW_TRACKING_URI)


@dataclass
class RunConf:
    model: Any = MISSING
    data: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loop: Any = MISSING
    device: Any = MISSING
    train: TrainConf = field(default_factory=TrainConf)
    log: LogConf = field(default_factory=LogConf)


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {
        "scalar": ScalarModelConf,
        "linear": LinearModelConf,
        "mlp": MLPModelConf,
        "module": UserModuleConf,
    },
    "data": {
        "seed_line": SeedLineConf,
        "points": PointsConf,
        "synthetic": SyntheticConf,
        "csv": CsvConf,
        "sklearn": SklearnConf,
    },
    "loss": {
        "mse": MSEConf,
        "l1": L1Conf,
        "huber": HuberConf,
        "bce_logits": BCEWithLogitsConf,
        "cross_entropy": CrossEntropyConf,
    },
    "optimizer": OPTIMIZER_SCHEMAS,
    "scheduler": SCHEDULER_SCHEMAS,
    "loop": {"loop": LoopConf},
    "device": {"device": DeviceConf},
}

# One token per process: with the time it names the default run directory, so two runs started
# in the same second never share one (Hydra's own default only has second resolution).
RUN_TOKEN = secrets.token_hex(3)


def register() -> None:
    """Stores every schema in Hydra's ConfigStore and the resolvers the configs use."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConf)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    if not OmegaConf.has_resolver("run_token"):
        OmegaConf.register_new_resolver("run_token", lambda: RUN_TOKEN)
    if not OmegaConf.has_resolver("job_dirname"):
        from runner.jobs import job_dirname

        OmegaConf.register_new_resolver("job_dirname", job_dirname)


# --- checks that types cannot express --------------------------------------------------------
MAX_SYNTHETIC_VALUES = 10**8  # 800 MB of float64: far beyond what these models need


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Refuses keys that the schema of their node does not have: a `+key=value` on the command
    line adds them past Hydra's own check, and nothing would ever read them."""
    owner = OmegaConf.get_type(node)
    names = {f.name for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else None
    for key in node:
        path = f"{prefix}{key}"
        if path == "hydra":  # Hydra's own settings, when a launcher passes the whole config
            continue
        if names is not None and key not in names:
            raise UnknownKeyError(path, node._get_node(key)._value(), owner)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            check_known_keys(child, f"{path}.")


def check_finite(cfg: DictConfig) -> None:
    """Refuses inf and nan anywhere in the config: no rate, threshold, weight, initial value or
    data point means anything non-finite, and a run given one would diverge at its first step."""
    sections = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in ((k, cfg[k]) for k in cfg if k != "hydra")
    }
    for path, value in _leaves(sections):
        if isinstance(value, list):
            if not all(math.isfinite(v) for v in _numbers(value)):
                raise ConfigError(path, value, "finite numbers")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(path, value, "a finite number")


def _leaves(tree: Any, prefix: str = ""):
    # (key path, value) for every value that is not a mapping; lists are values
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _numbers(values: list):
    for value in values:
        if isinstance(value, list):
            yield from _numbers(value)
        elif isinstance(value, float):
            yield value


def validate(cfg: DictConfig, loop_name: str) -> None:
    """Raises ConfigError for the first unknown key, non-finite number, out-of-range value or
    impossible combination."""
    check_known_keys(cfg)
    check_finite(cfg)
    train, log = cfg.train, cfg.log
    _at_least(train.steps, 1, "train.steps")
    _at_least(train.seed, 0, "train.seed")
    _at_least(train.checkpoint_every, 0, "train.checkpoint_every", "an integer >= 0 (0: off)")
    if train.batch_size is not None:
        _at_least(
            train.batch_size, 1, "train.batch_size", "an integer >= 1, or null for full batch"
        )
    early_stop = train.early_stop
    if early_stop.monitor not in MONITORED:
        raise ConfigError("train.early_stop.monitor", early_stop.monitor, " or ".join(MONITORED))
    if early_stop.monitor == "val_loss" and not cfg.data.val_fraction > 0:
        raise ConfigError(
            "train.early_stop.monitor",
            "val_loss",
            "loss, or val_loss with held-out rows (set data.val_fraction, e.g. 0.2)",
        )
    if early_stop.patience is not None:
        _at_least(early_stop.patience, 1, "train.early_stop.patience", "an integer >= 1, or null")
    if not early_stop.min_delta >= 0:
        raise ConfigError("train.early_stop.min_delta", early_stop.min_delta, "a number >= 0")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(
            "data.val_fraction", cfg.data.val_fraction, "a fraction of the rows, 0 <= f < 1"
        )
    _check_clipping(train.clip_grad_norm, train.clip_grad_value)
    _at_least(train.accumulate, 1, "train.accumulate")
    _at_least(log.every_n_steps, 1, "log.every_n_steps")
    _at_least(log.max_elements, 1, "log.max_elements")
    if not log.flush_secs >= 0:
        raise ConfigError("log.flush_secs", log.flush_secs, "a number of seconds >= 0")
    if log.mlflow:
        from runner.sinks.mlflow_sink import check_installed

        check_installed()

    if "delta" in cfg.loss and not cfg.loss.delta > 0:
        raise ConfigError("loss.delta", cfg.loss.delta, "a number > 0 (Huber's threshold)")

    # The optimizer's and the scheduler's own ranges are checked where they are built
    # (runner.build.build_optimizer, build_scheduler).
    if not getattr(get_class(cfg.model._target_), "hand_gradient", True) and loop_name == "numpy":
        raise ConfigError(
            "loop",
            loop_name,
            "autograd or optim with model=module (the numpy loop needs hand-written "
            "gradients, which a user's module does not have)",
        )

    rule = get_class(cfg.optimizer._target_)
    if not rule.manual and loop_name != "optim":
        raise ConfigError(
            "optimizer",
            rule.__name__.lower(),
            f"with loop=optim only (it needs torch.optim's closure); loop={loop_name} was given",
        )

    if train.accumulate > 1 and not rule.manual:
        raise ConfigError(
            "train.accumulate",
            train.accumulate,
            f"1 with optimizer={rule.__name__.lower()} (each of its steps evaluates the loss "
            "of one batch through a closure, several times)",
        )

    data = cfg.data
    if "n_samples" in data:
        _at_least(data.n_samples, 1, "data.n_samples")
        _at_least(data.n_features, 1, "data.n_features")
        _at_least(data.seed, 0, "data.seed")
        if data.n_samples * data.n_features > MAX_SYNTHETIC_VALUES:
            raise ConfigError(
                "data.n_samples",
                data.n_samples,
                f"n_samples * n_features <= {MAX_SYNTHETIC_VALUES:.0e} (n_features is "
                f"{data.n_features}); this runner trains small models in memory",
            )
        if not data.noise >= 0:
            raise ConfigError("data.noise", data.noise, "a standard deviation >= 0")


def _check_clipping(max_norm: float | None, clip_value: float | None) -> None:
    for key, value in (("train.clip_grad_norm", max_norm), ("train.clip_grad_value", clip_value)):
        if value is not None and not value > 0:
            raise ConfigError(key, value, "a number > 0, or null (off)")
    # One clipping at a time, as Keras (clipnorm / clipvalue) and Lightning
    # (gradient_clip_algorithm) allow: both at once has no order a user would take for granted.
    if max_norm is not None and clip_value is not None:
        raise ConfigError(
            "train.clip_grad_value",
            clip_value,
            f"null while train.clip_grad_norm is set ({max_norm}): one clipping at a time",
        )


def _at_least(value: int, low: int, key: str, allowed: str | None = None) -> None:
    if value < low:
        raise ConfigError(key, value, allowed or f"an integer >= {low}")
