"""Sweeps through the real command line (in this process, through the console script's cli()):
the report Hydra's callback writes when a sweep ends, `runner-report` on what a killed sweep
leaves behind, and TensorBoard's own server over a sweep (slow: the server and the
`runner-report` console script are processes)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from runner import report
from runner.landscape import DPI
from runner.report import FIGSIZE, TOLERANCE
from tests.helpers import cli_in_process, wait_for

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RATES = ["0.001", "0.01", "0.1", "1.0"]  # on the seed problem, lr 1.0 diverges
JOBS = [f"{i}_optimizer.lr={lr}" for i, lr in enumerate(RATES)]
# matplotlib's first four colours, which loss.png gives the four jobs
COLORS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)]


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    """`runner -m optimizer.lr=0.001,0.01,0.1,1.0 train.steps=200 loop=numpy`: the sweep dir and
    result."""
    root = tmp_path_factory.mktemp("lr_sweep")
    result = cli_in_process(
        "-m", f"optimizer.lr={','.join(RATES)}", "train.steps=200", "loop=numpy",
        f"hydra.sweep.dir={root}/sweep", cwd=root,
    )  # fmt: skip
    return root / "sweep", result


def read_png(path: Path) -> np.ndarray:
    """The image as (H, W, 3) bytes, after checking it is a PNG of the size the report saves."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.shape[:2] == (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)
    return np.round(pixels[..., :3] * 255).astype(np.uint8)


