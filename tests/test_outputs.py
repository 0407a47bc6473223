"""What a run leaves on disk, read back: metrics.csv, TensorBoard events, summary.json."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.jobs import SWEPT_KEYS_ENV
from runner.metrics import Layout
from runner.sinks.tensorboard_sink import (
    HISTOGRAM_MIN_ELEMENTS,
    HParams,
    TensorBoardSink,
    hparams_of,
    scalars_layout,
)
from tests.helpers import REPO, compose_config, wait_for

LINEAR3 = ["model=linear", "data=synthetic", "data.n_features=3", "train.dtype=float64"]


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    return acc.Reload()


def test_csv_columns_follow_the_spec(runs):
    _, metrics = runs(*LINEAR3, "train.steps=4")
    assert list(metrics.columns) == [
        "step", "loss", "lr",
        "param/weight/0", "param/weight/1", "param/weight/2", "param/bias",
        "grad/weight/0", "grad/weight/1", "grad/weight/2", "grad/bias",
        "grad_norm",
    ]  # fmt: skip
    grads = metrics[[c for c in metrics.columns if c.startswith("grad/")]].to_numpy()
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grads, axis=1), rtol=1e-12)
    assert metrics["lr"].tolist() == [0.01] * 4


def test_loss_is_before_and_params_after_each_update(runs):
    # step 1 of the seed problem: loss at w=0 is 30, gradient -30, w after the update 0.3
    _, metrics = runs("experiment=optim_gd", "train.dtype=float64", "train.steps=1")
    assert metrics.iloc[0][["step", "loss", "param/weight", "grad/weight"]].tolist() == [
        1, 30.0, 0.3, -30.0
    ]  # fmt: skip


def test_large_parameters_are_logged_as_norms(runs):
    summary, metrics = runs(*LINEAR3, "data.n_features=20", "log.max_elements=16", "train.steps=3")
    assert [c for c in metrics.columns if "weight" in c] == [
        "param_norm/weight",
        "grad_norm/weight",
    ]
    weight = np.array(summary["params"]["weight"])
    assert weight.shape == (1, 20)
    assert metrics["param_norm/weight"].iloc[-1] == pytest.approx(np.linalg.norm(weight))
    assert "param/bias" in metrics.columns


def test_every_n_steps_keeps_the_last_step(runs):
    _, metrics = runs("train.steps=23", "log.every_n_steps=5")
    assert metrics["step"].tolist() == [5, 10, 15, 20, 23]


def test_tensorboard_holds_the_same_keys_and_values_as_the_csv(runs, tmp_path):
    summary, metrics = runs(*LINEAR3, "train.steps=6", "train.dtype=float32")
    run_dir = tmp_path / "run0"
    acc = events(run_dir)
    tags = acc.Tags()
    metric_keys = [c for c in metrics.columns if c != "step"]
    assert set(metric_keys) <= set(tags["scalars"])
    for key in metric_keys:
        scalars = acc.Scalars(key)
        assert [s.step for s in scalars] == metrics["step"].tolist()
        np.testing.assert_allclose([s.value for s in scalars], metrics[key], rtol=1e-6)
    assert tags["histograms"] == []  # 3 elements are spikes, and scalars already
    # the hparams metrics as scalars at the final step
    final = acc.Scalars("hparams/final_loss")[-1]
    assert final.step == 6 and final.value == pytest.approx(summary["final_loss"], rel=1e-6)


def test_tensorboard_config_text_is_the_resolved_config_without_targets(runs, tmp_path):
    runs(*LINEAR3, "train.steps=2", "train.seed=7")
    text = events(tmp_path / "run0").Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("```yaml\n# model: linear, data: synthetic\n") and text.endswith("```")
    assert "_target_" not in text and "${" not in text
    config = yaml.safe_load(text.removeprefix("```yaml").removesuffix("```"))
    assert config["data"]["seed"] == 7  # `${train.seed}` in conf/data/synthetic.yaml
    assert config["model"] == {"init": None, "bias": True, "out_features": 1}
    assert config["loss"] == {} and config["train"]["dtype"] == "float64"


def test_the_config_text_is_what_omegaconf_writes():
    # config_text emits with libyaml for speed; its text is OmegaConf.to_yaml's, the strings
    # OmegaConf would read back as numbers or booleans quoted, an enum (train.dtype) by name
    from omegaconf import OmegaConf

    from runner.sinks.tensorboard_sink import config_text

    cfg = compose_config("model=module", "model.target=examples.tinynet.TinyNet",
                         "model.kwargs={hidden:4,name:'1e-3',flag:'y',kind:'true'}",
                         "data=points", "data.x=[1,2]", "data.y=[2,4]",
                         "train.dtype=float64")  # fmt: skip
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for part in resolved.values():
        part.pop("_target_", None)
        part.pop("_recursive_", None)
    expected = OmegaConf.to_yaml(resolved)
    assert "name: '1e-3'" in expected and "flag: 'y'" in expected and "dtype: float64" in expected
    assert config_text(OmegaConf.to_container(cfg, resolve=True)) == expected
    assert config_text(cfg) == expected


def test_histograms_only_of_parameters_of_a_bucket_per_element(runs, tmp_path):
    n = HISTOGRAM_MIN_ELEMENTS
    runs("model=linear", "data=synthetic", f"data.n_features={n}", "train.steps=3")
    acc = events(tmp_path / "run0")
    assert sorted(acc.Tags()["histograms"]) == ["grad/weight", "param/weight"]  # not the bias
    histos = acc.Histograms("param/weight")
    assert [h.step for h in histos] == [1, 2, 3] and histos[-1].histogram_value.num == n


def test_tensorboard_experiment_and_layout_put_the_loss_first(runs, tmp_path, monkeypatch):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import metadata as layout_metadata
    from tensorboard.plugins.hparams import metadata

    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)  # a single run, whatever ran before
    summary, _ = runs("optimizer=adam", "optimizer.lr=0.05", "train.steps=3")
    acc = events(tmp_path / "run0")
    content = acc.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = metadata.parse_experiment_plugin_data(content)
    assert [m.name.tag for m in experiment.metric_infos] == [
        "hparams/final_loss",
        "hparams/best_loss",
    ]
    infos = {h.name: h.differs for h in experiment.hparam_infos}
    # a single run: the keys its command line sets come first
    assert infos == {
        "optimizer": True, "optimizer.lr": True, "train.steps": True, "train.seed": False
    }  # fmt: skip
    best = acc.Scalars("hparams/best_loss")[-1]
    assert (best.step, best.value) == (3, pytest.approx(summary["best_loss"], rel=1e-6))

    (event,) = acc.Tensors(layout_metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == ["loss", "param", "grad"]
    charts = [(chart.title, list(chart.multiline.tag)) for chart in layout.category[0].chart]
    assert charts == [("loss", ["^loss$"]), ("lr", ["^lr$"]), ("grad_norm", ["^grad_norm$"])]


def test_the_layout_follows_the_columns_a_run_logs():
    columns = [
        "loss", "lr", "param_norm/weight", "param/bias", "grad_norm/weight", "grad/bias",
        "grad_norm", "grad_norm_before_clip", "val_loss", "other/x/0", "other/x/1",
    ]  # fmt: skip
    assert scalars_layout(columns) == {
        "loss": {
            "loss": ["^loss$", "^val_loss$"],  # one chart: training and held-out loss
            "lr": ["^lr$"],
            "grad_norm": ["^grad_norm$", "^grad_norm_before_clip$"],
        },
        "param": {"param_norm/weight": ["^param_norm/weight$"], "param/bias": ["^param/bias$"]},
        "grad": {"grad_norm/weight": ["^grad_norm/weight$"], "grad/bias": ["^grad/bias$"]},
        "other": {"other/x": ["^other/x/0$", "^other/x/1$"]},
    }


def test_hparams_metrics_are_the_losses_and_accuracies_of_the_summary(tmp_path):
    from tensorboard.plugins.hparams import metadata

    layout = Layout({"weight": ()})
    sink = TensorBoardSink(tmp_path, layout, {}, HParams({"optimizer.lr": 0.1}))
    rows = np.array([[2.0, 0.1, 0.5, -1.0]])  # loss, lr, weight, its gradient
    sink.write(np.array([1]), layout.table(rows), rows)
    sink.close(
        {"status": "completed", "steps_completed": 1, "final_loss": 2.0, "best_loss": 2.0,
         "params": {"weight": 0.5}, "best_step": 1, "best_val_loss": None,
         "final_accuracy": 0.75, "best_params": {"weight": 0.5}}
    )  # fmt: skip
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    content = acc.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    metrics = [m.name.tag for m in metadata.parse_experiment_plugin_data(content).metric_infos]
    assert metrics == [
        "hparams/final_loss", "hparams/best_loss", "hparams/best_val_loss",
        "hparams/final_accuracy",
    ]  # fmt: skip
    last = {tag: acc.Scalars(tag)[-1].value for tag in metrics}
    assert last["hparams/final_accuracy"] == 0.75 and np.isnan(last["hparams/best_val_loss"])


def test_hparams_mark_what_a_sweep_varies(monkeypatch):
    overrides = ["optimizer.lr=0.1", "train.steps=5"]
    cfg = compose_config(*overrides)
    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)  # a single run: its command line
    assert hparams_of(cfg, overrides, None).differing == {"optimizer.lr", "train.steps"}
    monkeypatch.setenv(SWEPT_KEYS_ENV, "optimizer.lr")  # runner -m optimizer.lr=0.1,1 ...
    hparams = hparams_of(cfg, overrides, {"model": "scalar", "loop": "optim"})
    assert hparams.differing == {"optimizer.lr"}
    assert hparams.values == {
        "model": "scalar", "loop": "optim", "optimizer.lr": 0.1, "train.steps": 5,
        "train.seed": 0,
    }  # fmt: skip
    monkeypatch.setenv(SWEPT_KEYS_ENV, "")  # a search that draws its values (Optuna)
    assert hparams_of(cfg, overrides, None).differing == {"optimizer.lr", "train.steps"}


def test_hparams_session_lives_in_the_run_directory(runs, tmp_path):
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    runs("optimizer=adam", "optimizer.lr=0.05", "train.steps=3")
    run_dir = tmp_path / "run0"
    assert [p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()] == []  # no sub-run
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(run_dir))
    mux.Reload()
    content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    assert list(content) == ["tensorboard"]  # the run dir's own event file, not a subfolder
    start = next(
        plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info
        for raw in content["tensorboard"].values()
        if plugin_data_pb2.HParamsPluginData.FromString(raw).HasField("session_start_info")
    )
    assert start.hparams["optimizer"].string_value == "adam"
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.05)


def test_summary_json(runs, tmp_path):
    summary, metrics = runs("train.steps=7", "loop=numpy")
    on_disk = json.loads((tmp_path / "run0" / "summary.json").read_text())
    assert on_disk == summary
    assert set(on_disk) == {
        "status", "stop_reason", "steps_completed", "final_loss", "best_loss", "params",
        "diverged_at_step", "best_step", "best_params", "wall_s", "steps_per_s", "loop", "device",
        "overrides",
    }  # fmt: skip
    assert on_disk["status"] == "completed" and on_disk["steps_completed"] == 7
    assert on_disk["stop_reason"] == "steps"
    assert on_disk["final_loss"] == pytest.approx(metrics["loss"].iloc[-1], rel=1e-6)
    assert on_disk["best_loss"] == pytest.approx(metrics["loss"].min(), rel=1e-6)
    assert on_disk["params"]["weight"] == pytest.approx(metrics["param/weight"].iloc[-1], rel=1e-6)
    assert on_disk["loop"] == "numpy" and on_disk["device"] == "cpu"
    assert on_disk["diverged_at_step"] is None and on_disk["wall_s"] > 0


@pytest.mark.parametrize("loop", ["numpy", "autograd", "optim"])
def test_divergence_stops_at_once_and_keeps_what_was_logged(runs, tmp_path, loop):
    # lr 1.0 on the seed line multiplies w - 2 by -14 each step: float32 overflows at step 35
    summary, metrics = runs("optimizer.lr=1.0", f"loop={loop}", "train.steps=1000")
    assert summary["status"] == "diverged"
    n = summary["diverged_at_step"]
    assert 10 < n < 1000 and summary["steps_completed"] == n
    assert metrics["step"].tolist() == list(range(1, n + 1))  # every step up to it, none after
    last = metrics.iloc[-1]
    assert not np.isfinite(last[["loss", "param/weight", "grad/weight"]].to_numpy(float)).all()
    assert np.isfinite(metrics.iloc[:-1][["loss"]].to_numpy()).all()
    assert summary["best_loss"] == pytest.approx(metrics["loss"].min())


@pytest.mark.slow
def test_diverged_cli_run_says_so_and_exits_zero(tmp_path):
    from tests.helpers import run_cli

    # the process's exit code; loop=numpy, which needs no torch: every loop diverges alike
    # (test_divergence_stops_at_once_and_keeps_what_was_logged)
    result = run_cli(
        "optimizer.lr=1.0", "train.steps=500", "loop=numpy", "log.landscape=false",
        "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "diverged at step" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_keeps_every_logged_step_and_exits_130(tmp_path, signum, code):
    # data.x with a space: the command the last line gives must quote it as a shell would
    args = ["train.steps=100000000", "loop=numpy", "log.flush_secs=1000", "data=points",
            "data.x=[1, 2]", "data.y=[2, 4]"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args, "hydra.run.dir=run"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    csv = tmp_path / "run" / "metrics.csv"
    wait_for(lambda: csv.stat().st_size > 0, 60, "rows in metrics.csv")  # the first checkpoint
    # let it train a little more, with rows waiting in memory (flush_secs=1000): thousands of
    # steps, most of them past the last checkpoint (every 1000 steps) when the signal comes
    time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = pd.read_csv(csv)
    assert summary["status"] == "interrupted"
    assert summary["steps_completed"] == len(metrics) > 100
    assert metrics["step"].tolist() == list(range(1, len(metrics) + 1))
    assert "Traceback" not in stderr
    # the last line says where the steps are and the command that resumes the run
    run_dir = tmp_path / "run"
    command = shlex.join(["runner", *args, f"hydra.run.dir={run_dir}", "train.resume=true"])
    assert stderr.splitlines()[-1] == (
        f"runner: interrupted; every logged step is on disk in {run_dir}; resume with: {command}"
    )


# Each with landscape.png (the default): drawing it must not import torch either.
NUMPY_RUNS = {
    "linear": ["model=linear"],
    "plateau": ["model=linear", "scheduler=plateau"],
    "warmup_cosine": ["model=linear", "scheduler=warmup_cosine", "scheduler.warmup_steps=2"],
    # the MLP's hand backprop, cross-entropy and accuracy, with held-out rows
    "mlp": [
        "model=mlp",
        "model.out_features=3",
        "loss=cross_entropy",
        "data=synthetic",
        "data.task=classification",
        "data.n_classes=3",
        "data.val_fraction=0.25",
    ],
}


@pytest.mark.slow
def test_numpy_loop_never_imports_torch(tmp_path):
    # one fresh interpreter runs the command for each config in turn (a process each would
    # check nothing more), then looks for torch among its modules
    code = "import sys; from runner.cli import cli\n"
    for name, args in NUMPY_RUNS.items():
        argv = ["runner", "loop=numpy", "optimizer=adam", "train.steps=5",
                f"hydra.run.dir={tmp_path / name}", *args]  # fmt: skip
        code += f"sys.argv = {argv!r}\nassert cli() == 0, {name!r}\n"
    code += "assert 'torch' not in sys.modules, 'torch was imported'\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for name in NUMPY_RUNS:
        assert (tmp_path / name / "tensorboard").is_dir()
        assert (tmp_path / name / "landscape.png").is_file()
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "completed", name


def test_a_crash_mid_run_is_reported_failed_with_the_steps_before_it(runs, tmp_path, monkeypatch):
    from runner.loops.numpy_loop import NumpyLoop

    real_steps = NumpyLoop.steps

    def steps_then_crash(self, first, last):
        for record in real_steps(self, first, last):
            if record.step == 4:
                raise MemoryError("simulated")
            yield record

    monkeypatch.setattr(NumpyLoop, "steps", steps_then_crash)
    with pytest.raises(MemoryError):
        runs("loop=numpy", "train.steps=10")
    summary = json.loads((tmp_path / "run0" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps_completed"] == 3
    assert pd.read_csv(tmp_path / "run0" / "metrics.csv")["step"].tolist() == [1, 2, 3]
    assert len(events(tmp_path / "run0").Scalars("loss")) == 3


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_accelerator_runs_agree_with_the_cpu(runs, device):
    import torch

    present = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if not present:
        pytest.skip(f"no {device} device on this machine")
    args = [
        "model=linear",
        "data=synthetic",
        "data.n_features=3",
        "optimizer=adam",
        "train.steps=150",
    ]
    _, on_cpu = runs(*args, "device=cpu")
    summary, on_device = runs(*args, f"device={device}")
    assert summary["device"] == device
    np.testing.assert_allclose(on_device.to_numpy(), on_cpu.to_numpy(), rtol=1e-4, atol=1e-6)


def test_the_final_line_shows_a_small_model_s_parameters(tmp_path):
    from runner.jobs import final_line

    params = {"weight": [[2.0, -1.5]], "bias": [None]}
    summary = {"status": "completed", "steps_completed": 100, "final_loss": 8.98837e-13,
               "params": params, "steps_per_s": 2394.4}  # fmt: skip
    assert final_line(summary, tmp_path) == (
        "completed: 100 steps, final loss 8.98837e-13, weight=[[2, -1.5]] bias=[nan], "
        f"2394 steps/s -> {tmp_path}"
    )


def test_the_final_line_shows_norms_of_a_large_model_s_parameters(tmp_path):
    from runner.jobs import final_line

    params = {"weight": [[0.03] * 1999 + [4.0]], "bias": [0.25]}  # 2,001 values
    summary = {"status": "completed", "steps_completed": 10, "final_loss": 0.5,
               "params": params, "steps_per_s": 50}  # fmt: skip
    norm = float(np.linalg.norm([0.03] * 1999 + [4.0]))
    assert final_line(summary, tmp_path, max_values=16) == (
        f"completed: 10 steps, final loss 0.5, param_norm/weight={norm:.6g} bias=[0.25], "
        f"50 steps/s -> {tmp_path}"
    )
