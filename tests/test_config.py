"""Every option of every config group composes and runs; schema defaults equal torch's; bad
input fails with one line naming key, value and what is allowed (checked in run() here and
through the real CLI in test_cli.py)."""

from __future__ import annotations

import inspect

import pytest
import torch

from runner.errors import ConfigError
from runner.schema import SCHEMAS
from tests.helpers import compose_config

OPTIONS = {
    "model": ["scalar", "linear", "mlp", "module"],
    "data": ["seed_line", "points", "synthetic", "csv", "sklearn"],
    "loss": ["mse", "l1", "huber", "bce_logits", "cross_entropy"],
    "optimizer": [
        "sgd",
        "adam",
        "adamw",
        "rmsprop",
        "adagrad",
        "nadam",
        "radam",
        "adamax",
        "adadelta",
        "rprop",
        "asgd",
        "lbfgs",
    ],
    "scheduler": [
        "none",
        "step",
        "multistep",
        "exponential",
        "cosine",
        "linear",
        "warmup_cosine",
        "plateau",
    ],
    "loop": ["numpy", "autograd", "optim"],
    "device": ["cpu", "auto"],
}
NEEDS = {  # what an option needs besides itself to make a runnable experiment
    "points": ["data.x=[1,2,3]", "data.y=[2,4,6]"],
    "sklearn": ["model=linear"],  # iris: 4 features, its class ids as numbers to fit
    "bce_logits": ["data=points", "data.x=[1,2,3]", "data.y=[0,1,1]"],
    "cross_entropy": [
        "data=synthetic",
        "data.task=classification",
        "model=linear",
        "model.out_features=2",
    ],
    "module": ["model.target=tests.user_modules.TinyMLP"],
    "lbfgs": ["loop=optim"],
    "step": ["scheduler.step_size=2"],
    "multistep": ["scheduler.milestones=[2,4]"],
    "exponential": ["scheduler.gamma=0.9"],
    "warmup_cosine": ["scheduler.warmup_steps=2"],
}


def test_option_lists_match_the_config_folders():
    groups = ("model", "data", "loss", "optimizer", "scheduler")
    shipped = {g: sorted(SCHEMAS[g]) for g in groups}
    assert shipped == {g: sorted(OPTIONS[g]) for g in shipped}


@pytest.mark.parametrize(
    "group,option", [(g, o) for g, options in OPTIONS.items() for o in options]
)
def test_every_option_composes_and_runs(runs, tmp_path, group, option):
    extra = list(NEEDS.get(option, []))
    if option == "csv":
        path = tmp_path / "prices.csv"
        path.write_text("size,age,price\n1,5,10\n2,3,14\n3,8,19\n4,1,24\n")
        extra = [f"data.path={path}", "data.target=price", "model=linear"]
    summary, metrics = runs(f"{group}={option}", *extra, "train.steps=5")
    assert summary["status"] == "completed"
    assert metrics["step"].tolist() == [1, 2, 3, 4, 5]
    assert metrics.notna().all().all()


@pytest.mark.parametrize(
    "option,torch_class",
    [
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
        ("adagrad", torch.optim.Adagrad),
        ("nadam", torch.optim.NAdam),
        ("radam", torch.optim.RAdam),
        ("adamax", torch.optim.Adamax),
        ("adadelta", torch.optim.Adadelta),
        ("rprop", torch.optim.Rprop),
        ("asgd", torch.optim.ASGD),
        ("lbfgs", torch.optim.LBFGS),
        ("sgd", torch.optim.SGD),
    ],
)
def test_optimizer_defaults_equal_torchs(option, torch_class):
    cfg = compose_config(f"optimizer={option}").optimizer
    defaults = inspect.signature(torch_class).parameters
    for key, value in cfg.items():
        if key == "_target_":
            continue
        expected = defaults[key].default
        if option == "sgd" and key == "lr":
            expected = 0.01  # SPEC: our one deliberate difference
        if isinstance(expected, tuple):  # betas, etas, step_sizes: lists in a config
            value, expected = list(value), list(expected)
        assert value == expected, key


