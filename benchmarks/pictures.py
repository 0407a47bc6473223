"""The README's pictures of optimization, drawn by the runner itself into docs/.

    python benchmarks/pictures.py [--out DIR]

Runs, with the runner's own command line, in a temporary directory:

- `model=linear optimizer.lr=0.02 train.steps=200`: weight and bias of nn.Linear(1, 1) on the
  seed line, its landscape.png -> landscape_2d.png;
- `-m optimizer=sgd,adam,rmsprop,lbfgs experiment=quadratic_bowl`: seed notebook 002's bowl,
  its trajectories.png -> trajectories_bowl.png;
- `-m optimizer.lr=0.01,0.05 train.seed=0,1,2,3` on mini-batches of noisy synthetic data: its
  loss.png, each rate's mean over the seeds with a band of +-1 std -> seeds_loss.png.

Each picture is stored as a PNG of at most 256 colours (Pillow's quantizer, which matplotlib
already depends on), a fraction of the size of the full-colour file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parents[1] / "docs"
QUIET = ("log.tensorboard=false", "log.progress=false")
# mini-batches of noisy synthetic data, both drawn from train.seed: the seeds differ
NOISY = ("model=linear", "data=synthetic", "data.noise=0.5", "train.batch_size=10")
RUNS = {
    "landscape_2d.png": (
        ("model=linear", "optimizer.lr=0.02", "train.steps=200"),
        "run",
        "landscape.png",
    ),
    "trajectories_bowl.png": (
        ("-m", "optimizer=sgd,adam,rmsprop,lbfgs", "experiment=quadratic_bowl"),
        "sweep",
        "trajectories.png",
    ),
    "seeds_loss.png": (
        ("-m", "optimizer.lr=0.01,0.05", "train.seed=0,1,2,3", *NOISY),
        "sweep",
        "loss.png",
    ),
}


def draw(name: str, out: Path, scratch: Path) -> Path:
    """Runs the command behind `name` in `scratch` and stores its picture as out/name."""
    overrides, kind, picture = RUNS[name]
    where = scratch / name.removesuffix(".png")
    key = "hydra.run.dir" if kind == "run" else "hydra.sweep.dir"
    subprocess.run(
        [sys.executable, "-m", "runner", *overrides, *QUIET, f"{key}={where}"],
        check=True,
        capture_output=True,
        cwd=scratch,
    )
    image = Image.open(where / picture).convert("RGB")
    target = out / name
    image.quantize(colors=256).save(target, optimize=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go (docs/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in RUNS:
            target = draw(name, args.out, Path(scratch))
            print(f"wrote {target} ({target.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
