"""runner.tb_writer, read back with TensorBoard's own readers (and torch's writer as an oracle)."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from runner import tb_writer
from runner.tb_writer import EventWriter

REPO = Path(__file__).resolve().parents[1]


def read_events(path: Path) -> list[event_pb2.Event]:
    """Every record of one event file, with framing and both CRCs checked by TensorBoard's
    own (independent) CRC-32C; fails on trailing bytes."""
    data, events, pos = path.read_bytes(), [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body)
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    assert pos == len(data)
    return events


def only_file(log_dir: Path) -> Path:
    (path,) = log_dir.glob("events.out.tfevents.*")
    return path


def accumulate(log_dir: Path) -> event_accumulator.EventAccumulator:
    """TensorBoard's legacy reader with every size guidance at 0 (= keep everything)."""
    guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance=guidance)
    acc.Reload()
    return acc


def scalar_series(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_file_name_version_event_and_unique_names(tmp_path):
    writers = [EventWriter(tmp_path) for _ in range(3)]
    for w in writers:
        w.close()
    names = {Path(w.path).name for w in writers}
    assert len(names) == 3  # same process, same second
    for name in names:
        assert re.fullmatch(r"events\.out\.tfevents\.\d+\..+\.\d+\.\d+", name)
    (first,) = read_events(Path(writers[0].path))
    assert first.file_version == "brain.Event:2"


def test_scalars_read_back_by_event_accumulator(tmp_path):
    rng = np.random.default_rng(1)
    tags = ("loss", "lr", "param/w[0]")
    first = rng.normal(size=(5, 3))
    rows = rng.normal(size=(200, 3)) * 1e3
    before = time.time()
    w = EventWriter(tmp_path)
    w.add_scalar_rows(np.arange(5), tags, first)
    # Steps cross the 1 -> 2 byte varint boundary (127/128) within one flush.
    w.add_scalar_rows(np.arange(50, 250), list(tags), rows)
    w.flush()
    w.add_scalars(250, tags, [1.0, 2.0, 3.0])  # after a flush, and a plain list
    w.close()
    after = time.time()

    acc = accumulate(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == sorted(tags)
    expected = np.vstack([first, rows, [[1.0, 2.0, 3.0]]]).astype(np.float32)
    steps = [*range(5), *range(50, 250), 250]
    for j, tag in enumerate(tags):
        got = acc.Scalars(tag)
        assert [e.step for e in got] == steps
        np.testing.assert_array_equal([e.value for e in got], expected[:, j])
        assert all(before <= e.wall_time <= after for e in got)


def test_scalars_identical_to_torch_summary_writer(tmp_path):
    summary = pytest.importorskip("torch.utils.tensorboard")
    rng = np.random.default_rng(2)
    tags = ("loss", "grad/b")
    values = rng.normal(size=(20, 2))
    w = EventWriter(tmp_path / "ours")
    for i in range(10):
        w.add_scalars(i, tags, values[i])
    w.add_scalar_rows(np.arange(10, 20), tags, values[10:])
    w.close()
    oracle = summary.SummaryWriter(str(tmp_path / "torch"))
    for i in range(20):
        for j, tag in enumerate(tags):
            oracle.add_scalar(tag, values[i, j], i)
    oracle.close()

    ours, theirs = accumulate(tmp_path / "ours"), accumulate(tmp_path / "torch")
    assert sorted(ours.Tags()["scalars"]) == sorted(theirs.Tags()["scalars"])
    for tag in tags:
        assert scalar_series(ours, tag) == scalar_series(theirs, tag)


def test_events_keep_call_order_across_kinds(tmp_path):
    w = EventWriter(tmp_path)
    w.add_scalars(1, ("a", "b"), [1, 2])
    w.add_histogram_rows("h", [1], np.arange(4.0)[None])
    w.add_scalars(1, ("c",), [3])
    w.add_scalars(2, ("a", "b"), [4, 5])
    w.add_text("t", "hi", 2)
    w.add_scalar_rows(np.array([3, 4]), ("a", "b"), np.array([[6, 7], [8, 9]]))
    w.add_histogram_rows("h", [4], np.arange(4.0)[None])
    w.close()
    got = [(e.step, [v.tag for v in e.summary.value]) for e in read_events(only_file(tmp_path))]
    assert got[1:] == [
        (1, ["a", "b"]),
        (1, ["h"]),
        (1, ["c"]),
        (2, ["a", "b"]),
        (2, ["t"]),
        (3, ["a", "b"]),
        (4, ["a", "b"]),
        (4, ["h"]),
    ]


def test_extreme_steps_many_tags_and_copied_values(tmp_path):
    # Every step varint length in one flush, negative steps (10 bytes), and records of ~6 KB.
    steps = [0, 127, 128, 16384, 2**31, 2**62, -1, -(2**40), 5]
    tags = tuple(f"layer{i}/weight_element_{i:05d}" for i in range(200))
    values = np.arange(200.0)
    w = EventWriter(tmp_path)
    for step in steps:
        w.add_scalars(step, tags, values)
        values += 0.5  # in place: what was added must not change
    w.add_scalars(7, tags[:1], np.array([2.5]))
    w.close()
    events = read_events(only_file(tmp_path))[1:]
    assert [e.step for e in events] == [*steps, 7]
    for i, event in enumerate(events[:-1]):
        assert [v.tag for v in event.summary.value] == list(tags)
        assert [v.simple_value for v in event.summary.value] == list(np.arange(200.0) + 0.5 * i)


def test_bad_scalar_calls_raise(tmp_path):
    w = EventWriter(tmp_path)
    with pytest.raises(ValueError):
        w.add_scalars(0, ("a", "b"), [1.0])
    with pytest.raises(ValueError):
        w.add_scalars(0, ("a", "a"), [1.0, 2.0])
    with pytest.raises(ValueError):
        w.add_scalar_rows(np.arange(3), ("a",), np.zeros((2, 1)))
    with pytest.raises(TypeError):
        w.add_scalars(1.5, ("a",), [1.0])
    with pytest.raises(ValueError):
        w.add_scalars(1, ("a",), ["not a number"])
    with pytest.raises(ValueError):
        w.add_scalar_rows(np.arange(2), ("a",), np.array([["1.0"], ["x"]]))
    w.add_scalars(2, ("a",), [2.0])
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError):
        w.add_scalars(0, ("a",), [1.0])
    # Failed calls left no half-written row behind.
    events = read_events(only_file(tmp_path))[1:]
    assert [(e.step, e.summary.value[0].simple_value) for e in events] == [(2, 2.0)]


def test_histograms(tmp_path):
    from tensorboard import data_compat
    from tensorboard.util import tensor_util

    x = np.random.default_rng(3).normal(size=(7, 9))
    w = EventWriter(tmp_path)
    w.add_histogram_rows("w", [5, 6], np.stack([x, x * 2]))
    w.add_histogram_rows("const", [5], np.full((1, 4), 2.5))
    w.add_histogram_rows("partly_nan", [5], np.array([[1.0, np.nan, np.inf, 3.0]]))
    w.add_histogram_rows("all_nan", [5], np.array([[np.nan, -np.inf]]))  # skipped, no crash
    with pytest.raises(ValueError):
        w.add_histogram_rows("empty", [5], np.empty((1, 0)))
    w.close()

    acc = accumulate(tmp_path)
    assert sorted(acc.Tags()["histograms"]) == ["const", "partly_nan", "w"]
    for event, data in zip(acc.Histograms("w"), (x, x * 2), strict=True):
        h, flat = event.histogram_value, data.ravel()
        assert (h.min, h.max, h.num) == (flat.min(), flat.max(), flat.size)
        assert h.sum == pytest.approx(flat.sum(), rel=1e-12)
        assert h.sum_squares == pytest.approx((flat**2).sum(), rel=1e-12)
        assert sum(h.bucket) == h.num
        counts, edges = np.histogram(flat, bins=tb_writer.HISTOGRAM_BUCKETS)
        np.testing.assert_array_equal(h.bucket, counts)
        np.testing.assert_allclose(h.bucket_limit, edges[1:], rtol=1e-12)
        assert h.bucket_limit[-1] == h.max
    const = acc.Histograms("const")[0].histogram_value
    assert (const.min, const.max, const.num, const.bucket_limit, const.bucket) == (
        2.5,
        2.5,
        4,
        [2.5],
        [4],
    )
    nan = acc.Histograms("partly_nan")[0].histogram_value
    assert (nan.min, nan.max, nan.num, nan.sum, sum(nan.bucket)) == (1, 3, 2, 4, 2)

    # What the histogram dashboard does with it: [left, right, count] buckets spanning min..max.
    (value,) = read_events(only_file(tmp_path))[1].summary.value
    buckets = tensor_util.make_ndarray(data_compat.migrate_value(value).tensor)
    assert buckets.shape == (tb_writer.HISTOGRAM_BUCKETS, 3)
    assert buckets[0, 0] == np.float32(x.min()) and buckets[-1, 1] == np.float32(x.max())
    assert buckets[:, 2].sum() == x.size
    assert (np.diff(buckets[:, :2].ravel()) >= 0).all()


def test_bulk_histograms_equal_the_one_row_path(tmp_path):
    # A constant row sends every row of its call through the one-row path; the other rows must
    # come out as the bulk path writes them.
    rng = np.random.default_rng(4)
    values = rng.normal(size=(6, 2, 3))
    steps = np.arange(6)
    bulk, single = EventWriter(tmp_path / "bulk"), EventWriter(tmp_path / "single")
    bulk.add_histogram_rows("w", steps, values)
    single.add_histogram_rows("w", np.arange(7), np.concatenate([values, np.ones((1, 2, 3))]))
    bulk.close()
    single.close()
    ours = read_events(only_file(tmp_path / "bulk"))[1:]
    theirs = read_events(only_file(tmp_path / "single"))[1:]
    assert len(ours) == 6 and len(theirs) == 7
    assert theirs[-1].summary.value[0].histo.bucket == [6]
    for a, b in zip(ours, theirs, strict=False):
        # Row-wise and one-by-one sums of squares may round differently in the last bit.
        ha, hb = a.summary.value[0].histo, b.summary.value[0].histo
        assert ha.sum_squares == pytest.approx(hb.sum_squares, rel=1e-14)
        ha.sum_squares = hb.sum_squares = a.wall_time = b.wall_time = 0
        assert a == b


@pytest.mark.filterwarnings("ignore:html5lib's sanitizer is deprecated:DeprecationWarning")
def test_text(tmp_path):
    from tensorboard.plugins.text import text_plugin
    from tensorboard.util import tensor_util

    text = "# Config\n\n**lr**: 0.1 é"
    w = EventWriter(tmp_path)
    w.add_text("config", text)
    w.close()
    acc = accumulate(tmp_path)
    assert acc.SummaryMetadata("config").plugin_data.plugin_name == "text"
    (event,) = acc.Tensors("config")
    assert event.tensor_proto.string_val == [text.encode()]
    html = text_plugin.text_array_to_html(tensor_util.make_ndarray(event.tensor_proto), True)
    assert "<strong>lr</strong>" in html


def hparams_backend(logdir: Path):
    """TensorBoard's own hparams data path over `logdir`, without a server: multiplexer -> data
    provider -> the plugin's backend context, and a request context for its handlers."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    tb_context = base_plugin.TBContext(data_provider=provider, logdir=str(logdir))
    return context.RequestContext(), backend_context.Context(tb_context)


def test_hparams_one_session_in_the_run_itself(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, list_session_groups, metadata, plugin_data_pb2

    assert (
        tb_writer._HPARAMS_PLUGIN,
        tb_writer._HPARAMS_EXPERIMENT_TAG,
        tb_writer._HPARAMS_SESSION_START_TAG,
        tb_writer._HPARAMS_SESSION_END_TAG,
    ) == (
        metadata.PLUGIN_NAME,
        metadata.EXPERIMENT_TAG,
        metadata.SESSION_START_INFO_TAG,
        metadata.SESSION_END_INFO_TAG,
    )
    hparams = {"optimizer.lr": 0.1, "model": "mlp", "nesterov": True, "train.steps": 100}
    metrics = ("hparams/final_loss", "hparams/best_loss")
    run = tmp_path / "run1"
    w = EventWriter(run)
    w.add_hparams(hparams)
    with pytest.raises(RuntimeError):
        w.add_hparams(hparams)
    w.add_scalars(0, ("loss",), [3.0])
    w.add_scalars(100, metrics, [0.5, 0.25])
    with pytest.raises(ValueError):
        w.end_hparams_session("done")
    w.end_hparams_session("success")
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["run1"]  # no sub-run
    assert len(list(run.iterdir())) == 1

    # Proto level: the summaries carry the hparams plugin's data.
    acc = accumulate(run)
    assert metadata.EXPERIMENT_TAG not in acc.Tags()["tensors"]  # TensorBoard derives it
    plugin = acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data
    assert plugin.plugin_name == "hparams"
    start = plugin_data_pb2.HParamsPluginData.FromString(plugin.content).session_start_info
    assert sorted(start.hparams) == sorted(hparams)
    assert start.hparams["model"].string_value == "mlp"
    assert start.hparams["nesterov"].bool_value is True
    assert start.hparams["optimizer.lr"].number_value == 0.1

    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10, allowed_statuses=api_pb2.Status.values()
    )
    response = list_session_groups.Handler(*hparams_backend(tmp_path), "", request).run()
    (group,) = response.session_groups
    (session,) = group.sessions
    assert session.name == "run1" and session.status == api_pb2.STATUS_SUCCESS
    assert group.hparams["model"].string_value == "mlp"
    assert group.hparams["train.steps"].number_value == 100
    # Without an experiment, every scalar tag is a metric: TensorBoard derives the experiment.
    assert {m.name.tag: (m.value, m.training_step) for m in group.metric_values} == {
        "loss": (3.0, 0),
        "hparams/final_loss": (0.5, 100),
        "hparams/best_loss": (0.25, 100),
    }


def test_hparams_experiment_makes_the_columns_of_a_sweep(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, get_experiment, list_session_groups

    metrics = ("hparams/final_loss", "hparams/best_loss")
    for job, lr in enumerate((0.1, 0.01)):
        w = EventWriter(tmp_path / f"{job}_lr={lr}")
        hparams = {"optimizer.lr": lr, "model": "mlp", "nesterov": True, "train.steps": 100}
        w.add_hparams(hparams)
        w.add_scalars(100, ("loss", "grad_norm"), [3.0 * lr, 1.0])
        w.add_hparams_experiment(hparams, metrics, differing={"optimizer.lr"})
        w.add_scalars(100, metrics, [lr, lr / 2])
        w.end_hparams_session()
        w.close()

    request_context, backend = hparams_backend(tmp_path)
    request = api_pb2.GetExperimentRequest()
    experiment = get_experiment.Handler(request_context, backend, "", request).run()
    # The experiment as written, for every session: swept first (differs), then by name.
    assert [(h.name, h.type, h.differs) for h in experiment.hparam_infos] == [
        ("optimizer.lr", api_pb2.DATA_TYPE_FLOAT64, True),
        ("model", api_pb2.DATA_TYPE_STRING, False),
        ("nesterov", api_pb2.DATA_TYPE_BOOL, False),
        ("train.steps", api_pb2.DATA_TYPE_FLOAT64, False),
    ]
    nesterov = experiment.hparam_infos[2].domain_discrete.values
    assert [v.bool_value for v in nesterov] == [False, True]
    assert not experiment.hparam_infos[1].HasField("domain_discrete")  # would filter the others
    assert [m.name.tag for m in experiment.metric_infos] == list(metrics)

    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10, allowed_statuses=api_pb2.Status.values()
    )
    response = list_session_groups.Handler(request_context, backend, "", request).run()
    groups = {g.name: g for g in response.session_groups}
    assert sorted(groups) == ["0_lr=0.1", "1_lr=0.01"]
    for name, lr in (("0_lr=0.1", 0.1), ("1_lr=0.01", 0.01)):
        assert groups[name].hparams["optimizer.lr"].number_value == lr
        # only the experiment's metrics, not every scalar tag
        values = {m.name.tag: m.value for m in groups[name].metric_values}
        assert values == pytest.approx({"hparams/final_loss": lr, "hparams/best_loss": lr / 2})


def test_hparams_experiment_as_torch_writes_it(tmp_path):
    summary = pytest.importorskip("torch.utils.tensorboard.summary")
    from tensorboard.plugins.hparams import metadata

    # (no bool: torch's hparams() types True as a number)
    hparams, metrics = {"optimizer.lr": 0.1, "model": "mlp", "steps": 7}, {"hparams/loss": 0.5}
    w = EventWriter(tmp_path)
    w.add_hparams_experiment(hparams, list(metrics))
    w.close()
    (ours,) = read_events(only_file(tmp_path))[1].summary.value
    (theirs,) = summary.hparams(hparams, metrics)[0].value
    assert ours.tag == theirs.tag == metadata.EXPERIMENT_TAG
    assert ours.metadata.plugin_data.plugin_name == theirs.metadata.plugin_data.plugin_name
    experiment = metadata.parse_experiment_plugin_data(ours.metadata.plugin_data.content)
    assert experiment.time_created_secs > 0
    experiment.ClearField("time_created_secs")
    assert experiment == metadata.parse_experiment_plugin_data(theirs.metadata.plugin_data.content)


def test_custom_scalars_layout_as_torch_writes_it(tmp_path):
    summary = pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    layout = {
        "loss": {"loss": ["^loss$", "^val_loss$"], "lr": ["^lr$"]},
        "param": {"param/w": ["^param/w/0$", "^param/w/1$"]},
    }
    w = EventWriter(tmp_path / "ours")
    w.add_custom_scalars(layout)
    w.close()
    oracle = summary.SummaryWriter(str(tmp_path / "torch"))
    oracle.add_custom_scalars(
        {
            title: {c: ["Multiline", tags] for c, tags in charts.items()}
            for title, charts in layout.items()
        }
    )
    oracle.close()
    ours, theirs = (read_events(only_file(tmp_path / name))[1] for name in ("ours", "torch"))
    ours.wall_time = theirs.wall_time = 0
    assert ours == theirs

    acc = accumulate(tmp_path / "ours")
    assert acc.SummaryMetadata(metadata.CONFIG_SUMMARY_TAG).plugin_data.plugin_name == (
        metadata.PLUGIN_NAME
    )
    (event,) = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    got = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    assert {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in got.category
    } == layout
    assert [c.title for c in got.category] == ["loss", "param"]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_killed_process_leaves_exactly_the_flushed_events(tmp_path):
    done = run_python(
        """
        import os, sys
        from runner.tb_writer import EventWriter
        w = EventWriter(sys.argv[1])
        for step in range(30):
            w.add_scalars(step, ("loss", "lr"), [step, 0.1])
        w.add_histogram_rows("h", [29], [[1.0, 2.0]])
        w.flush()
        for step in range(30, 60):  # never flushed
            w.add_scalars(step, ("loss", "lr"), [step, 0.1])
        w.add_text("t", "lost")
        os._exit(0)  # no close, no atexit, no destructors
        """,
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert len(read_events(only_file(tmp_path))) == 1 + 30 + 1
    acc = accumulate(tmp_path)
    assert scalar_series(acc, "loss") == [(s, float(s)) for s in range(30)]
    assert acc.Tags()["tensors"] == []

    # Even a torn final record (a write cut short) costs only that record.
    path = only_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    acc = accumulate(tmp_path)
    assert acc.Tags()["histograms"] == [] and len(acc.Scalars("loss")) == 30


def test_never_imports_torch_or_tensorflow(tmp_path):
    done = run_python(
        """
        import sys, time
        start = time.perf_counter()
        import runner.tb_writer as tb
        seconds = time.perf_counter() - start
        w = tb.EventWriter(sys.argv[1])
        w.add_scalars(1, ("loss",), [0.5])
        w.add_histogram_rows("w", [1], [[1.0, 2.0, 3.0]])
        w.add_text("config", "x: 1")
        w.add_hparams({"lr": 0.1})
        w.add_custom_scalars({"loss": {"loss": ["^loss$"]}})
        w.add_hparams_experiment({"lr": 0.1}, ["loss"])
        w.end_hparams_session()
        w.close()
        heavy = ("torch", "tensorflow", "tensorboardX", "tensorboard.summary")
        print([name for name in heavy if name in sys.modules], seconds)
        """,
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    loaded, seconds = done.stdout.rsplit("]", 1)
    assert loaded == "["
    assert float(seconds) < 2.0  # ~0.15 s in practice (mostly numpy); generous for slow CI
    assert len(read_events(only_file(tmp_path))) == 8


def test_nothing_reaches_the_file_before_flush(tmp_path):
    # flush() is synchronous (no background thread): the bytes are in the file when it returns.
    w = EventWriter(tmp_path)
    size = os.path.getsize(w.path)
    w.add_scalars(0, ("a",), [1.0])
    assert os.path.getsize(w.path) == size  # buffered until flush
    w.flush()
    assert os.path.getsize(w.path) > size
    w.close()