def test_a_sweep_ends_with_its_report(lr_sweep):
    sweep, result = lr_sweep
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == JOBS

    table = pd.read_csv(sweep / "summary.csv")
    assert table["job"].tolist() == [0, 1, 2, 3]
    assert table["optimizer.lr"].tolist() == [float(lr) for lr in RATES]
    assert table["status"].tolist() == ["completed", "completed", "completed", "diverged"]
    summary = json.loads((sweep / JOBS[0] / "summary.json").read_text())
    assert table.loc[0, "final_loss"] == summary["final_loss"]
    assert table.loc[0, "param/weight"] == summary["params"]["weight"]
    diverged = json.loads((sweep / JOBS[3] / "summary.json").read_text())
    assert table.loc[3, "steps_completed"] == diverged["diverged_at_step"]

    loss = read_png(sweep / "loss.png")
    for color in COLORS:  # every job drawn in its own colour
        assert (loss == color).all(axis=-1).sum() > 50, color
    final = read_png(sweep / "final_loss.png")
    assert len(np.unique(final.reshape(-1, 3), axis=0)) > 10  # not blank

    # the table, best first, and where the report went
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:2] == ["job", "status"]))
    assert [line.split()[0] for line in lines[header + 1 : header + 5]] == ["2", "1", "0", "3"]
    names = ("summary.csv", "loss.png", "final_loss.png", "trajectories.png")
    assert lines[-4:] == [f"wrote {sweep / name}" for name in names]
    # each job's own picture of the loss around its path, on by default
    assert all((sweep / job / "landscape.png").exists() for job in JOBS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_tensorboard_serves_every_job_with_its_hparams_session(lr_sweep, tmp_path):
    sweep, result = lr_sweep
    assert result.returncode == 0, result.stderr
    port = free_port()
    base = f"http://127.0.0.1:{port}/data"
    with open(tmp_path / "tensorboard.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            runs = {f"{job}/tensorboard" for job in JOBS}
            wait_for(lambda: set(get_json(f"{base}/runs")) == runs, 60, "TensorBoard runs")

            tags = get_json(f"{base}/plugin/scalars/tags")
            for run in runs:
                assert {"loss", "lr", "param/weight", "grad/weight", "grad_norm"} <= set(tags[run])

            # The Custom Scalars tab opens on loss, lr and grad_norm, and its regexes draw them.
            layout = get_json(f"{base}/plugin/custom_scalars/layout")
            assert [c["title"] for c in layout["category"]] == ["loss", "param", "grad"]
            first = layout["category"][0]["chart"]
            assert [c["title"] for c in first] == ["loss", "lr", "grad_norm"]
            (regex,) = first[0]["multiline"]["tag"]
            query = urllib.parse.urlencode({"run": f"{JOBS[0]}/tensorboard", "tag": regex})
            drawn = get_json(f"{base}/plugin/custom_scalars/scalars?{query}")
            assert drawn["regex_valid"] and list(drawn["tag_to_events"]) == ["loss"]
            assert len(drawn["tag_to_events"]["loss"]) == 200  # every step, as logged

            experiment = get_json(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
            infos = {info["name"]: info for info in experiment["hparamInfos"]}
            # the swept key is flagged as the one that differs (the table's first column)
            assert experiment["hparamInfos"][0]["name"] == "optimizer.lr"
            assert infos["optimizer.lr"].get("differs") is True
            assert not infos["train.steps"].get("differs", False)
            # the metric columns are the run's results, not every scalar tag
            metrics = [info["name"]["tag"] for info in experiment["metricInfos"]]
            assert metrics == ["hparams/final_loss", "hparams/best_loss"]

            statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
            # an api_pb2.ListSessionGroupsRequest as JSON, which the hparams plugin parses
            request = {"experimentName": "", "allowedStatuses": statuses, "sliceSize": 100}
            url = f"{base}/plugin/hparams/session_groups"
            groups = wait_for(
                lambda: (r := get_json(url, request))["totalSize"] == 4 and r["sessionGroups"],
                30,
                "four TensorBoard sessions",
            )
            sessions = {}
            for group in groups:
                (session,) = group["sessions"]
                sessions[session["name"]] = (group["hparams"], session)
            assert set(sessions) == runs
            for job, lr in zip(JOBS, RATES, strict=True):
                hparams, session = sessions[f"{job}/tensorboard"]
                assert hparams["optimizer.lr"] == float(lr)
                summary = json.loads((sweep / job / "summary.json").read_text())
                expected = (
                    "STATUS_SUCCESS" if summary["status"] == "completed" else "STATUS_FAILURE"
                )
                assert session["status"] == expected
                values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
                assert set(values) == set(metrics)
                if summary["final_loss"] is not None:
                    assert values["hparams/final_loss"] == pytest.approx(summary["final_loss"])
                assert values["hparams/best_loss"] == pytest.approx(summary["best_loss"])
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def runner_report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `runner-report` console script, as installed next to this Python."""
    script = Path(sys.executable).parent / "runner-report"
    assert script.exists(), "pip install -e . installs runner-report"
    return subprocess.run(
        [str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_runner_report_rebuilds_a_sweep_killed_half_way(lr_sweep, tmp_path):
    sweep = tmp_path / "killed"
    shutil.copytree(lr_sweep[0], sweep)
    for name in ("summary.csv", "loss.png", "final_loss.png"):
        (sweep / name).unlink()
    shutil.rmtree(sweep / JOBS[3])  # never started
    running = sweep / JOBS[2]  # killed at step 20: its summary still says running
    summary = json.loads((running / "summary.json").read_text())
    (running / "summary.json").write_text(json.dumps(summary | {"status": "running"}))
    metrics = pd.read_csv(running / "metrics.csv")
    (running / "metrics.csv").write_text(
        "".join((running / "metrics.csv").read_text().splitlines(keepends=True)[:21])
    )
    (sweep / JOBS[1] / "summary.json").unlink()  # killed before its first summary

    # runner-report's main() in this process; its console script is the test below's
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        report.main([str(sweep)])
    table = pd.read_csv(sweep / "summary.csv")
    assert table["job"].tolist() == [0, 1, 2]
    assert table["status"].tolist() == ["completed", "crashed", "crashed"]
    assert table.loc[2, "steps_completed"] == 20
    assert table.loc[2, "final_loss"] == metrics["loss"].iloc[19]
    for name in ("loss.png", "final_loss.png"):
        read_png(sweep / name)
    assert stdout.getvalue().count("crashed") == 2
    assert f"wrote {sweep / 'summary.csv'}" in stdout.getvalue().splitlines()


@pytest.mark.slow
def test_runner_report_on_a_run_and_on_a_bad_directory(lr_sweep, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lr_sweep[0] / JOBS[1], run)
    result = runner_report(str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    read_png(run / "loss.png")
    assert result.stdout.splitlines()[-1] == f"wrote {run / 'loss.png'}"

    result = runner_report("nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "runner-report: error: DIR=nowhere: expected a run or sweep directory (no such directory)"
    ]


def test_a_loop_sweep_reports_the_loops_agree(tmp_path):
    # no hydra.sweep.dir: the report must land in the default, time-stamped sweep directory
    result = cli_in_process(
        "-m", "loop=numpy,autograd,optim", "train.dtype=float64,float32", "train.steps=100",
        "log.tensorboard=false", "log.landscape=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (parity_csv,) = (tmp_path / "multirun").glob("*/*/parity.csv")
    parity = pd.read_csv(parity_csv)
    assert len(parity) == 6  # three pairs of loops at each dtype
    assert set(parity["dtype"]) == {"float64", "float32"}
    for row in parity.itertuples():
        assert row.steps_compared == 100
        assert max(row.loss_gap, row.param_gap, row.grad_gap) <= TOLERANCE[row.dtype]
        assert np.isnan(row.first_step_over_tolerance)
    assert "parity: 6 loop pairs, 6 within tolerance over every logged step" in result.stdout
    assert os.path.exists(parity_csv.parent / "summary.csv")
