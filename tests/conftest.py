"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest

from tests.helpers import train


def pytest_addoption(parser):
    # tests/golden/README.md: re-record only for a change meant to change outputs
    parser.addoption(
        "--golden-record",
        action="store_true",
        help="rewrite tests/golden/ from today's code instead of comparing with it",
    )


@pytest.fixture
def runs(tmp_path):
    """train() with a fresh directory under tmp_path per call."""
    counter = iter(range(1_000_000))

    def _train(*overrides: str):
        return train(tmp_path / f"run{next(counter)}", *overrides)

    return _train
