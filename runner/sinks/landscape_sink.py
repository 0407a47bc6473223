"""landscape.png: the loss around the run's path, drawn once the run is over (runner.landscape).

While the run goes, the sink only keeps the logged parameters (at most two elements: every
logged point; more: the last finite one). On close it evaluates the loss in one batched call,
writes landscape.png and, when the run logs to TensorBoard, the same picture as an image there.
A picture that cannot be drawn is one warning line: it never fails the run it describes.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runner.landscape import MAX_GRID_ELEMENTS, LossFunction, landscape_figure, png_bytes, surface
from runner.metrics import Layout

FILE = "landscape.png"
TAG = "landscape"


class LandscapeSink:
    def __init__(
        self,
        out_dir: Path,
        layout: Layout,
        loss: LossFunction,
        init: np.ndarray,
        image_writer: Any = None,
        resume_at: int | None = None,
    ) -> None:
        """`init`: the initial parameters, flat; `image_writer`: a runner.tb_writer.EventWriter
        that gets the picture too (closed after this sink); `resume_at`: the step a resumed run
        continues from, whose earlier path metrics.csv holds."""
        self.path = Path(out_dir) / FILE
        self.layout, self.loss, self.image_writer = layout, loss, image_writer
        self.n = layout.n_values
        self.points: list[np.ndarray] = [np.asarray(init, np.float64).reshape(1, -1)]
        self.last_step = resume_at or 0
        if resume_at and self.n <= MAX_GRID_ELEMENTS:
            earlier = _logged_params(Path(out_dir) / "metrics.csv", layout, resume_at)
            if earlier is not None:
                self.points.append(earlier)

    def write(self, steps: np.ndarray, table: np.ndarray, rows: np.ndarray) -> None:
        params = rows[:, 2 : 2 + self.n]  # after each step's update
        self.last_step = int(steps[-1])
        if self.n <= MAX_GRID_ELEMENTS:
            self.points.append(params.astype(np.float64))
            return
        finite = np.flatnonzero(np.isfinite(params).all(axis=1))
        if finite.size:  # a larger model needs only the first and the last finite point
            self.points[1:] = [params[finite[-1] :][:1].astype(np.float64)]

    def flush(self) -> None:
        pass

    def close(self, summary: dict | None = None) -> None:
        if len(self.points) < 2:  # nothing logged: no path
            return
        try:
            status = (summary or {}).get("status", "")
            s = surface(self.loss, np.concatenate(self.points), diverged=status == "diverged")
            title = f"loss landscape: {self.path.parent.name}"
            if status and status != "completed":
                title += f" ({status})"
            png = png_bytes(landscape_figure(s, title))
            tmp = self.path.with_name(f".{FILE}.tmp")
            tmp.write_bytes(png)
            tmp.replace(self.path)
            if self.image_writer is not None:
                self.image_writer.add_image(TAG, png, step=self.last_step)
        except Exception as err:  # a diagnostic picture never fails the run
            message = " ".join(str(err).split()) or type(err).__name__
            print(f"runner: warning: {self.path}: not drawn ({message})", file=sys.stderr)


def _logged_params(path: Path, layout: Layout, upto: int) -> np.ndarray | None:
    """The parameter columns of metrics.csv's rows up to step `upto` (a resumed run's earlier
    path), or None when the file is not there or lacks them."""
    names = [c for c in layout.columns if c.startswith("param/")]
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            at = [header.index(c) for c in names]
            step = header.index("step")
            rows = [[float(r[i]) for i in at] for r in reader if int(r[step]) <= upto]
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return np.array(rows, np.float64).reshape(-1, len(names)) if rows else None
