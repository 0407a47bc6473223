"""The real command line, as users run it: in this process through the console script's cli(),
and in subprocesses where the process itself is what is checked (its exit code, a signal, a
terminal; slow: each start imports torch)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from runner.overrides import GROUPS
from tests.helpers import REPO, cli_in_process, run_cli, run_on_a_terminal

PRESETS = [
    "numpy_gd",
    "autograd_gd",
    "optim_gd",
    "linear_regression",
    "quadratic_bowl",
    "autodiff_graph",
    "tanh_mlp",
]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_through_the_cli(tmp_path, preset):
    result = cli_in_process(
        f"experiment={preset}", f"hydra.run.dir={tmp_path}/run", "log.progress=false", cwd=tmp_path
    )
    code, stdout, stderr = result.returncode, result.stdout, result.stderr
    assert code == 0, stderr
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("completed: ") and str(tmp_path / "run") in last
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert summary["status"] == "completed"
    assert summary["steps_completed"] == len(metrics) == metrics["step"].iloc[-1]
    assert summary["final_loss"] == pytest.approx(metrics["loss"].iloc[-1], rel=1e-6)
    assert "Traceback" not in stderr


def test_default_run_writes_a_directory_under_outputs_named_by_time_and_token(tmp_path):
    # Two processes never share one: test_robustness.py starts four at once.
    from runner.schema import RUN_TOKEN

    result = cli_in_process("train.steps=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = (p.parent for p in (tmp_path / "outputs").glob("*/*/summary.json"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", run.parent.name), run
    assert re.fullmatch(rf"\d\d-\d\d-\d\d_{RUN_TOKEN}", run.name), run
    assert (run / ".hydra" / "config.yaml").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_the_issue_example_overrides(tmp_path):
    result = cli_in_process(
        "loop=numpy",
        "optimizer=adam",
        "optimizer.lr=0.05",
        "model=linear",
        "data=synthetic",
        "data.n_features=3",
        "train.batch_size=8",
        "train.dtype=float64",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert [c for c in metrics.columns if c.startswith("param/")] == [
        "param/weight/0",
        "param/weight/1",
        "param/weight/2",
        "param/bias",
    ]


def test_user_csv_data(tmp_path):
    (tmp_path / "prices.csv").write_text("size,age,price\n50,10,150\n80,5,260\n65,30,170\n")
    result = cli_in_process(
        "data=csv",
        "data.path=prices.csv",
        "data.features=[size,age]",
        "data.target=price",
        "model=linear",
        "optimizer=adam",
        "optimizer.lr=0.5",
        "train.steps=50",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["overrides"][:2] == ["data=csv", "data.path=prices.csv"]
    assert len(summary["params"]["weight"][0]) == 2


def test_multirun_names_job_directories_after_the_swept_values(tmp_path):
    result = cli_in_process(
        "-m", "optimizer.lr=0.001,0.01", "train.steps=5", "loop=numpy",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0_optimizer.lr=0.001", "1_optimizer.lr=0.01"]  # train.steps is not swept
    lrs = [pd.read_csv(tmp_path / "sweep" / job / "metrics.csv")["lr"].iloc[0] for job in jobs]
    assert lrs == [0.001, 0.01]


def test_help_lists_every_shipped_option(tmp_path):
    result = cli_in_process("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    groups: dict[str, str] = {}
    for line in result.stdout.split("== Config groups ==")[1].split("Examples:")[0].splitlines():
        if line[:1].isspace() and groups:  # a long group's options go on in the next line
            groups[list(groups)[-1]] += line
        elif ":" in line:
            key, options = line.split(":", 1)
            groups[key] = options
    conf = REPO / "conf"
    for group in GROUPS:  # every group the command line picks an option of
        shipped = {p.stem for p in (conf / group).glob("*.yaml")}
        listed = {word for word in groups[group].replace("|", " ").split() if word in shipped}
        assert listed == shipped, group


def test_help_names_every_console_script(tmp_path):
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n\n")[0]
    scripts = [line.split("=")[0].strip() for line in section.splitlines() if "=" in line]
    assert "runner-predict" in scripts
    result = cli_in_process("--help", cwd=tmp_path)
    more = result.stdout.split("More:")[1].split("== Config")[0]
    assert {name for name in scripts if name != "runner"} <= set(more.split())
    assert "train.resume=true" in more and "tensorboard --logdir" in more


def test_help_is_hydras_own_text(tmp_path, monkeypatch):
    # The runner prints the help itself (composing once); Hydra's own path must agree with it.
    from runner import cli

    args = ["optimizer=adam", "--help", "--resolve"]
    ours = cli_in_process(*args, cwd=tmp_path)
    monkeypatch.setattr(cli, "_print_help", lambda argv: False)
    hydras = cli_in_process(*args, cwd=tmp_path)
    assert ours.returncode == hydras.returncode == 0, ours.stderr + hydras.stderr
    assert ours.stdout == hydras.stdout
    assert "optimizer:" in ours.stdout and "betas:" in ours.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--help", "hydra.help.template=groups: $APP_CONFIG_GROUPS"],  # Hydra fills it
        ["--hydra-help"],
        ["--help", "--config-name", "other"],
        ["train.steps=3"],
    ],
)
def test_help_goes_to_hydra_where_the_runner_cannot_print_it(argv, capsys):
    from runner.cli import _print_help

    assert _print_help(argv) is False
    assert capsys.readouterr().out == ""


def test_version_is_the_runners(tmp_path):
    from importlib.metadata import version

    result = cli_in_process("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"runner {version('runner')}\n"


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = cli_in_process("--cfg", "job", "optimizer=adam", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "_target_: runner.optim_rules.Adam" in result.stdout
    assert "betas:" in result.stdout


BAD = [
    (
        ["optimizer=adamx"],
        "optimizer=adamx: expected one of adadelta, adagrad, adam, adamax, adamw, asgd, lbfgs,"
        " nadam, radam, rmsprop, rprop, sgd",
    ),
    (["loop=jax"], "loop=jax: expected one of autograd, numpy, optim"),
    (
        ["scheduler=cosin"],
        "scheduler=cosin: expected one of cosine, exponential, linear, multistep, none, plateau, "
        "step, warmup_cosine; did you mean cosine?",
    ),
    (["scheduler=step"], "scheduler.step_size=???: expected a value (this option needs it set)"),
    (
        ["scheduler=warmup_cosine", "scheduler.warmup_steps=100"],
        "scheduler.warmup_steps=100: expected an integer >= 0 and < train.steps (100): the "
        "cosine part lasts train.steps - warmup_steps",
    ),
    (["optimizer.lr=fast"], "optimizer.lr=fast: expected a number"),
    (["train.steps=10.5"], "train.steps=10.5: expected an integer"),
    (["optimizer.lr=inf"], "optimizer.lr=inf: expected a finite number"),
    (["model.init=nan"], "model.init=nan: expected a finite number"),
    (["=5"], "=5: expected KEY=VALUE, with a key before the ="),
    (["--config-dir=no/such/dir"], "/no/such/dir: expected an existing directory"),
    (
        ["data=csv", "data.features=size,age"],
        "data.features=size,age: expected a list [size,age], a quoted string 'size,age', or -m",
    ),
    (["optimiser=adam"], "optimiser=adam: unknown key; the config has: model, data, loss, "),
    (["optimiser=adam"], "; did you mean optimizer?"),
    (
        ["optimizer=adamm"],
        "expected one of adadelta, adagrad, adam, adamax, adamw, asgd, lbfgs, nadam, radam, "
        "rmsprop, rprop, sgd; did you mean adam?",
    ),
    (["+train.lr=5"], "train.lr=5: unknown key; train has: steps, seed, batch_size, "),
    (["+train.stpes=5"], "train.stpes=5: unknown key; train has: steps, seed, "),
    (
        ["+optimizer.lrr=5"],
        "optimizer.lrr=5: unknown key; optimizer has: lr, momentum, dampening, nesterov, "
        "weight_decay, maximize; did you mean lr?",
    ),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0: expected a number > 0"),
    (["train.steps=0"], "train.steps=0: expected an integer >= 1"),
    (["train.dtype=float16"], "train.dtype=float16: expected one of float32, float64"),
    (
        ["optimizer.momentun=0.9"],
        "optimizer.momentun=0.9: unknown key; optimizer has: lr, momentum",
    ),
    (["loss=huber", "loss.delta=-2"], "loss.delta=-2.0: expected a number > 0"),
    (
        ["data=points", "data.x=[1,2]", "data.y=[1]"],
        "data.y=[1.0]: expected as many values as data.x has rows (2)",
    ),
    (["data=synthetic", "data.n_features=2"], "model=scalar: expected data with one feature"),
    (
        ["data=csv", "data.path=missing.csv", "data.target=y"],
        "data.path=missing.csv: expected an existing CSV file",
    ),
    (["data=csv", "data.target=y"], "data.path=???: expected a value"),
    (
        ["data=csv", "data.path=words.csv", "data.target=y"],
        "data.path=words.csv: expected numbers in column 'x'; row 2 holds abc",
    ),
    (
        ["data=csv", "data.path=nan.csv", "data.target=y"],
        "expected finite numbers; x has nan at row 2, column 'x'",
    ),
    (
        ["data=csv", "data.path=nan.csv", "data.target=price"],
        "data.target=price: expected columns of nan.csv: ['x', 'y']",
    ),
    (
        ["data=csv", "data.path=empty.csv", "data.target=y"],
        "data.path=empty.csv: expected a CSV file with a header row (found an empty file)",
    ),
    (["device=cuda"], "device=cuda: expected a device present on this machine"),
    (["optimizer=lbfgs", "loop=numpy"], "optimizer=lbfgs: expected with loop=optim only"),
    (
        ["optimizer=rprop", "optimizer.etas=[2,0.5]"],
        "optimizer.etas=[2.0, 0.5]: expected two numbers [etaminus, etaplus] with 0 < etaminus "
        "< 1 < etaplus",
    ),
    (
        ["optimizer=lbfgs", "optimizer.maximize=true"],
        "optimizer.maximize=true: unknown key; optimizer has: lr, max_iter, history_size, "
        "line_search_fn",
    ),
    (
        ["experiment=nope"],
        "experiment=nope: expected one of autodiff_graph, autograd_gd, linear_regression, numpy_gd",
    ),
    (["train.steps=[1"], "cannot parse the command line"),
]


@pytest.mark.parametrize(
    "args,message", BAD, ids=lambda v: " ".join(v)[:50] if isinstance(v, list) else ""
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    if any(a.startswith("device=cuda") for a in args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    (tmp_path / "words.csv").write_text("x,y\n1,2\nabc,3\n")
    (tmp_path / "nan.csv").write_text("x,y\n1,2\n,3\n")
    (tmp_path / "empty.csv").write_text("")
    result = cli_in_process(*args, "hydra.run.dir=run", cwd=tmp_path)
    code, stderr = result.returncode, result.stderr
    assert code == 2
    assert stderr.strip().splitlines() == [f"runner: error: {message}"] or (
        len(stderr.strip().splitlines()) == 1 and message in stderr
    ), stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "run").exists()  # nothing left for runner-report to call crashed


@pytest.mark.slow
@pytest.mark.parametrize("args", [["optimizer=adamx"], ["optimizer.lr=-1"], ["=5"]])
def test_bad_input_exits_2_from_the_process_too(tmp_path, args):
    result = run_cli(*args, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("runner: error: ") and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_full_error_shows_the_traceback(tmp_path):
    result = run_cli("optimizer.lr=-1", cwd=tmp_path, HYDRA_FULL_ERROR="1")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.slow
def test_console_script_and_progress_bar_on_a_terminal(tmp_path):
    import shutil

    script = shutil.which("runner", path=os.path.dirname(sys.executable)) or "runner"
    argv = [script, "train.steps=20000", "loop=numpy", "log.landscape=false", "hydra.run.dir=run"]
    code, text = run_on_a_terminal(argv, tmp_path)
    assert code == 0, text
    assert "step/s" in text and "/20000 [" in text and "loss=" in text  # the tqdm bar
    assert "completed: 20000 steps" in text


@pytest.mark.slow
def test_the_fast_exit_keeps_what_a_normal_exit_does(tmp_path):
    # exit_now skips only the interpreter's teardown: threads are waited for, atexit handlers
    # run, buffered output arrives and the exit code is the one given.
    marker = tmp_path / "thread_done"
    code = (
        "import atexit, sys, threading, time\n"
        "from runner.exiting import exit_now\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        f"def late():\n    time.sleep(0.3)\n    open({str(marker)!r}, 'w').close()\n"
        "threading.Thread(target=late).start()\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_now(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered, no newlineatexit ran\n"
    assert marker.exists()


def _files(directory) -> dict:
    return {
        p.relative_to(directory): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_run_directory_that_holds_a_run_is_not_started_over(tmp_path):
    args = ["loop=numpy", "train.steps=3", "hydra.run.dir=outputs/long"]
    assert cli_in_process(*args, cwd=tmp_path).returncode == 0
    before = _files(tmp_path)
    again = cli_in_process(*args, cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert again.stderr.splitlines() == [
        "runner: error: hydra.run.dir=outputs/long: expected a directory that holds no run yet "
        "(add train.resume=true to continue the run there, or choose another directory)"
    ]
    assert _files(tmp_path) == before  # .hydra/ and the log file included
    resumed = cli_in_process(*args, "train.steps=5", "train.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "outputs/long/summary.json").read_text())["steps_completed"] == 5


def test_an_empty_run_directory_is_refused(tmp_path):
    result = cli_in_process("loop=numpy", "train.steps=3", "hydra.run.dir=", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "runner: error: hydra.run.dir='': expected a directory (an empty one would put the run's "
        "files into the current directory)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_directory_that_holds_runs_is_not_started_over(tmp_path):
    args = ["-m", "loop=numpy", "optimizer.lr=0.01,0.1", "train.steps=3", "hydra.sweep.dir=sweep"]
    assert cli_in_process(*args, cwd=tmp_path).returncode == 0
    before = _files(tmp_path)
    again = cli_in_process(*args, cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert again.stderr.splitlines() == [
        "runner: error: hydra.sweep.dir=sweep: expected a directory that holds no runs yet "
        "(add train.resume=true to continue its jobs, or choose another directory)"
    ]
    assert _files(tmp_path) == before


@contextlib.contextmanager
def _read_only(directory):
    """`directory` made read-only, for root too (who ignores permission bits): chattr +i."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
            pytest.skip("root, and no chattr +i on this file system")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


@pytest.mark.parametrize("where", ["ro/run", "ro"])
def test_a_read_only_run_directory_is_one_line_naming_it(tmp_path, where):
    (tmp_path / "ro").mkdir()  # "ro": the run directory exists and is read-only itself
    with _read_only(tmp_path / "ro"):
        result = cli_in_process(
            "loop=numpy", "train.steps=3", f"hydra.run.dir={where}", cwd=tmp_path
        )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"runner: error: {tmp_path / 'ro'}") or line.startswith(
        f"runner: error: {where}"
    ), line
    assert line.endswith((": Permission denied", ": Operation not permitted")), line


def test_readme_table_of_groups_lists_every_shipped_option():
    readme = (REPO / "README.md").read_text()
    table = readme.split("| group | options |")[1].split("\n\n")[0]
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2]
        for line in table.splitlines()
        if line.startswith("| `")
    }
    for group in GROUPS:
        shipped = {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}
        listed = {word.strip("`,;()") for word in rows[group].split()}
        assert shipped <= listed, (group, shipped - listed)
