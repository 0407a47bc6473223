"""What a user sees in TensorBoard, as screenshots of a small run and a small sweep.

    python benchmarks/tensorboard_screenshots.py [--out DIR] [--chromium PATH]

Trains one run (`model=linear data=synthetic data.n_features=3`) and one sweep
(`-m optimizer.lr=0.001,0.01,0.1`), both `loop=numpy train.steps=100`, with the runner's own
command line. Serves each with TensorBoard on 127.0.0.1 at a free port, checks through its HTTP
API that the HParams metrics are the run's results (hparams/final_loss first) and that the
custom-scalars layout opens on loss, then has headless Chromium draw these tabs into DIR
(default: outputs/tensorboard_screenshots):

    run_custom_scalars.png  run_text.png (the config)  run_hparams.png
    sweep_scalars.png  sweep_custom_scalars.png  sweep_hparams.png

Each server is stopped by its process id. Exits 2 when no Chromium is found (`chromium`,
`chromium-browser` or `google-chrome` on PATH, or --chromium), 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome")
COMMON = ("loop=numpy", "train.steps=100")
RUN = ("model=linear", "data=synthetic", "data.n_features=3")
RATES = ("0.001", "0.01", "0.1")
# (file name, tab, window width x height): wide enough for the HParams table's metric columns
TABS = {
    "run": [("custom_scalars", (1400, 900)), ("text", (1400, 1100)), ("hparams", (1920, 700))],
    "sweep": [("scalars", (1400, 900)), ("custom_scalars", (1400, 900)), ("hparams", (1920, 700))],
}
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def find_chromium(given: str | None) -> str | None:
    if given:
        return shutil.which(given) or (given if os.path.exists(given) else None)
    return next((path for name in CHROMIUMS if (path := shutil.which(name))), None)


def runner(*args: str, cwd: Path) -> None:
    """`python -m runner ARGS...`, as a user runs it; raises if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"runner {' '.join(args)} failed:\n{done.stderr}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_for(check: Callable[[], object], timeout: float, what: str):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except OSError as err:  # the server is still starting
            last = err
        time.sleep(0.2)
    raise RuntimeError(f"no {what} after {timeout} s ({last!r})")


@contextlib.contextmanager
def tensorboard(logdir: Path, log: Path) -> Iterator[str]:
    """A TensorBoard server over `logdir` on 127.0.0.1 at a free port: yields its address and
    stops it (by its process id) on the way out."""
    port = free_port()
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def check(address: str, runs: Sequence[str]) -> None:
    """What the screenshots are to show, asked of the server: every run, the HParams metrics
    (the run's results, final_loss first) for every session, and loss first in the layout."""
    data = f"{address}/data"
    wait_for(lambda: set(fetch(f"{data}/runs")) == set(runs), 60, f"runs {runs}")
    experiment = fetch(f"{data}/plugin/hparams/experiment", {"experimentName": ""})
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    if metrics[:2] != ["hparams/final_loss", "hparams/best_loss"]:
        raise RuntimeError(f"HParams metrics are {metrics}")
    request = {"experimentName": "", "allowedStatuses": STATUSES, "sliceSize": 100}
    groups = fetch(f"{data}/plugin/hparams/session_groups", request)["sessionGroups"]
    for group in groups:
        shown = [m["name"]["tag"] for m in group["metricValues"]]
        if "hparams/final_loss" not in shown:
            raise RuntimeError(f"{group['name']}: no final_loss in the HParams table ({shown})")
    if len(groups) != len(runs):
        raise RuntimeError(f"{len(groups)} HParams sessions for {len(runs)} runs")
    layout = fetch(f"{data}/plugin/custom_scalars/layout")
    first = [chart["title"] for chart in layout["category"][0]["chart"]]
    if first[0] != "loss":
        raise RuntimeError(f"the custom-scalars layout opens on {first}")


def screenshot(chromium: str, url: str, path: Path, size: tuple[int, int]) -> None:
    """Headless Chromium draws `url` into the PNG `path`, once the page has had 15 s of
    (virtual) time to load its data."""
    args = [chromium, "--headless=new", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=15000",
            f"--screenshot={path}", url]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    path.unlink(missing_ok=True)
    try:
        subprocess.run(args, capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"Chromium drew nothing of {url} in {err.timeout} s") from err
    if not path.exists():
        raise RuntimeError(f"Chromium wrote no {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/tensorboard_screenshots"))
    parser.add_argument("--chromium", help="the browser to draw with (default: found on PATH)")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        wanted = args.chromium or ", ".join(CHROMIUMS)
        print(f"tensorboard_screenshots: no Chromium ({wanted})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sweep_runs = [f"{i}_optimizer.lr={lr}/tensorboard" for i, lr in enumerate(RATES)]
        try:
            runner(*RUN, *COMMON, f"hydra.run.dir={root / 'run'}", cwd=root)
            runner("-m", f"optimizer.lr={','.join(RATES)}", *COMMON,
                   f"hydra.sweep.dir={root / 'sweep'}", cwd=root)  # fmt: skip
            for name, logdir, runs in (("run", root / "run", ["tensorboard"]),
                                       ("sweep", root / "sweep", sweep_runs)):  # fmt: skip
                with tensorboard(logdir, root / f"{name}_tensorboard.log") as address:
                    check(address, runs)
                    for tab, size in TABS[name]:
                        path = args.out / f"{name}_{tab}.png"
                        screenshot(chromium, f"{address}/#{tab}", path, size)
                        print(f"wrote {path}")
        except RuntimeError as err:
            print(f"tensorboard_screenshots: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
