"""benchmarks/run.py: its fast mode runs end to end and reports what SPEC.md's benchmarks promise
(in this process, the commands it times included); its bare loops solve the runner's problem.
Nothing here judges speed."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_in_process

SCRIPT = REPO / "benchmarks" / "run.py"

# The fast mode's sweep has 2 jobs; the full mode's has 64.
MEASURED = {
    "step/numpy/logging_off": 1.10,
    "step/numpy/logging_full": None,
    "step/numpy/logging_cost": 1.25,
    "step/numpy/scheduled": None,
    "step/autograd/logging_off": 1.10,
    "step/autograd/logging_full": None,
    "step/autograd/logging_cost": 1.25,
    "step/autograd/scheduled": None,
    "step/optim/logging_off": 1.10,
    "step/optim/logging_full": None,
    "step/optim/logging_cost": 1.25,
    "step/optim/scheduled": None,
    "step/optim/clip_grad_norm": 1.10,
    "step/numpy/mlp": 1.10,
    "step/optim/mlflow_cost": None,
    "startup/numpy_vs_optim": 0.35,
    "startup/optim_vs_import_torch": 1.3,
    "startup/autograd_vs_import_torch": 1.3,
    "startup/numpy_vs_import_torch": None,
    "startup/optim_vs_bare_optim_script": None,
    "sweep/basic_launcher_2": None,
    "sweep/vectorized_2": 2.0,
    "sweep/linear_numpy_vectorized_2": 2.0,
    "sweep/linear_numpy_vectorized_2_no_landscape": None,
    "sweep/linear_optim_vectorized_2": 4.0,
    "sweep/linear_optim_vectorized_2_no_landscape": None,
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def run_here(bench, cmd: list[str], cwd: Path) -> float:
    """process_seconds(cmd, cwd) with the command run in this process: each `runner ARGS...`
    through the console script's cli(), each `python -c CODE` by exec. What the fast mode
    checks is that every command it times runs (and its script end to end), not the timings,
    and its dozen processes (torch and torch._dynamo imported in each) cost half a minute."""
    cwd.mkdir(parents=True, exist_ok=True)
    runner = bench.runner_command()
    start = time.perf_counter()
    if cmd[: len(runner)] == runner:
        result = cli_in_process(*cmd[len(runner) :], cwd=cwd)
        if result.returncode != 0:
            raise RuntimeError(f"{cmd} exited with {result.returncode}:\n{result.stderr}")
    else:
        assert cmd[:2] == [sys.executable, "-c"], cmd
        exec(compile(cmd[2], "<python -c>", "exec"), {})
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def fast_run(bench, tmp_path_factory):
    """`python benchmarks/run.py --fast --out DIR/results.json`: its main() in this process,
    with the processes it times run in this process too (run_here); its stdout and the file."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(SCRIPT), "--fast", "--out", str(out)])
        patch.setattr(bench, "process_seconds", lambda cmd, cwd: run_here(bench, cmd, cwd))
        with contextlib.redirect_stdout(stdout):
            code = bench.main()
    return code, stdout.getvalue(), out


