"""Gradient clipping (train.clip_grad_norm, train.clip_grad_value): the manual version, written
once for NumPy and torch, against torch.nn.utils.clip_grad_norm_ / clip_grad_value_ as the
oracle; and the `grad_norm_before_clip` column a run writes, read back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.clipping import ClipNorm, ClipValue
from runner.data import synthetic
from tests.helpers import train
from tests.test_outputs import events

SHAPES = {"weight": (1, 3), "bias": (1,)}  # the linear model's, as the loops hold them
RTOL = {"float32": 1e-6, "float64": 1e-14}  # torch's CPU norm fuses multiply-adds: an ulp or two


def torch_clipped(grads: dict[str, np.ndarray], clip) -> tuple[dict[str, np.ndarray], float]:
    """torch's own function on parameters holding `grads`: (clipped grads, total norm before)."""
    params = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype) for g in grads.values()]
    for p, g in zip(params, grads.values(), strict=True):
        p.grad = torch.from_numpy(g.copy())
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(clip, ClipNorm):
        assert torch.nn.utils.clip_grad_norm_(params, clip.max_norm) == norm
    else:
        torch.nn.utils.clip_grad_value_(params, clip.clip_value)
    return {n: p.grad.numpy() for n, p in zip(grads, params, strict=True)}, float(norm)


def manual(grads: dict[str, np.ndarray], clip, xp, jobs_axis=False):
    """The manual clip with `xp`, its results as NumPy arrays (each checked to keep the dtype)."""
    values = grads if xp is np else {n: torch.from_numpy(g) for n, g in grads.items()}
    clipped, norm = clip.clip(values, xp, jobs_axis)
    out = {n: np.asarray(g if xp is np else g.numpy()) for n, g in clipped.items()}
    norm = np.asarray(norm if xp is np else norm.numpy())
    dtype = next(iter(grads.values())).dtype
    assert norm.dtype == dtype and all(g.dtype == dtype for g in out.values())
    return out, norm


def random_grads(rng, dtype: str, scale: float, shapes=SHAPES) -> dict[str, np.ndarray]:
    return {n: (scale * rng.standard_normal(s)).astype(dtype) for n, s in shapes.items()}


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_grad_norm_equals_torchs(xp, dtype):
    rng = np.random.default_rng(0)
    clipped_some = unchanged_some = 0
    for _ in range(100):
        grads = random_grads(rng, dtype, 10.0 ** rng.uniform(-3, 3))
        clip = ClipNorm(float(10.0 ** rng.uniform(-2, 2)))
        want, want_norm = torch_clipped(grads, clip)
        got, norm = manual(grads, clip, xp)
        np.testing.assert_allclose(norm, want_norm, rtol=RTOL[dtype])
        for name in grads:
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL[dtype])
        if want_norm < clip.max_norm:  # below the threshold: the gradients as they were
            assert all(np.array_equal(got[n], grads[n]) for n in grads)
            unchanged_some += 1
        else:
            clipped_some += 1
    assert clipped_some > 25 and unchanged_some > 25


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_grad_value_equals_torchs(xp, dtype):
    rng = np.random.default_rng(1)
    for _ in range(50):
        grads = random_grads(rng, dtype, 1.0)
        clip = ClipValue(float(rng.uniform(0.1, 2.0)))
        want, want_norm = torch_clipped(grads, clip)
        got, norm = manual(grads, clip, xp)
        np.testing.assert_allclose(norm, want_norm, rtol=RTOL[dtype])
        for name in grads:
            np.testing.assert_array_equal(got[name], want[name])  # a clamp is exact


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
@pytest.mark.parametrize("clip", [ClipNorm(1.0), ClipValue(1.0)], ids=["norm", "value"])
def test_a_zero_gradient_stays_zero(xp, clip):
    grads = {n: np.zeros(s, dtype="float32") for n, s in SHAPES.items()}
    want, _ = torch_clipped(grads, clip)
    got, norm = manual(grads, clip, xp)
    assert norm == 0.0
    for name in grads:
        assert np.array_equal(got[name], want[name]) and not got[name].any()


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_a_scalar_parameter_and_k_jobs_each_on_their_own_norm(xp):
    # The scalar model's gradient has shape []; K jobs stack theirs on a leading axis, and each
    # job is clipped by its own norm as its run alone would be.
    rng = np.random.default_rng(2)
    clip = ClipNorm(0.5)
    scalar = {"weight": np.asarray(rng.standard_normal(()) * 3.0)}
    got, norm = manual(scalar, clip, xp)
    want, want_norm = torch_clipped(scalar, clip)
    assert norm == want_norm and got["weight"] == want["weight"]
    jobs = [random_grads(rng, "float64", s) for s in (0.01, 1.0, 100.0)]
    stacked = {n: np.stack([g[n] for g in jobs]) for n in SHAPES}
    got, norms = manual(stacked, clip, xp, jobs_axis=True)
    for j, grads in enumerate(jobs):
        want, want_norm = torch_clipped(grads, clip)
        assert norms[j] == pytest.approx(want_norm, rel=1e-14)
        for name in grads:
            np.testing.assert_allclose(got[name][j], want[name], rtol=1e-14)


def test_grad_norm_before_clip_is_the_unclipped_norm(tmp_path):
    # Computed apart: the full-batch gradient of nn.Linear under MSE at the parameters each
    # step started from (the row before's), by autograd.
    _, metrics = train(tmp_path, "model=linear", "model.init=0.3", "data=synthetic",
                       "data.n_features=2", "train.dtype=float64", "train.steps=6",
                       "train.clip_grad_norm=0.05")  # fmt: skip
    assert list(metrics.columns[-2:]) == ["grad_norm", "grad_norm_before_clip"]
    data = synthetic(n_samples=64, n_features=2, weight=2.0, bias=0.5, noise=0.1, seed=0)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    w = torch.full((2,), 0.3, dtype=torch.float64, requires_grad=True)
    b = torch.full((), 0.3, dtype=torch.float64, requires_grad=True)
    for _, row in metrics.iterrows():
        gw, gb = torch.autograd.grad(torch.mean((x @ w + b - y) ** 2), (w, b))
        unclipped = float(torch.cat([gw, gb[None]]).norm())
        assert row["grad_norm_before_clip"] == pytest.approx(unclipped, rel=1e-12)
        assert unclipped > 0.05 and row["grad_norm"] == pytest.approx(0.05, rel=1e-6)
        with torch.no_grad():
            w.copy_(torch.tensor([row["param/weight/0"], row["param/weight/1"]]))
            b.fill_(row["param/bias"])
    # TensorBoard has the same key, from the same Layout
    tag = events(tmp_path).Scalars("grad_norm_before_clip")
    assert [s.step for s in tag] == metrics["step"].tolist()
    np.testing.assert_allclose([s.value for s in tag], metrics["grad_norm_before_clip"], rtol=1e-6)
