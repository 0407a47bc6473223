"""Resolving `device.name` once, before anything is built."""

from __future__ import annotations

from runner.errors import ConfigError


def resolve_device(name: str, loop: str) -> str:
    """ "cpu" | "cuda" | "mps" for device `name`; `auto` picks cuda, else mps, else cpu.

    The numpy loop runs on the CPU only and is resolved without importing torch.
    """
    if loop == "numpy":
        if name not in ("cpu", "auto"):
            raise ConfigError("device", name, "cpu or auto with loop=numpy (NumPy runs on the CPU)")
        return "cpu"
    if name == "cpu":
        return name  # no need to load torch just to find the CPU
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        return next(d for d, ok in available.items() if ok)
    if not available[name]:
        present = ", ".join(d for d, ok in available.items() if ok)
        raise ConfigError("device", name, f"a device present on this machine: {present}, or auto")
    return name