def test_process_seconds_times_a_process_and_stops_on_its_failure(bench, tmp_path):
    # the one part of the fast mode that fast_run replaces, on processes that cost nothing
    assert bench.process_seconds([sys.executable, "-c", "pass"], tmp_path / "ok") > 0
    with pytest.raises(RuntimeError, match=r"exited with 3:\nboom"):
        bench.process_seconds(
            [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
            tmp_path / "failing",
        )


def test_fast_mode_exits_cleanly_and_writes_json(fast_run):
    code, _, out = fast_run
    assert code == 0
    results = json.loads(out.read_text())
    env = results["environment"]
    assert env["mode"] == "fast" and "--fast" in env["command"]
    for key in ("python", "torch", "numpy", "cpu_count", "date"):
        assert env[key], key


def test_every_measurement_is_there_with_consistent_numbers(fast_run):
    *_, out = fast_run
    measurements = json.loads(out.read_text())["measurements"]
    assert list(measurements) == list(MEASURED)
    for name, target in MEASURED.items():
        m = measurements[name]
        assert m["status"] == "measured", name
        assert m["runner"] > 0 and m["baseline"] > 0, name
        assert m["ratio"] == pytest.approx(m["runner"] / m["baseline"], rel=1e-12), name
        assert m["target"] == target, name
        assert m["met"] is None, name  # a fast run judges no target
        assert min(m["runner_samples"]) > 0 and min(m["baseline_samples"]) > 0, name


def test_both_sweeps_time_the_same_jobs(fast_run):
    *_, out = fast_run
    measurements = json.loads(out.read_text())["measurements"]
    basic, vectorized = measurements["sweep/basic_launcher_2"], measurements["sweep/vectorized_2"]
    assert basic["jobs"] == vectorized["jobs"] == 2
    assert vectorized["runner_run"] == basic["runner_run"] + " hydra/launcher=vectorized"
    assert vectorized["baseline_samples"] == basic["baseline_samples"]  # the same single runs


def test_the_table_has_a_row_per_measurement(fast_run):
    _, stdout, _ = fast_run
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.strip()}
    for name in MEASURED:
        assert name in rows, name


@pytest.mark.parametrize("loop", ["numpy", "autograd"])
def test_bare_loops_follow_notebook_000(bench, loop):
    # w_k = 2 - 2 * 0.85^k and the loss before step k is 30 * 0.7225^(k-1) (test_seed_notebooks)
    seconds, weight, loss = bench.BARE[loop](10)
    assert seconds > 0
    assert weight == pytest.approx(2 - 2 * 0.85**10, rel=1e-6)
    assert loss == pytest.approx(30 * 0.7225**9, rel=1e-5)


@pytest.mark.parametrize("clipped", [False, True])
def test_bare_optim_loop_fits_the_line(bench, clipped):
    _, weight, loss = (bench.bare_optim_clipped if clipped else bench.BARE["optim"])(3000)
    assert weight == pytest.approx(2.0, abs=1e-2)
    assert loss < 1e-4


@pytest.mark.parametrize("loop", ["numpy", "autograd", "optim"])
def test_bare_cosine_loops_follow_the_runners_schedule(bench, loop, tmp_path):
    # Each bare loop's cosine ends where the runner's scheduler=cosine run of its loop ends.
    from tests.helpers import train

    _, weight, loss = bench.BARE_COSINE[loop](40)
    overrides = bench.LOOP_OVERRIDES[loop]
    summary, _ = train(tmp_path, *overrides, *bench.SCHEDULED, "train.steps=40")
    if loop == "optim":  # nn.Linear's own init from torch.manual_seed(0): a looser check
        assert summary["final_loss"] < 1.0 and loss < 1.0
        return
    assert weight == pytest.approx(summary["params"]["weight"], rel=1e-5)
    assert loss == pytest.approx(summary["final_loss"], rel=1e-5)


def test_sweep_rates_are_distinct_and_stable(bench):
    rates = [float(r) for r in bench.sweep_rates(64)]
    assert len(set(rates)) == 64
    assert min(rates) > 0 and max(rates) < 2 / 15  # w*x on x = 1..4 diverges above 2/15


def test_the_bare_mlp_trains_the_runners_mlp_problem(bench, tmp_path):
    # the same points, initial values, loss and update: the runner's loss at every step count
    from tests.helpers import train

    for steps in (1, 40):
        _, loss = bench.bare_numpy_mlp(steps)
        summary, _ = train(tmp_path / str(steps), *bench.MLP_RUN, "loop=numpy",
                           *bench.LOGGING_OFF, f"train.steps={steps}")  # fmt: skip
        assert loss == pytest.approx(summary["final_loss"], rel=1e-5)
