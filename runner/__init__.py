"""runner: a config-driven training experiment runner for PyTorch (and NumPy)."""

__version__ = "0.1.0"