def test_experiment_settings_can_be_overridden_on_the_command_line(runs):
    summary, metrics = runs("experiment=numpy_gd", "loop=autograd", "train.steps=3")
    assert summary["loop"] == "autograd" and len(metrics) == 3


BAD_INPUTS = [
    (["optimizer.lr=0"], "optimizer.lr=0.0: expected a number > 0"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1: expected a number > 0"),
    (["train.steps=0"], "train.steps=0: expected an integer >= 1"),
    (["train.batch_size=0"], "train.batch_size=0: expected an integer >= 1, or null"),
    (["loss=huber", "loss.delta=-1"], "loss.delta=-1.0: expected a number > 0"),
    (["data=points", "data.x=[1,2,3]", "data.y=[1,2]"], "data.y=[1.0, 2.0]: expected as many"),
    (
        ["data=synthetic", "data.n_features=3"],
        "model=scalar: expected data with one feature (y = w*x); the data has 3",
    ),
    (["optimizer=lbfgs", "loop=numpy"], "optimizer=lbfgs: expected with loop=optim only"),
    (["optimizer=lbfgs", "loop=autograd"], "loop=autograd was given"),
    (["device=mps", "loop=numpy"], "device=mps: expected cpu or auto with loop=numpy"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], "optimizer.betas="),
    (["optimizer=sgd", "optimizer.nesterov=true"], "optimizer.nesterov=true"),
    (
        ["optimizer=rprop", "optimizer.etas=[2,0.5]"],
        "optimizer.etas=[2.0, 0.5]: expected two numbers [etaminus, etaplus] with 0 < etaminus "
        "< 1 < etaplus",
    ),
    (
        ["optimizer=rprop", "optimizer.step_sizes=[1,0.1]"],
        "optimizer.step_sizes=[1.0, 0.1]: expected two numbers [smallest, largest] with 0 <=",
    ),
    (["optimizer=adadelta", "optimizer.rho=1.5"], "optimizer.rho=1.5: expected a number in [0, 1]"),
    (["optimizer=nadam", "optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: expected two numbers"),
    (
        ["optimizer=nadam", "optimizer.momentum_decay=-1"],
        "optimizer.momentum_decay=-1.0: expected a number >= 0",
    ),
    (["optimizer=asgd", "optimizer.lambd=-1"], "optimizer.lambd=-1.0: expected a number >= 0"),
    (["train.seed=-3"], "train.seed=-3: expected an integer >= 0"),
    (["log.every_n_steps=0"], "log.every_n_steps=0: expected an integer >= 1"),
    (["train.clip_grad_norm=0"], "train.clip_grad_norm=0.0: expected a number > 0, or null (off)"),
    (["train.clip_grad_value=-1"], "train.clip_grad_value=-1.0: expected a number > 0, or null"),
    (
        ["train.clip_grad_norm=1", "train.clip_grad_value=0.5"],
        "train.clip_grad_value=0.5: expected null while train.clip_grad_norm is set (1.0): one "
        "clipping at a time",
    ),
    (["train.accumulate=0"], "train.accumulate=0: expected an integer >= 1"),
    (
        ["train.accumulate=2"],
        "train.accumulate=2: expected 1 with full-batch training (one batch is the whole data); "
        "set train.batch_size to accumulate mini-batches",
    ),
    (
        ["train.accumulate=2", "train.batch_size=4"],  # the seed line's 4 samples: one batch
        "train.accumulate=2: expected 1 with full-batch training",
    ),
    (
        ["train.accumulate=3", "train.batch_size=2"],
        "train.accumulate=3: expected at most 2, the mini-batches in one epoch (4 samples in "
        "batches of 2)",
    ),
    (
        ["optimizer=lbfgs", "train.accumulate=2", "train.batch_size=2"],
        "train.accumulate=2: expected 1 with optimizer=lbfgs",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_values_are_refused_before_training(runs, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        runs(*overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*/metrics.csv"))  # nothing half-written


@pytest.mark.parametrize(
    "overrides",
    [
        ("loop=numpy", "train.steps=5"),
        ("optimizer.lr=0.5", "optimizer=adam", "optimizer.betas=[0.8,0.9]"),
        ("experiment=linear_regression", "train.steps=3", "loop=autograd"),
        ("data=synthetic", "train.batch_size=4", "log.every_n_steps=2", "model.init=null"),
        ("model=module", "model.target=examples.tinynet.TinyNet", "model.kwargs={hidden:4}"),
        ("train.dtype=float64", "log.csv=false", "hydra.run.dir=elsewhere"),
        ("optimizer=adam", "model=scalar", "loop=numpy"),  # a default choice, named
        ("experiment=tanh_mlp", "model=scalar", "train.steps=2"),  # ... after a preset's
        ("loop=numpy", "loop=autograd"),  # the last of two choices
        ("train.steps=abc",),  # each error as Hydra raises it
        ("no_such_key=1",),
        ("train.no_such_key=1",),
        ("+train.extra=1",),
    ],
)
def test_the_tests_shortcut_composes_what_hydra_composes(overrides):
    # tests/helpers.compose_config applies plain `key=value` overrides to a composition of the
    # group choices alone; the suite's configs are only as real as this.
    from omegaconf import OmegaConf

    from tests.helpers import compose_config_by_hydra

    def outcome(compose):
        try:
            cfg = compose(*overrides)
        except Exception as err:
            return type(err).__name__, str(err)
        flags = (OmegaConf.is_struct(cfg), OmegaConf.is_readonly(cfg))
        return OmegaConf.to_yaml(cfg), flags, OmegaConf.get_type(cfg.train)

    assert outcome(compose_config) == outcome(compose_config_by_hydra)


def test_no_config_sets_hydra_mode_so_the_tests_cli_need_not_look():
    # tests/helpers.cli_in_process skips Hydra.get_mode, which composes a command's config only
    # to read hydra.mode: None here, from Hydra's own default, and no shipped file sets it.
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from tests.helpers import REPO

    for path in sorted((REPO / "conf").rglob("*.yaml")):
        assert OmegaConf.select(OmegaConf.load(path), "hydra.mode") is None, path
    overrides = ["optimizer.lr=0.1,0.2", "hydra/launcher=vectorized", "experiment=tanh_mlp"]
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN,
                                   validate_sweep_overrides=False)  # fmt: skip
        assert hydra.get_mode("config", overrides) is None
    assert cfg.hydra.mode is None and cfg.hydra.launcher._target_.endswith("VectorizedLauncher")


def test_hydra_composes_a_sweep_job_alike_twice_so_the_tests_cli_composes_it_once():
    # tests/helpers.cli_in_process composes each sweep job once (composed_once): what Hydra's
    # sweeper composes to check a job equals what the launcher composes again to run it, and
    # every caller gets a copy of its own.
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from tests.helpers import composed_once

    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        master = hydra.compose_config("config", ["optimizer.lr=0.1,0.2", "loop=numpy"],
                                      run_mode=RunMode.MULTIRUN)  # fmt: skip
        loader, job = hydra.config_loader, ["optimizer.lr=0.2", "loop=numpy"]
        checked, launched = (loader.load_sweep_config(master, job) for _ in range(2))
        once = composed_once(type(loader).load_sweep_config)
        first, second = once(loader, master, job), once(loader, master, job)
    texts = {OmegaConf.to_yaml(c) for c in (checked, launched, first, second)}
    assert len(texts) == 1 and checked.optimizer.lr == 0.2
    with open_dict(first):
        first.hydra.job.num = 7
    assert OmegaConf.is_missing(second.hydra.job, "num")  # a copy of its own
