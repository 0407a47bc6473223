"""Nothing let in from the command line: keys that pick what gets built, keys no schema has,
non-finite numbers, inline data and sweeps too large to parse or list, names too long for a
directory; each refused with one line, exit 2, and no run directory left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from runner.build import build_parts
from runner.errors import ConfigError, describe_error
from runner.jobs import SWEPT_KEYS_ENV, first_exit_code, job_dirname
from runner.overrides import MAX_INLINE_VALUES, MAX_JOBS, check_command_line
from tests.helpers import cli_in_process, compose_config

RESERVED = [
    ["loss._target_=builtins.print"],
    ["+loss._args_=[evil.pkl]"],
    ["++loss._partial_=true"],
    ["~loss._target_"],
    ["model._recursive_=false"],
    ["data._convert_=all"],
    ["+_target_=builtins.print"],
    ["+hydra.callbacks.evil._target_=builtins.print"],
    ["data=points", "data.x={_target_:builtins.print}"],
    ["-m", "loss._target_=builtins.print,runner.losses.MSE"],
    ["-m", "data=points", "data.x=[1],{_args_:[1]}"],
    ["data=points", "data.x='${oc.decode:${oc.env:PAYLOAD}}'"],
    ["data=points", "data.x='${oc.create:{a: 1}}'"],
]


@pytest.mark.parametrize("args", RESERVED, ids=" ".join)
def test_instantiation_keys_are_refused_before_composing(args):
    with pytest.raises(ConfigError) as err:
        check_command_line(args)
    typed = args[-1].partition("=")[0]
    assert str(err.value).startswith(typed), str(err.value)
    assert "\n" not in str(err.value)


def test_a_target_that_reaches_the_config_anyway_is_never_built():
    # compose() takes no command-line checks: build refuses what the schema does not name
    cfg = compose_config("loss._target_=builtins.print")
    with pytest.raises(ConfigError, match=r"^loss._target_=builtins.print: expected runner.loss"):
        build_parts(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("+train.stpes=5", "train.stpes=5: unknown key; train has: steps, seed, "),
        ("+train.lr=5", "train.lr=5: unknown key; train has: steps"),
        ("++optimizer.lrr=5", "optimizer.lrr=5: unknown key; optimizer has: lr, momentum, "),
        ("+model.bias=true", "model.bias=true: unknown key; model has: init"),
        ("+extra=1", "extra=1: unknown key; the config has: model, data, "),
    ],
)
def test_keys_no_schema_has_are_refused_with_a_plus_too(runs, override, message):
    with pytest.raises(ConfigError) as err:
        runs(override)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optimizer.lr=inf"], "optimizer.lr=inf: expected a finite number"),
        (["optimizer=adam", "optimizer.eps=nan"], "optimizer.eps=nan: expected a finite number"),
        (["optimizer=adam", "optimizer.betas=[0.9,inf]"], "optimizer.betas=[0.9, inf]: expected"),
        (["optimizer=sgd", "optimizer.momentum=-inf"], "optimizer.momentum=-inf: expected a"),
        (["loss=huber", "loss.delta=inf"], "loss.delta=inf: expected a finite number"),
        (["model.init=nan"], "model.init=nan: expected a finite number"),
        (["log.flush_secs=inf"], "log.flush_secs=inf: expected a finite number"),
        (["data=synthetic", "data.noise=nan"], "data.noise=nan: expected a finite number"),
        (["data=points", "data.x=[1,inf]", "data.y=[1,2]"], "data.x=[1, inf]: expected finite"),
    ],
)
def test_non_finite_numbers_are_refused(runs, overrides, message):
    with pytest.raises(ConfigError) as err:
        runs(*overrides)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.steps=10.5", "train.steps=10.5: expected an integer"),
        ("train.batch_size=1.5", "train.batch_size=1.5: expected an integer, or null"),
        ("optimizer.lr=fast", "optimizer.lr=fast: expected a number"),
        ("optimizer.nesterov=maybe", "optimizer.nesterov=maybe: expected true or false"),
        ("train.dtype=float16", "train.dtype=float16: expected one of float32, float64"),
    ],
)
def test_a_value_of_the_wrong_type_says_which_type_the_key_takes(override, message):
    with pytest.raises(Exception) as err:
        compose_config(override)
    assert describe_error(err.value) == (message, 2)


def test_near_misses_name_the_nearest_option():
    with pytest.raises(ConfigError, match=r"; did you mean adam\?$"):
        check_command_line(["optimizer=adamm"])
    with pytest.raises(Exception) as err:
        compose_config("optimiser=adam")
    assert describe_error(err.value)[0].endswith("; did you mean optimizer?")


def test_an_ambiguous_list_says_how_to_write_it():
    with pytest.raises(ConfigError) as err:
        check_command_line(["data.features=size,age"])
    assert str(err.value) == (
        "data.features=size,age: expected a list [size,age], a quoted string 'size,age', "
        "or -m (--multirun) to sweep over it"
    )


def test_inline_data_is_limited_and_counted_without_parsing():
    values = "[" + ",".join(map(str, range(MAX_INLINE_VALUES))) + "]"
    check_command_line(["data=points", f"data.x={values}", f"data.y={values}"])
    many = "[" + ",".join(map(str, range(50 * MAX_INLINE_VALUES))) + "]"
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        check_command_line(["data=points", f"data.x={many}"])
    assert time.perf_counter() - started < 1  # parsing this takes Hydra minutes
    assert str(err.value).startswith("data.x=[0,1,2,3,4,5,6,7,8,9,10,...: expected at most 1000")
    assert "(this has 50000); put them in a CSV file: data=csv data.path=FILE" in str(err.value)


def test_a_sweep_is_counted_before_it_is_listed():
    check_command_line(["-m", f"train.seed=range(0,{MAX_JOBS})"])
    check_command_line(["-m", "train.seed=range(0,100)", "optimizer.lr=0.1,0.2", "loop=glob(*)"])
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        check_command_line(["-m", "train.seed=range(0,100000000)"])
    assert time.perf_counter() - started < 1
    assert str(err.value) == (
        "train.seed=range(0,100000000): expected a sweep of at most 10000 jobs; this command "
        "line makes 100000000"
    )
    with pytest.raises(ConfigError, match=r"makes 99900$"):  # 100 seeds x 999 float steps
        check_command_line(["-m", "train.seed=range(0,100)", "optimizer.lr=range(0.001,1,0.001)"])


def test_a_long_job_directory_name_is_shortened_the_same_way_every_time(monkeypatch):
    monkeypatch.setenv(SWEPT_KEYS_ENV, "data.x")
    values = ["data.x=[" + ",".join(map(str, range(n, n + 200))) + "]" for n in (0, 1)]
    names = [job_dirname(3, [v, "train.steps=2"]) for v in values]
    assert all(len(name.encode()) <= 255 and name.startswith("3_data.x=[") for name in names)
    assert names[0] != names[1]
    assert names[0] == job_dirname(3, [values[0], "train.steps=2"])
    assert job_dirname(1, ["data.x=[1,2]"]) == "1_data.x=[1,2]"  # short names stay as they were


def test_a_sweep_exits_with_its_first_failed_jobs_code(tmp_path):
    for name, code in (("0_a", None), ("1_b", 2), ("2_c", 1), ("10_d", 1)):
        (tmp_path / name).mkdir()
        if code is not None:
            (tmp_path / name / "failed.json").write_text(json.dumps({"exit_code": code}))
    assert first_exit_code(tmp_path) == 2
    assert first_exit_code(tmp_path / "0_a") == 1  # no job said: a plain failure


# --- through the real command line (in this process where no process of its own is needed) -----
@pytest.mark.parametrize("multirun", [False, True])
def test_the_open_exploit_leaves_the_file_alone(tmp_path, multirun):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    args = ["loss._target_=builtins.open", f"+loss._args_=[{victim},w]"]
    result = cli_in_process(*(["-m"] if multirun else []), *args, "hydra.run.dir=run",
                            "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "runner: error: loss._target_=builtins.open: expected no _target_ from the command "
        "line: what a group builds comes with the option chosen (e.g. loss=huber)\n"
    )
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_bad_input_removes_only_the_directories_the_run_created(tmp_path):
    result = cli_in_process("optimizer.lr=inf", "train.steps=3", cwd=tmp_path)  # outputs/...
    assert result.returncode == 2 and "optimizer.lr=inf" in result.stderr
    assert not (tmp_path / "outputs").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user data")
    result = cli_in_process("optimizer.lr=inf", f"hydra.run.dir={mine}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    result = cli_in_process("optimizer.lr=inf", f"hydra.run.dir={mine}", cwd=tmp_path)
    assert result.returncode == 2
    assert (mine / "notes.txt").read_text() == "user data"  # it existed: not this run's


@pytest.mark.slow
def test_help_into_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "runner", "--help"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # as `| head -1` does once it has its line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert stderr == ""


def test_a_sweep_over_long_values_runs_every_job(tmp_path):
    xs = ",".join(map(str, range(1, 121)))
    result = cli_in_process("-m", "data=points", f"data.x=[{xs}],[1,2]", f"data.y=[{xs}],[2,4]",
                            "train.steps=2", "log.tensorboard=false", "hydra.sweep.dir=sweep",
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2  # jobs 1 and 2 pair x and y of different lengths
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert [json.loads(p.read_text())["status"] for p in summaries] == ["completed"] * 2
    assert len(list((tmp_path / "sweep").glob("*/failed.json"))) == 2
