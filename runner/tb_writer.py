"""A fast TensorBoard event-file writer: the runner logs every scalar of every step.

Events are TensorBoard's own protos (``tensorboard.compat.proto``) framed as TFRecords:
``uint64 length | masked crc32c(length) | data | masked crc32c(data)``.

TensorBoard's own ``EventFileWriter`` builds and frames each event one by one (~150 us each);
this one takes ~1-4 us. Scalar and histogram events are not built as proto objects: every such
event for one tag set has the same bytes except the step, the wall time and a fixed number of
floats, so rows are buffered in numpy arrays and a whole block is encoded at flush time from a
byte template, then each record gets its CRC-32C from one call of ``google_crc32c`` (C).
Rarer events (text, hparams, the custom-scalars layout) go through TensorBoard's protobuf
classes.

Nothing reaches the file until ``flush()``, which issues a single ``os.write``: a killed
process leaves the file exactly as of its last flush (plus, at worst, a torn tail from a write
interrupted mid-way, which TensorBoard's readers skip as a truncated record). Not thread-safe.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import socket
import struct
import time
from collections.abc import Collection, Mapping, Sequence

import google_crc32c
import numpy as np
from tensorboard.compat.proto import (
    event_pb2,
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)

from runner.errors import on_path

__all__ = ["EventWriter"]

# Histograms use TensorBoard's own default (tensorboard.plugins.histogram.summary_v2):
# equal-width buckets between min and max.
HISTOGRAM_BUCKETS = 30

# Plugin name and tags of the hparams plugin's summaries (tensorboard.plugins.hparams.metadata;
# importing that module costs ~0.2 s because it pulls tensor_util, so they are restated here and
# the tests check them against it).
_HPARAMS_PLUGIN = "hparams"
_HPARAMS_EXPERIMENT_TAG = "_hparams_/experiment"
_HPARAMS_SESSION_START_TAG = "_hparams_/session_start_info"
_HPARAMS_SESSION_END_TAG = "_hparams_/session_end_info"

_MASK32 = 0xFFFFFFFF
_MASK_DELTA = 0xA282EAD8
_UID = itertools.count()


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C: rotated right by 15 bits, plus a constant (mod 2**32)."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & _MASK32) + _MASK_DELTA) & _MASK32


def _record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    header = struct.pack("<Q", len(data))
    return b"".join(
        (header, struct.pack("<I", _masked_crc(header)), data, struct.pack("<I", _masked_crc(data)))
    )


# ---------------------------------------------------------------------------------------------
# Byte templates. A layout is (bytes, positions of the variable bytes within them).

_Layout = tuple[bytes, np.ndarray]
_NONE = np.empty(0, np.intp)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 are encoded as their two's complement, like protobuf
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fixed(data: bytes) -> _Layout:
    return data, _NONE


def _slot(nbytes: int) -> _Layout:
    return bytes(nbytes), np.arange(nbytes)


def _cat(*parts: _Layout) -> _Layout:
    data, positions, at = [], [], 0
    for part, pos in parts:
        data.append(part)
        positions.append(pos + at)
        at += len(part)
    return b"".join(data), np.concatenate(positions)


def _field(key: int, part: _Layout) -> _Layout:
    """A length-delimited field (key = field number << 3 | 2) wrapping `part`."""
    return _cat(_fixed(bytes([key]) + _varint(len(part[0]))), part)


def _event_tail(value: _Layout) -> _Layout:
    """Event bytes after the step: wall_time (double, variable) and a one-value summary."""
    return _cat(_fixed(b"\x09"), _slot(8), _field(0x2A, _field(0x0A, value)))


def _tag(tag: str) -> _Layout:
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tags must be non-empty strings, got {tag!r}")
    return _field(0x0A, _fixed(tag.encode()))


def _scalars_tail(tags: tuple[str, ...]) -> _Layout:
    # Summary.value is repeated: one Value(tag=1, simple_value=2 as float32) per tag.
    values = [_field(0x0A, _cat(_tag(tag), _fixed(b"\x15"), _slot(4))) for tag in tags]
    return _cat(_fixed(b"\x09"), _slot(8), _field(0x2A, _cat(*values)))


def _histogram_tail(tag: str, buckets: int) -> _Layout:
    # HistogramProto: min, max, num, sum, sum_squares (doubles 1-5), then bucket_limit and
    # bucket as packed doubles (fields 6, 7); Value.histo is field 5.
    doubles = [_cat(_fixed(bytes([field << 3 | 1])), _slot(8)) for field in range(1, 6)]
    histo = _cat(*doubles, _field(0x32, _slot(8 * buckets)), _field(0x3A, _slot(8 * buckets)))
    return _event_tail(_cat(_tag(tag), _field(0x2A, histo)))


class _EventBlock:
    """Pending events sharing one byte template: only step, wall time and a fixed-size numeric
    payload (float32 scalars or float64 histogram fields) differ from one row to the next.

    `finish(payload)`, if set, completes the pending payload rows in place just before encoding
    (histograms derive their bucket limits there, for all rows at once).
    """

    def __init__(self, tail: _Layout, width: int, dtype: str, finish=None) -> None:
        # Variable bytes: the wall time (tail bytes 1..8) then the payload, in payload order.
        self.tail, self.var_pos = tail
        self.width, self.dtype, self.finish = width, np.dtype(dtype).newbyteorder("<"), finish
        assert len(self.var_pos) == 8 + width * self.dtype.itemsize
        # Rows per encoding chunk (~256 KB of records): a chunk is still in cache when its CRCs
        # are computed, and the temporaries stay small.
        self.chunk = max(1, (1 << 18) // (len(self.tail) + 20))
        self.templates: dict[int, np.ndarray] = {}
        self.n = 0
        self._allocate(16)

    def _allocate(self, capacity: int) -> None:
        old = (self.steps[: self.n], self.walls[: self.n], self.payload[: self.n]) if self.n else ()
        self.steps = np.empty(capacity, np.int64)
        self.walls = np.empty(capacity, np.float64)
        self.payload = np.empty((capacity, self.width), self.dtype)
        if old:
            self.steps[: self.n], self.walls[: self.n], self.payload[: self.n] = old

    def extend(self, steps: np.ndarray, walls: np.ndarray, payload: np.ndarray) -> None:
        i, k = self.n, len(steps)
        if i + k > len(self.steps):
            self._allocate(max(2 * len(self.steps), i + k))
        self.steps[i : i + k] = steps
        self.walls[i : i + k] = walls
        self.payload[i : i + k] = payload
        self.n = i + k

    def _template(self, m: int) -> np.ndarray:
        """Record bytes for an m-byte step varint, zeroed variable bytes and no data CRC yet."""
        if m not in self.templates:
            data = b"\x10" + bytes(m) + self.tail
            header = struct.pack("<Q", len(data))
            row = header + struct.pack("<I", _masked_crc(header)) + data + bytes(4)
            self.templates[m] = np.frombuffer(row, np.uint8)
        return self.templates[m]

    def drain(self) -> tuple[memoryview, np.ndarray]:
        """Encodes and forgets the pending rows: (bytes, offsets of rows 0..n in them)."""
        k = self.n
        steps, walls, payload = self.steps[:k], self.walls[:k], self.payload[:k]
        self.n = 0
        if self.finish is not None:
            self.finish(payload)
        lo, hi = int(steps.min()), int(steps.max())
        if lo >= 0 and len(_varint(lo)) == len(_varint(hi)):  # one layout, rows back to back
            m = len(_varint(lo))
            out = np.empty((k, 17 + len(self.tail) + m), np.uint8)
            for a in range(0, k, self.chunk):
                b = a + self.chunk
                self._encode(m, steps[a:b], walls[a:b], payload[a:b], out[a:b])
            return memoryview(out).cast("B"), np.arange(k + 1) * out.shape[1]
        # Varint length of each step: one byte per started 7 bits (10 for negative steps).
        lengths = np.ones(k, np.intp)
        for shift in range(7, 64, 7):
            lengths += (steps.view(np.uint64) >> np.uint64(shift)) != 0
        offsets = np.concatenate([[0], np.cumsum(17 + len(self.tail) + lengths)])
        flat = np.empty(offsets[-1], np.uint8)
        for m in np.flatnonzero(np.bincount(lengths)).tolist():  # (np.unique imports numpy.ma)
            idx = np.flatnonzero(lengths == m)
            out = np.empty((len(idx), 17 + len(self.tail) + m), np.uint8)
            self._encode(m, steps[idx], walls[idx], payload[idx], out)
            flat[offsets[idx][:, None] + np.arange(out.shape[1])] = out
        return memoryview(flat), offsets

    def _encode(self, m: int, steps, walls, payload, out: np.ndarray) -> None:
        """Fills `out` (rows x record bytes) with the records of these rows."""
        k = len(steps)
        out[:] = self._template(m)
        shifts = np.arange(0, 7 * m, 7, dtype=np.uint64)
        step_bytes = ((steps.view(np.uint64)[:, None] >> shifts) & 0x7F).astype(np.uint8)
        step_bytes[:, :-1] |= 0x80
        out[:, 13 : 13 + m] = step_bytes
        var = np.empty((k, len(self.var_pos)), np.uint8)
        var[:, :8] = walls.astype("<f8", copy=False).view(np.uint8).reshape(k, 8)
        var[:, 8:] = payload.view(np.uint8)
        out[:, 13 + m + self.var_pos] = var
        # The data CRC of each record: its bytes between the 12-byte header and the CRC itself.
        data, n, value = out.tobytes(), out.shape[1], google_crc32c.value  # value() takes bytes
        crc = np.array([value(data[i + 12 : i + n - 4]) for i in range(0, k * n, n)], np.uint32)
        crc = ((crc >> 15) | (crc << 17)) + np.uint32(_MASK_DELTA)  # uint32 arithmetic wraps
        out[:, -4:] = crc.astype("<u4").view(np.uint8).reshape(k, 4)


def _bucket_limits(payload: np.ndarray) -> np.ndarray:
    """Fills the bucket_limit columns of pending histogram rows: equal widths from min to max."""
    buckets = (payload.shape[1] - 5) // 2
    lo, hi = payload[:, :1], payload[:, 1:2]
    with np.errstate(over="ignore"):  # halves: a spread near the float64 maximum stays finite
        step = (hi * 0.5 - lo * 0.5) * (2 / buckets)
    limits = payload[:, 5 : 5 + buckets]
    np.multiply(step, np.arange(1, buckets + 1), out=limits)
    limits += lo
    limits[:, -1] = hi[:, 0]  # exactly the maximum, as TensorBoard reads the last edge as max
    return payload


def _hparam_value(name: str, v: object):
    """An hparam as the google.protobuf.Value that HParams summaries hold."""
    from google.protobuf import struct_pb2

    if isinstance(v, (bool, np.bool_)):
        return struct_pb2.Value(bool_value=bool(v))
    if isinstance(v, numbers.Real):
        return struct_pb2.Value(number_value=float(v))
    if isinstance(v, str):
        return struct_pb2.Value(string_value=v)
    raise TypeError(f"hparam {name!r}: {type(v).__name__} is not bool/number/str")


# ---------------------------------------------------------------------------------------------


class EventWriter:
    """Appends TensorBoard events to one new event file in `log_dir`.

    Events are buffered in memory and reach the file only on `flush()` / `close()`, in the
    order they were added. Not thread-safe.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = os.fspath(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        self._fd = -1
        while self._fd < 0:  # O_EXCL + a per-process counter: unique even within one second
            name = (
                f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_UID)}"
            )
            path = os.path.join(self.log_dir, name)
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
        self.path = path
        # Batches by tag tuple (scalars) or (tag, buckets) (histograms); the queue keeps call
        # order: [block, rows] runs and [None, record bytes] items.
        self._blocks: dict[object, _EventBlock] = {}
        self._queue: list[list] = []
        self._hparams_started = False
        version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self._write(_record(version.SerializeToString()))

    # -- scalars ------------------------------------------------------------------------------

    def _scalar_block(self, tags: Sequence[str]) -> _EventBlock:
        key = tuple(tags)
        block = self._blocks.get(key)
        if block is None:
            if len(set(key)) != len(key) or not key:
                raise ValueError(f"tags must be distinct and non-empty: {key!r}")
            block = self._blocks[key] = _EventBlock(_scalars_tail(key), len(key), "f4")
        return block

    def _enqueue(self, block: _EventBlock, rows: int) -> None:
        q = self._queue
        if q and q[-1][0] is block:
            q[-1][1] += rows
        else:
            q.append([block, rows])

    def add_scalars(self, step: int, tags: Sequence[str], values: Sequence[float]) -> None:
        """One event at `step` holding one simple_value (float32) per tag."""
        self.add_scalar_rows(np.array([step]), tags, np.array([values], np.float64))

    def add_scalar_rows(self, steps: np.ndarray, tags: Sequence[str], values: np.ndarray) -> None:
        """Values has shape (K, len(tags)); one event per row, in row order, all at the current
        wall time. The values are copied, so arrays may be updated in place afterwards."""
        self._check_open()
        block = self._scalar_block(tags)
        steps = np.asarray(steps)
        values = np.asarray(values)
        k = len(steps)
        if steps.shape != (k,) or values.shape != (k, block.width):
            raise ValueError(
                f"need steps (K,) and values (K, {block.width}); "
                f"got {steps.shape} and {values.shape}"
            )
        if k and not np.issubdtype(steps.dtype, np.integer):
            raise TypeError(f"steps must be integers, got {steps.dtype}")
        if k:
            block.extend(steps, time.time(), values)
            self._enqueue(block, k)

    # -- histograms ---------------------------------------------------------------------------

    def add_histogram_rows(self, tag: str, steps: np.ndarray, values: np.ndarray) -> None:
        """One histogram per step of the elements of `values[i]` (shape (K, ...)), as a
        HistogramProto: min/max/num/sum/sum_squares and HISTOGRAM_BUCKETS equal-width buckets
        (one bucket if all values are equal). All rows get the current wall time.

        Non-finite elements are left out of every statistic; if nothing finite remains in a row
        it writes no event (a diverged run must not crash in its logging).
        """
        self._check_open()
        steps = np.asarray(steps)
        k = len(steps)
        if k == 0:
            return
        a = np.asarray(values, dtype=np.float64).reshape(k, -1)
        if steps.shape != (k,) or a.shape[1] == 0:
            raise ValueError(f"need steps (K,) and values (K, n>0); got {steps.shape}, {a.shape}")
        if not np.issubdtype(steps.dtype, np.integer):
            raise TypeError(f"steps must be integers, got {steps.dtype}")
        wall = time.time()
        buckets = HISTOGRAM_BUCKETS
        lo, hi = a.min(axis=1), a.max(axis=1)
        with np.errstate(all="ignore"):
            spread = hi - lo
            scale = buckets / spread
        if not (np.isfinite(scale).all() and np.isfinite(spread).all()):
            # Constant rows, non-finite elements, extreme ranges: the one-row path handles them.
            for i in range(k):
                self._add_histogram_row(tag, a[i], steps[i], wall)
            return
        payload = np.empty((k, 5 + 2 * buckets))
        payload[:, 0], payload[:, 1], payload[:, 2] = lo, hi, a.shape[1]
        payload[:, 3], payload[:, 4] = a.sum(axis=1), np.einsum("ij,ij->i", a, a)
        idx = ((a - lo[:, None]) * scale[:, None]).astype(np.intp)
        np.minimum(idx, buckets - 1, out=idx)
        idx += np.arange(0, k * buckets, buckets)[:, None]  # row i counts into its own range
        payload[:, 5 + buckets :] = np.bincount(idx.ravel(), minlength=k * buckets).reshape(k, -1)
        block = self._histogram_block(tag, buckets)
        block.extend(steps, wall, payload)
        self._enqueue(block, k)

    def _add_histogram_row(self, tag: str, a: np.ndarray, step: np.integer, wall: float) -> None:
        """One row of add_histogram_rows (1-D float64 `a`) that the bulk path cannot take."""
        total = a.sum()
        if not math.isfinite(total):  # some element is inf or nan (or the sum overflowed)
            a = a[np.isfinite(a)]
            if a.size == 0:
                return
            total = a.sum()
        lo, hi = float(a.min()), float(a.max())
        buckets = 1 if lo == hi else HISTOGRAM_BUCKETS
        row = np.empty(5 + 2 * buckets)
        row[:5] = lo, hi, a.size, total, a @ a
        if buckets == 1:
            row[5:] = hi, a.size
        else:  # counts now, limits at flush (_bucket_limits)
            scale = buckets / (hi - lo)
            if not (math.isfinite(scale) and math.isfinite(hi - lo)):
                # Extreme ranges: rescale first so neither the spread nor its inverse overflows.
                m = max(abs(lo), abs(hi))
                a, lo, scale = a / m, lo / m, buckets / (hi / m - lo / m)
            idx = ((a - lo) * scale).astype(np.intp)
            np.minimum(idx, buckets - 1, out=idx)  # the maximum belongs to the last bucket
            row[5 + buckets :] = np.bincount(idx, minlength=buckets)
        block = self._histogram_block(tag, buckets)
        block.extend(np.array([step]), wall, row[None])
        self._enqueue(block, 1)

    def _histogram_block(self, tag: str, buckets: int) -> _EventBlock:
        block = self._blocks.get((tag, buckets))
        if block is None:
            finish = None if buckets == 1 else _bucket_limits
            block = _EventBlock(_histogram_tail(tag, buckets), 5 + 2 * buckets, "f8", finish)
            self._blocks[tag, buckets] = block
        return block

    # -- text and hparams (rare: plain protobuf) -------------------------------------------------

    def _add_summary(self, value: summary_pb2.Summary.Value, step: int = 0) -> None:
        self._check_open()
        event = event_pb2.Event(
            wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])
        )
        self._queue.append([None, _record(event.SerializeToString())])

    def add_restart(self, step: int) -> None:
        """Marks a resumed run: TensorBoard drops events of earlier files at `step` and later
        (a SessionLog START purges them), so re-run steps are not shown twice."""
        self._check_open()
        event = event_pb2.Event(
            wall_time=time.time(),
            step=step,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
        )
        self._queue.append([None, _record(event.SerializeToString())])

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        """Markdown `text`, shown in TensorBoard's Text tab (a string tensor + text metadata)."""
        from tensorboard.plugins.text import metadata as text_metadata

        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),  # a scalar, as tf.summary.text
        )
        meta = text_metadata.create_summary_metadata(display_name=tag, description="")
        self._add_summary(summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor), step)

    def add_image(self, tag: str, png: bytes, step: int = 0) -> None:
        """A PNG image, shown in TensorBoard's Images tab (Summary.Image, its size read from
        the PNG's header)."""
        width, height = struct.unpack(">II", png[16:24])  # IHDR, right after the signature
        image = summary_pb2.Summary.Image(
            height=height, width=width, colorspace=4, encoded_image_string=png
        )  # colorspace 4: RGBA, as matplotlib writes them
        self._add_summary(summary_pb2.Summary.Value(tag=tag, image=image), step)

    def _add_hparams_summary(self, tag: str, **plugin_data) -> None:
        from tensorboard.plugins.hparams import plugin_data_pb2

        content = plugin_data_pb2.HParamsPluginData(version=0, **plugin_data)
        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name=_HPARAMS_PLUGIN, content=content.SerializeToString()
            )
        )
        # Like the plugin's own writer: an empty float vector, only the metadata matters.
        null = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=0)]
            ),
        )
        self._add_summary(summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=null))

    def add_hparams(self, hparams: Mapping[str, float | int | str | bool]) -> None:
        """Writes the HParams session-start summary into this same run (unlike torch's
        add_hparams, no sub-run). Once per writer.

        Which hparams and metrics the HParams tab shows as columns is the experiment's to say
        (add_hparams_experiment); without one, TensorBoard takes every scalar tag as a metric.
        """
        from tensorboard.plugins.hparams import plugin_data_pb2

        if self._hparams_started:
            raise RuntimeError("add_hparams was already called for this writer")
        values = {name: _hparam_value(name, v) for name, v in hparams.items()}
        start = plugin_data_pb2.SessionStartInfo(hparams=values, start_time_secs=time.time())
        self._add_hparams_summary(_HPARAMS_SESSION_START_TAG, session_start_info=start)
        self._hparams_started = True

    def add_hparams_experiment(
        self,
        hparams: Mapping[str, float | int | str | bool],
        metrics: Sequence[str],
        differing: Collection[str] = (),
    ) -> None:
        """The HParams experiment: the columns of the HParams tab, the hparams named (and typed)
        as in `hparams` and the scalar tags `metrics`, whose last values fill the table.

        TensorBoard takes the first experiment it finds in a logdir for all of its sessions (a
        sweep's runs), as it stands: the hparams in `differing` are the ones marked as differing
        between them, which the table shows first.
        """
        from tensorboard.plugins.hparams import api_pb2

        types = {
            "bool_value": api_pb2.DATA_TYPE_BOOL,
            "number_value": api_pb2.DATA_TYPE_FLOAT64,
            "string_value": api_pb2.DATA_TYPE_STRING,
        }
        infos = []
        for name, v in hparams.items():
            kind = _hparam_value(name, v).WhichOneof("kind")
            info = api_pb2.HParamInfo(name=name, type=types[kind], differs=name in differing)
            # Numbers and strings get no domain: one run knows only its own value, and the table
            # would offer (and filter by) that value alone.
            if kind == "bool_value":
                info.domain_discrete.extend([False, True])
            infos.append(info)
        experiment = api_pb2.Experiment(
            hparam_infos=infos,
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in metrics],
            time_created_secs=time.time(),
        )
        self._add_hparams_summary(_HPARAMS_EXPERIMENT_TAG, experiment=experiment)

    def continue_hparams_session(self) -> None:
        """Declares that an earlier writer of this run started the HParams session (a resumed
        run), so this one may end it."""
        self._hparams_started = True

    def end_hparams_session(self, status: str = "success") -> None:
        """Session-end summary; `status` is one of success/failure/running/unknown."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        statuses = ("success", "failure", "running", "unknown")
        if status not in statuses:
            raise ValueError(f"status must be one of {statuses}, got {status!r}")
        if not self._hparams_started:
            raise RuntimeError("end_hparams_session without add_hparams")
        end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value("STATUS_" + status.upper()), end_time_secs=time.time()
        )
        self._add_hparams_summary(_HPARAMS_SESSION_END_TAG, session_end_info=end)

    # -- custom scalars (once per run: plain protobuf) -------------------------------------------

    def add_custom_scalars(self, layout: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        """The Custom Scalars tab: {category: {chart title: [tag regexes]}}, in that order, each
        chart one plot of every tag its regexes match. The same event as torch's
        add_custom_scalars with ["Multiline", regexes] charts."""
        from tensorboard.plugins.custom_scalar import layout_pb2, metadata

        categories = [
            layout_pb2.Category(
                title=title,
                chart=[
                    layout_pb2.Chart(
                        title=chart, multiline=layout_pb2.MultilineChartContent(tag=list(tags))
                    )
                    for chart, tags in charts.items()
                ],
            )
            for title, charts in layout.items()
        ]
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[layout_pb2.Layout(category=categories).SerializeToString()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        )
        meta = metadata.create_summary_metadata()
        value = summary_pb2.Summary.Value(
            tag=metadata.CONFIG_SUMMARY_TAG, metadata=meta, tensor=tensor
        )
        self._add_summary(value)

    # -- file ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"EventWriter for {self.path} is closed")

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:  # a full disk: say which file
            raise on_path(err, self.path) from err

    def flush(self) -> None:
        """Encodes everything added so far and writes it with one os.write (no fsync)."""
        if self._fd < 0 or not self._queue:
            return
        queue, self._queue = self._queue, []
        encoded: dict[int, tuple[memoryview, np.ndarray]] = {}
        for block, _ in queue:
            if block is not None and id(block) not in encoded:
                encoded[id(block)] = block.drain()
        used: dict[int, int] = {}
        parts = []
        for block, item in queue:
            if block is None:
                parts.append(item)
                continue
            data, offsets = encoded[id(block)]
            first = used.get(id(block), 0)
            used[id(block)] = first + item
            parts.append(data[offsets[first] : offsets[first + item]])
        self._write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        """Flushes and closes the file; later calls do nothing."""
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1
